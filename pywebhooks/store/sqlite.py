"""``SQLiteStore``: the embedded default ``IStore``, one file on local disk.

Every write runs on the ``SQLiteDatabase`` thread, so the reactor never
waits for a commit, and reads run at once on its read-only connection
(``SQLiteDatabase.read``).  Every method is one transaction
(``record_attempt`` shares it with the other attempts settled at the same
moment, see ``attempt_log``).  Writes and reads of many rows are
set-based: the rows travel as one JSON array and one statement takes them
apart (``json_each``), because every statement step on the database thread
has to take the GIL back from the reactor.  Each table
has an ``INTEGER PRIMARY KEY seq`` (the rowid: creation order, always
growing) and a unique ``id``.  Subscriptions and firings also keep
``owner_id``, the owner of their registration when they were made, which
the visibility filters use.

Lists stay fast on deep pages: a ``PageCursors`` cache remembers, per list
query, the ``seq`` just before a position, so the page a client asks for
next (``start + limit``) is a range read ``seq > ? ORDER BY seq LIMIT ?``
instead of an ``OFFSET`` walk over everything before it.
"""

from __future__ import annotations

import collections
import functools
import json
import sqlite3
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from pywebhooks.batching import GroupCommit
from pywebhooks.errors import DatabaseMissing, DuplicateUsername, StoreError, StoreUnavailable
from pywebhooks.records import Page, Record, WriteResult
from pywebhooks.sqlitedb import SQLiteDatabase, split_columns
from pywebhooks.store.attempt_log import AttemptWrite, logging_attempts
from pywebhooks.store.interface import IStore
from pywebhooks.store.memory import (
    BOOL_FIELDS,
    JSON_FIELDS,
    RECORD_FIELDS,
    check_changes,
    check_page,
    check_record,
    deleted,
)

T = TypeVar("T")

#: The table of each kind of record.
TABLES = {
    "account": "accounts",
    "registration": "registrations",
    "subscription": "subscriptions",
    "firing": "triggered_webhooks",
    "delivery": "deliveries",
}

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS accounts (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        username TEXT NOT NULL UNIQUE,
        endpoint TEXT,
        api_key TEXT,
        secret_key TEXT,
        is_admin INTEGER NOT NULL,
        failed_count INTEGER NOT NULL,
        epoch REAL
    )""",
    """CREATE TABLE IF NOT EXISTS registrations (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL,
        event TEXT,
        description TEXT,
        event_data TEXT NOT NULL,
        epoch REAL
    )""",
    "CREATE INDEX IF NOT EXISTS registrations_account ON registrations (account_id, seq)",
    """CREATE TABLE IF NOT EXISTS subscriptions (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL,
        registration_id TEXT NOT NULL,
        owner_id TEXT,
        epoch REAL
    )""",
    "CREATE INDEX IF NOT EXISTS subscriptions_account ON subscriptions (account_id, seq)",
    "CREATE INDEX IF NOT EXISTS subscriptions_registration"
    " ON subscriptions (registration_id, seq)",
    "CREATE INDEX IF NOT EXISTS subscriptions_owner ON subscriptions (owner_id, seq)",
    """CREATE TABLE IF NOT EXISTS triggered_webhooks (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        registration_id TEXT NOT NULL,
        owner_id TEXT,
        epoch REAL
    )""",
    "CREATE INDEX IF NOT EXISTS triggered_webhooks_owner ON triggered_webhooks (owner_id, seq)",
    """CREATE TABLE IF NOT EXISTS deliveries (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        firing_id TEXT NOT NULL,
        registration_id TEXT,
        subscription_id TEXT,
        account_id TEXT,
        event TEXT,
        endpoint TEXT,
        state TEXT NOT NULL,
        attempts TEXT NOT NULL,
        epoch REAL
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_firing ON deliveries (firing_id, seq)",
    # A delivery is found within its firing: a firing's deliveries sit
    # together in this index, so a fan-out's inserts touch a few pages of
    # it.  (An index of the random ids alone took one page per delivery
    # anywhere in it: ``bench/RESULTS.md``, eleventh pass.  Databases made
    # before keep that index too.)
    "CREATE UNIQUE INDEX IF NOT EXISTS deliveries_lookup ON deliveries (firing_id, id)",
)

#: Where a subscription's or a firing's ``owner_id`` comes from.
OWNER_OF_REGISTRATION = "(SELECT account_id FROM registrations WHERE id = :registration_id)"


def encode(field: str, value: Any) -> Any:
    """A record value as it is bound into SQL."""
    if field in JSON_FIELDS:
        return json.dumps(value)
    return value


def decode(field: str, value: Any) -> Any:
    """A column value as the record carries it."""
    if field in JSON_FIELDS:
        return json.loads(value)
    if field in BOOL_FIELDS:
        return bool(value)
    return value


def columns(kind: str) -> str:
    """The select list of a kind of record."""
    return ", ".join(RECORD_FIELDS[kind])


def to_record(kind: str, row: Sequence[Any]) -> Record:
    """A record from a row selected with ``columns(kind)``."""
    return {field: decode(field, value) for field, value in zip(RECORD_FIELDS[kind], row)}


def insert_statement(kind: str, extra: Mapping[str, str] | None = None) -> str:
    """``INSERT`` of a record bound by name; ``extra`` maps more columns to SQL."""
    names = list(RECORD_FIELDS[kind])
    values = [":" + name for name in names]
    for column, expression in (extra or {}).items():
        names.append(column)
        values.append(expression)
    return "INSERT INTO %s (%s) VALUES (%s)" % (TABLES[kind], ", ".join(names), ", ".join(values))


def bindings(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The named parameters of ``insert_statement(kind)`` for ``record``."""
    check_record(kind, record)
    return {field: encode(field, value) for field, value in record.items()}


@functools.lru_cache(maxsize=16)
def _insert_rows_statement(shared: tuple[str, ...], varying: tuple[str, ...]) -> str:
    """An INSERT of many deliveries from ``split_columns``: the ``shared``
    fields bound once each, then the ``varying`` ones from a JSON array of
    rows (bound last), in the array's order."""
    return "INSERT INTO deliveries (%s) SELECT %s FROM json_each(?) AS row ORDER BY row.key" % (
        ", ".join(shared + varying),
        ", ".join(["?"] * len(shared) + ["json_extract(row.value, '$[%d]')" % (index,)
                                         for index in range(len(varying))]))


class PageCursors:
    """Per list query, the ``seq`` of the last row before known positions.

    A query is ``(table, filter...)``.  Positions only shift when rows are
    deleted (new rows always get a higher ``seq`` and land at the end), so
    the owner calls ``forget(table)`` after deleting from a table.  Bounded
    LRU on both levels.  Not thread-safe: ``SQLiteStore`` uses it only on the
    reactor thread, before and after the reads and deletes; ``generation``
    tells a page read whether a ``forget`` happened meanwhile.
    """

    def __init__(self, queries_per_table: int = 256, positions_per_query: int = 64) -> None:
        self._queries_per_table = queries_per_table
        self._positions_per_query = positions_per_query
        self._tables: dict[str, collections.OrderedDict[tuple[Any, ...], dict[int, int]]] = {}
        #: Increases at every ``forget`` and ``clear``.
        self.generation = 0

    def nearest(self, query: tuple[Any, ...], start: int) -> tuple[int, int]:
        """``(position, seq)``: the known position closest at or before ``start``
        (``(0, 0)`` when none: every ``seq`` is above 0)."""
        queries = self._tables.get(query[0])
        if queries is None or not queries.get(query):
            return (0, 0)
        queries.move_to_end(query)
        positions = queries[query]
        best = max((p for p in positions if p <= start), default=None)
        if best is None:
            return (0, 0)
        seq = positions.pop(best)
        positions[best] = seq  # most recently used last
        return (best, seq)

    def remember(self, query: tuple[Any, ...], position: int, seq: int) -> None:
        """Rows of ``query`` from ``position`` on have ``seq`` above ``seq``."""
        if position == 0:
            return
        queries = self._tables.setdefault(query[0], collections.OrderedDict())
        positions = queries.get(query)
        if positions is None:
            positions = queries[query] = {}
            if len(queries) > self._queries_per_table:
                queries.popitem(last=False)
        queries.move_to_end(query)
        positions.pop(position, None)
        positions[position] = seq
        if len(positions) > self._positions_per_query:
            del positions[next(iter(positions))]

    def forget(self, table: str) -> None:
        """Rows were deleted from ``table``: every position there may have moved."""
        self._tables.pop(table, None)
        self.generation += 1

    def clear(self) -> None:
        """Forget everything (the schema was recreated)."""
        self._tables.clear()
        self.generation += 1


#: A page that has to skip more rows than this to reach its start (no
#: position cached near it) is read on the database thread: that walk is
#: SQLite's own work, which there runs beside the reactor instead of
#: stopping it, however deep a client pages.
LONG_SKIP = 1000


@implementer(IStore)
class SQLiteStore:
    """Records in one SQLite file, through a shared ``SQLiteDatabase``.

    ``initialize`` may be called on a store that is not open: it opens it and
    leaves it open (close it with ``close``).  The cursor cache assumes this
    store is the only writer of its tables, which holds for the one daemon
    that owns the file.
    """

    log = Logger()

    def __init__(self, database: SQLiteDatabase) -> None:
        self._database = database
        self._cursors = PageCursors()
        self._open = False
        self._attempts: GroupCommit[AttemptWrite, int | None] = GroupCommit(self._write_attempts)

    # -- plumbing ----------------------------------------------------------

    async def _run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        if not self._open:
            raise StoreUnavailable("The store is not open")
        return await self._database.run(function)

    async def _read(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read at once on this thread (``SQLiteDatabase.read``)."""
        if not self._open:
            raise StoreUnavailable("The store is not open")
        return await self._database.read(function)

    @contextmanager
    def _moving_rows(self, *tables: str) -> Iterator[None]:
        """Around a transaction that deletes (or moves) rows of ``tables``:
        forget the page positions cached for them once it has committed.

        Forgetting after the commit, on the reactor thread where pages are
        read, means no position read from before the commit outlives it."""
        try:
            yield
        finally:
            for table in tables:
                self._cursors.forget(table)

    async def _deleting(self, function: Callable[[sqlite3.Connection], T], *tables: str) -> T:
        """Run a transaction that deletes rows of ``tables`` (``_moving_rows``)."""
        with self._moving_rows(*tables):
            return await self._run(function)

    async def _open_database(self) -> None:
        if not self._open:
            await self._database.open()
            self._open = True

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        """Open the database; ``DatabaseMissing`` (and closed again) without the schema."""
        await self._open_database()
        missing = await self._run(self._missing_tables)
        if missing:
            await self.close()
            raise DatabaseMissing(
                "The database %s has no %s table: run --initdb"
                % (self._database.path, ", ".join(missing))
            )

    @staticmethod
    def _missing_tables(connection: sqlite3.Connection) -> list[str]:
        present = {
            name for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
        return [table for table in TABLES.values() if table not in present]

    async def close(self) -> None:
        """Close the database (the thread stops when its last user closes)."""
        if self._open:
            self._open = False
            await self._database.close()

    async def initialize(self, drop: bool) -> None:
        """Create this store's tables and indexes; drop them (only them) first if ``drop``."""
        await self._open_database()

        def create(connection: sqlite3.Connection) -> None:
            if drop:
                for table in TABLES.values():
                    connection.execute("DROP TABLE IF EXISTS %s" % (table,))
            for statement in SCHEMA:
                connection.execute(statement)

        try:
            await self._run(create)
        finally:
            self._cursors.clear()
        self.log.info("store schema ready in {path} (dropped first: {drop})",
                      path=self._database.path, drop=drop)

    # -- shared helpers --------------------------------------------------

    async def _insert(
        self, kind: str, record: Record, extra: Mapping[str, str] | None = None
    ) -> None:
        statement = insert_statement(kind, extra)
        values = bindings(kind, record)

        def insert(connection: sqlite3.Connection) -> None:
            connection.execute(statement, values)

        await self.transaction(insert, kind)

    @staticmethod
    def _integrity_error(kind: str, error: sqlite3.IntegrityError) -> StoreError:
        if "accounts.username" in str(error):
            return DuplicateUsername("Username already exists")
        return StoreError("%s: %s" % (kind, error))

    async def _get(self, kind: str, where: str, *params: Any) -> Record | None:
        statement = "SELECT %s FROM %s WHERE %s" % (columns(kind), TABLES[kind], where)

        def get(connection: sqlite3.Connection) -> Record | None:
            row = connection.execute(statement, params).fetchone()
            return None if row is None else to_record(kind, row)

        return await self._read(get)

    async def _update(self, kind: str, record_id: str, changes: Mapping[str, Any]) -> WriteResult:
        check_changes(kind, changes)
        fields = list(changes)
        table = TABLES[kind]
        select = "SELECT %s FROM %s WHERE id = ?" % (", ".join(fields) or "id", table)
        update = "UPDATE %s SET %s WHERE id = ?" % (
            table, ", ".join("%s = ?" % (field,) for field in fields))
        values = [encode(field, changes[field]) for field in fields]
        # What the row would read back as, to tell "replaced" from "unchanged".
        wanted = [decode(field, value) for field, value in zip(fields, values)]

        def apply(connection: sqlite3.Connection) -> WriteResult:
            row = connection.execute(select, (record_id,)).fetchone()
            if row is None:
                return WriteResult(skipped=1)
            current = [decode(field, value) for field, value in zip(fields, row)]
            if current == wanted:
                return WriteResult(unchanged=1)
            connection.execute(update, (*values, record_id))
            return WriteResult(replaced=1)

        with self._moving_rows(*([table] if "account_id" in fields else [])):
            return await self.transaction(apply, kind)

    @staticmethod
    def _delete(connection: sqlite3.Connection, table: str, where: str, *params: Any) -> int:
        """Delete rows (on the database thread, inside ``_deleting``); how many."""
        return int(connection.execute("DELETE FROM %s WHERE %s" % (table, where), params).rowcount)

    async def _delete_result(self, table: str, where: str, *params: Any) -> int:
        return await self._deleting(
            lambda connection: self._delete(connection, table, where, *params), table)

    async def _page(self, kind: str, start: int, limit: int,
                    where: str = "", params: Sequence[Any] = ()) -> Page:
        check_page(start, limit)
        table = TABLES[kind]
        query = (table, where, *params)
        condition = (where + " AND " if where else "") + "seq > ?"
        find_first = "SELECT seq FROM %s WHERE %s ORDER BY seq LIMIT 1 OFFSET ?" % (
            table, condition)
        read = "SELECT seq, %s FROM %s WHERE %s ORDER BY seq LIMIT ?" % (
            columns(kind), table, condition)

        cursors = self._cursors
        generation = cursors.generation
        position, after = cursors.nearest(query, start)

        def page(connection: sqlite3.Connection) -> tuple[int | None, list[Any]]:
            """``(seq before the page or None if past the end, its rows + 1)``."""
            seq = after
            if position < start:
                first = connection.execute(
                    find_first, (*params, after, start - position)).fetchone()
                if first is None:
                    return (None, [])
                seq = first[0] - 1
            return (seq, connection.execute(read, (*params, seq, limit + 1)).fetchall())

        reading = self._read if start - position <= LONG_SKIP else self._run
        before, rows = await reading(page)
        shown = rows[:limit]
        if before is not None and cursors.generation == generation:
            cursors.remember(query, start, before)
            if shown:
                cursors.remember(query, start + len(shown), shown[-1][0])
        return Page(rows=[to_record(kind, row[1:]) for row in shown], more=len(rows) > limit)

    async def _count(self, table: str, where: str, *params: Any) -> int:
        statement = "SELECT count(*) FROM %s WHERE %s" % (table, where)
        return await self._read(lambda connection: connection.execute(
            statement, params).fetchone()[0])

    # -- accounts --------------------------------------------------------

    async def insert_account(self, account: Record) -> None:
        """Insert a new account; ``DuplicateUsername`` if the name is taken."""
        await self._insert("account", account)

    async def get_account(self, account_id: str) -> Record | None:
        """The account with this id, or None."""
        return await self._get("account", "id = ?", account_id)

    async def get_account_by_username(self, username: str) -> Record | None:
        """The account with exactly this username, or None."""
        return await self._get("account", "username = ?", username)

    async def update_account(self, account_id: str, changes: Mapping[str, Any]) -> WriteResult:
        """Set the fields in ``changes``; ``DuplicateUsername`` if a new name is taken."""
        return await self._update("account", account_id, changes)

    async def delete_account(self, account_id: str) -> WriteResult:
        """Delete the account, its subscriptions, its registrations and every
        subscription to them, in one transaction."""

        def delete(connection: sqlite3.Connection) -> WriteResult:
            self._delete(
                connection, "subscriptions",
                "account_id = ? OR registration_id IN"
                " (SELECT id FROM registrations WHERE account_id = ?)",
                account_id, account_id)
            self._delete(connection, "registrations", "account_id = ?", account_id)
            return deleted(self._delete(connection, "accounts", "id = ?", account_id))

        return await self._deleting(delete, "subscriptions", "registrations", "accounts")

    async def delete_non_admin_accounts(self) -> WriteResult:
        """Delete every non-admin account, with no cascade."""
        return WriteResult(deleted=await self._delete_result("accounts", "is_admin = 0"))

    async def list_accounts(self, start: int, limit: int) -> Page:
        """A ``Page`` of all accounts."""
        return await self._page("account", start, limit)

    async def count_accounts(self) -> int:
        """How many accounts exist."""
        return await self._count("accounts", "1")

    # -- registrations ---------------------------------------------------

    async def insert_registration(self, registration: Record) -> None:
        """Insert a registration."""
        await self._insert("registration", registration)

    async def get_registration(self, registration_id: str) -> Record | None:
        """The registration, or None."""
        return await self._get("registration", "id = ?", registration_id)

    async def update_registration(
        self, registration_id: str, changes: Mapping[str, Any]
    ) -> WriteResult:
        """Set the fields in ``changes``."""
        return await self._update("registration", registration_id, changes)

    async def delete_registration(self, registration_id: str) -> WriteResult:
        """Delete the registration and every subscription to it, in one transaction."""

        def delete(connection: sqlite3.Connection) -> WriteResult:
            self._delete(connection, "subscriptions", "registration_id = ?", registration_id)
            return deleted(self._delete(connection, "registrations", "id = ?", registration_id))

        return await self._deleting(delete, "subscriptions", "registrations")

    async def delete_all_registrations(self) -> WriteResult:
        """Delete every registration, leaving subscriptions."""
        return WriteResult(deleted=await self._delete_result("registrations", "1"))

    async def list_registrations(
        self, start: int, limit: int, account_id: str | None = None
    ) -> Page:
        """A ``Page`` of registrations, only ``account_id``'s if given."""
        if account_id is None:
            return await self._page("registration", start, limit)
        return await self._page("registration", start, limit, "account_id = ?", (account_id,))

    async def count_registrations(self, account_id: str) -> int:
        """How many registrations ``account_id`` owns."""
        return await self._count("registrations", "account_id = ?", account_id)

    # -- subscriptions ---------------------------------------------------

    async def insert_subscription(self, subscription: Record) -> None:
        """Insert a subscription (duplicates are allowed)."""
        await self._insert("subscription", subscription, {"owner_id": OWNER_OF_REGISTRATION})

    async def get_subscription(self, subscription_id: str) -> Record | None:
        """The subscription, or None."""
        return await self._get("subscription", "id = ?", subscription_id)

    async def delete_subscription(self, subscription_id: str) -> WriteResult:
        """Delete one subscription."""
        return deleted(await self._delete_result("subscriptions", "id = ?", subscription_id))

    async def delete_all_subscriptions(self) -> WriteResult:
        """Delete every subscription."""
        return WriteResult(deleted=await self._delete_result("subscriptions", "1"))

    async def list_subscriptions(
        self,
        start: int,
        limit: int,
        account_id: str | None = None,
        visible_to: str | None = None,
    ) -> Page:
        """A ``Page`` of subscriptions, filtered by subscriber and/or visibility."""
        conditions: list[str] = []
        params: list[Any] = []
        if account_id is not None:
            conditions.append("account_id = ?")
            params.append(account_id)
        if visible_to is not None:
            conditions.append("(account_id = ? OR owner_id = ?)")
            params.extend((visible_to, visible_to))
        return await self._page("subscription", start, limit, " AND ".join(conditions), params)

    async def count_subscriptions(self, account_id: str) -> int:
        """How many subscriptions ``account_id`` holds."""
        return await self._count("subscriptions", "account_id = ?", account_id)

    async def subscribers(self, registration_id: str) -> list[Record]:
        """The live subscribers of one registration, in subscription order."""
        return await self._read(self.reading_subscribers(registration_id))

    def reading_subscribers(self, registration_id: str) -> Callable[[sqlite3.Connection], list[Record]]:
        """The statement of ``subscribers``, for a transaction of the caller's:
        one row however many subscribers (a JSON array, in subscription order)."""
        statement = (
            "SELECT json_group_array(json_array(s.seq, s.id, a.id, a.endpoint, a.secret_key,"
            " a.failed_count))"
            " FROM subscriptions AS s JOIN accounts AS a ON a.id = s.account_id"
            " WHERE s.registration_id = ?"
        )
        keys = ("subscription_id", "account_id", "endpoint", "secret_key", "failed_count")

        def fan_out(connection: sqlite3.Connection) -> list[Record]:
            (found,) = connection.execute(statement, (registration_id,)).fetchone()
            rows = sorted(json.loads(found), key=lambda row: row[0])
            return [dict(zip(keys, row[1:])) for row in rows]

        return fan_out

    # -- firings and deliveries -------------------------------------------

    async def insert_firing(self, firing: Record, deliveries: list[Record]) -> None:
        """Record a firing and its deliveries in one transaction."""
        await self.transaction(self.inserting_firing(firing, deliveries), "firing")

    def inserting_firing(self, firing: Record,
                         deliveries: list[Record]) -> Callable[[sqlite3.Connection], None]:
        """The statements of ``insert_firing``, for a transaction of the
        caller's: the deliveries go in with one statement, the fields they
        all share bound once and the others as one JSON array of rows."""
        firing_values = bindings("firing", firing)
        for delivery in deliveries:
            check_record("delivery", delivery)
        shared, varying, rows = split_columns(deliveries, RECORD_FIELDS["delivery"])
        insert_firing = insert_statement("firing", {"owner_id": OWNER_OF_REGISTRATION})
        insert_deliveries = _insert_rows_statement(tuple(shared), tuple(varying))
        arguments = [encode(field, value) for field, value in shared.items()]
        if any(field in JSON_FIELDS for field in varying):
            rows = [[encode(field, value) for field, value in zip(varying, row)] for row in rows]
        arguments.append(json.dumps(rows))

        def insert(connection: sqlite3.Connection) -> None:
            connection.execute(insert_firing, firing_values)
            if deliveries:
                connection.execute(insert_deliveries, arguments)

        return insert

    async def transaction(self, function: Callable[[sqlite3.Connection], T], kind: str) -> T:
        """Run ``function`` in one transaction: statements of this store (its
        ``reading_*`` and ``inserting_*`` builders, ``attempt_log``) and of
        others sharing its database, such as ``SQLiteLedger.adding``.  A
        constraint violation is the ``StoreError`` of a ``kind`` record, as
        for this store's own writes."""
        try:
            return await self._run(function)
        except sqlite3.IntegrityError as error:
            raise self._integrity_error(kind, error) from error

    @property
    def database(self) -> SQLiteDatabase:
        """The database this store lives in."""
        return self._database

    async def list_firings(self, start: int, limit: int, owner_id: str | None = None) -> Page:
        """A ``Page`` of firings, only those of ``owner_id``'s registrations if given."""
        if owner_id is None:
            return await self._page("firing", start, limit)
        return await self._page("firing", start, limit, "owner_id = ?", (owner_id,))

    async def get_deliveries(self, firing_id: str) -> list[Record]:
        """The deliveries of one firing, in creation order."""
        statement = "SELECT %s FROM deliveries WHERE firing_id = ? ORDER BY seq" % (
            columns("delivery"),)

        def read(connection: sqlite3.Connection) -> list[Record]:
            return [to_record("delivery", row)
                    for row in connection.execute(statement, (firing_id,))]

        return await self._read(read)

    def record_attempt(
        self, firing_id: str, delivery_id: str, account_id: str, attempt: Mapping[str, Any], final: bool
    ) -> Deferred[int | None]:
        """Log ``attempt`` on the delivery and count it on the subscriber, in one
        transaction shared with the attempts settled meanwhile (group commit,
        ``attempt_log``); the subscriber's new ``failed_count``."""
        return self._attempts.submit(AttemptWrite(firing_id, delivery_id, account_id, attempt, final))

    async def _write_attempts(self, writes: list[AttemptWrite]) -> list[int | None]:
        return await self.transaction(logging_attempts(writes), "delivery")
