"""``RethinkDBStore``: the ``IStore`` for several daemons sharing one RethinkDB cluster.

It talks to the server through the official ``rethinkdb`` driver on its
Twisted loop (an ``RethinkDB()`` instance owned by the store), with one
connection that is opened on demand and replaced after a loss.

Schema (``initialize``), in the database named by the URL
``rethinkdb://[user:password@]HOST:PORT/DBNAME``:

- ``accounts``, ``registrations``, ``subscriptions``, ``triggered_webhooks``
  and ``deliveries``, keyed by the record ``id``.  Each row also carries
  ``seq``: its creation number, taken from an atomic server-side counter in
  the same query as the insert, so lists are in exact insertion order even
  when epochs tie or clocks differ.  Subscriptions and firings also carry
  ``owner_id``, the owner of their registration when they were made.
  ``event_data`` and each delivery attempt are stored as JSON text, so they
  read back exactly as the other stores give them (RethinkDB would turn
  ``1.0`` into ``1``, lose integers above 2**53 and reject ``$reql_type$``).
- ``usernames``: one row per username (its primary key) naming the account
  that holds it.  Inserting that row with ``conflict="error"`` is what makes
  usernames unique, atomically, across daemons; the account row follows.  A
  claim whose account never appeared (its writer died between the two
  writes) is taken over once it is older than ``claim_grace`` seconds.
- ``sequences``: per table, ``next`` (the last ``seq`` handed out) and
  ``generation`` (bumped before and after every delete).

Every lookup reads through an index: the primary key, ``username`` and
``is_admin`` on accounts, and compound ``[filter, seq]`` indexes for every
filtered list, count, cascade and fan-out (see ``INDEXES``).

Pagination: a page is ``between`` on the list's ordering index, in index
order, ``skip``/``limit`` from the nearest position this daemon already knows
(``PageCursors``, shared with the SQLite store: position -> last ``seq``
before it).  Walking pages with ``next_start`` therefore reads only
``limit + 1`` rows per page, however deep (a few milliseconds at position
100,000); a jump to a position nothing is known about skips through the
index on the server, which costs time in proportion to ``start`` (see
``bench/rethinkdb_pagination.py``).  Positions only move when rows are
deleted; the page query reads the table's ``generation`` before its rows,
so a delete by any daemon makes every daemon drop that table's remembered
positions and re-read from the start of the index.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import unquote, urlsplit

from rethinkdb import RethinkDB
from rethinkdb.errors import (
    ReqlAvailabilityError,
    ReqlDriverError,
    ReqlError,
    ReqlInternalError,
    ReqlResourceLimitError,
)
from twisted.internet.defer import Deferred, DeferredLock, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from pywebhooks.errors import DatabaseMissing, DuplicateUsername, StoreError, StoreUnavailable
from pywebhooks.records import WRITE_RESULT_KEYS, Page, Record, WriteResult
from pywebhooks.store.interface import IStore
from pywebhooks.store.memory import (
    JSON_FIELDS,
    RECORD_FIELDS,
    check_changes,
    check_page,
    check_record,
    delivery_state,
)
from pywebhooks.store.sqlite import TABLES, PageCursors

DEFAULT_PORT = 28015
DEFAULT_DATABASE = "pywebhooks"
USERNAMES = "usernames"
SEQUENCES = "sequences"
#: Every table this store owns; ``initialize(drop=True)`` drops only these.
ALL_TABLES = (*TABLES.values(), USERNAMES, SEQUENCES)
#: Rows per round trip when deleting all non-admin accounts.
DELETE_CHUNK = 1000

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass(frozen=True)
class RethinkDBAddress:
    """Where the store connects: parsed from a ``rethinkdb://`` URL."""

    host: str
    port: int
    database: str
    user: str = "admin"
    password: str = ""

    def __str__(self) -> str:
        """``host:port/database``, safe to log (no credentials)."""
        return "%s:%d/%s" % (self.host, self.port, self.database)


def parse_url(url: str) -> RethinkDBAddress:
    """The address in ``rethinkdb://[user:password@]HOST[:PORT][/DBNAME]``."""
    parts = urlsplit(url)
    if parts.scheme != "rethinkdb" or not parts.hostname:
        raise ValueError("not a rethinkdb://HOST:PORT/DBNAME URL")
    database = parts.path.strip("/") or DEFAULT_DATABASE
    if not _NAME.match(database):
        raise ValueError("a RethinkDB database name has only letters, digits, _ and -")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError("the port of a rethinkdb:// URL must be a number") from None
    return RethinkDBAddress(
        host=parts.hostname,
        port=port,
        database=database,
        user=unquote(parts.username) if parts.username else "admin",
        password=unquote(parts.password) if parts.password else "",
    )


# -- schema -----------------------------------------------------------------------

#: ``{table: {index name: (function of the row, multi)}}``, built with the store's
#: ``r``.  ``seq`` orders every list; ``*_seq`` indexes are ``[filter, seq]``.
IndexFunction = Callable[[Any, Any], Any]


def _compound(field: str) -> IndexFunction:
    return lambda r, row: [row[field], row["seq"]]


def _visible(r: Any, row: Any) -> Any:
    # A subscription is visible to its subscriber and to the registration's
    # owner: one entry for each (one when they are the same account).
    own = [row["account_id"], row["seq"]]
    return r.branch(
        row["owner_id"].eq(None).or_(row["owner_id"].eq(row["account_id"])),
        [own],
        [own, [row["owner_id"], row["seq"]]],
    )


INDEXES: dict[str, dict[str, tuple[IndexFunction, bool]]] = {
    "accounts": {
        "seq": (lambda r, row: row["seq"], False),
        "username": (lambda r, row: row["username"], False),
        "is_admin": (lambda r, row: row["is_admin"], False),
    },
    "registrations": {
        "seq": (lambda r, row: row["seq"], False),
        "account_seq": (_compound("account_id"), False),
    },
    "subscriptions": {
        "seq": (lambda r, row: row["seq"], False),
        "account_seq": (_compound("account_id"), False),
        "registration_seq": (_compound("registration_id"), False),
        "visible_seq": (_visible, True),
    },
    "triggered_webhooks": {
        "seq": (lambda r, row: row["seq"], False),
        "owner_seq": (_compound("owner_id"), False),
    },
    "deliveries": {
        "firing_seq": (_compound("firing_id"), False),
    },
    USERNAMES: {},
    SEQUENCES: {},
}


def encode(field: str, value: Any) -> Any:
    """A record value as it is stored."""
    if field == "attempts":
        return [json.dumps(entry) for entry in value]
    if field in JSON_FIELDS:
        return json.dumps(value)
    return value


def decode(field: str, value: Any) -> Any:
    """A stored value as the record carries it."""
    if field == "attempts":
        return [json.loads(entry) for entry in value]
    if field in JSON_FIELDS:
        return json.loads(value)
    if field == "is_admin":
        return bool(value)
    if field == "epoch":
        return float(value)
    if field == "failed_count":
        return int(value)
    return value


def to_record(kind: str, row: Mapping[str, Any]) -> Record:
    """The record of a stored row, without the store's own columns."""
    return {field: decode(field, row[field]) for field in RECORD_FIELDS[kind]}


def to_write_result(result: Mapping[str, Any]) -> WriteResult:
    """A ``WriteResult`` from a RethinkDB write result (its six counts)."""
    return WriteResult(**{key: int(result.get(key, 0)) for key in WRITE_RESULT_KEYS})


def write_error(result: Mapping[str, Any]) -> str:
    """What went wrong in a write result, without the documents its
    ``first_error`` prints."""
    first = str(result.get("first_error", ""))
    if first.startswith("Duplicate primary key"):
        return "the id already exists"
    return first.split(":")[0][:200] or "write failed"


@dataclasses.dataclass(frozen=True)
class Listing:
    """One list query: a range ``[*prefix, seq]`` of ``index`` on ``table``,
    optionally narrowed by ``match`` (field equality)."""

    table: str
    index: str
    prefix: tuple[Any, ...] = ()
    match: tuple[tuple[str, Any], ...] = ()

    def key(self, seq: Any) -> Any:
        """The index value of ``seq`` within this list."""
        return [*self.prefix, seq] if self.prefix else seq

    def cache_key(self) -> tuple[Any, ...]:
        """The ``PageCursors`` query key (table first)."""
        return (self.table, self.index, self.prefix, self.match)


# -- the connection -----------------------------------------------------------------


def safe_message(error: Exception) -> str:
    """The first line of a driver error, without the query it prints after it."""
    message = str(getattr(error, "message", None) or error)
    first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return first[:200]


def _fail_queries_on_loss(connection: Any) -> None:
    """Make the driver fail in-flight queries when its socket closes.

    The Twisted driver only marks the connection closed on a loss: queries
    waiting for an answer would wait forever.  Closing the driver's instance
    errs them back with ``ReqlDriverError`` (hence ``StoreUnavailable``).
    """
    instance = connection._instance
    protocol = getattr(instance, "_connection", None)
    if protocol is None:
        return
    lost = protocol.connectionLost

    def connection_lost(reason: Any) -> None:
        lost(reason)
        if not instance._closing:
            instance.close(exception=reason.value)

    protocol.connectionLost = connection_lost


class Connector:
    """The store's single connection: opened on first use, replaced after a loss.

    ``run`` answers the query's result (a cursor is read to the end) or raises
    ``StoreUnavailable`` when the server cannot be reached or cannot serve
    the query right now; the next ``run`` connects again.
    """

    log = Logger()

    def __init__(
        self, r: RethinkDB, address: RethinkDBAddress,
        clock: IReactorTime | None, timeout: float,
    ) -> None:
        self._r = r
        self.address = address
        self._clock = clock
        self._timeout = timeout
        self._connection: Any = None
        self._lock = DeferredLock()

    async def connection(self) -> Any:
        """The open driver connection, connecting first if there is none."""
        if self._connection is not None and self._connection.is_open():
            return self._connection
        async with self._lock:
            if self._connection is not None and self._connection.is_open():
                return self._connection
            self._connection = None
            try:
                connection = await self._r.connect(
                    host=self.address.host, port=self.address.port,
                    db=self.address.database, user=self.address.user,
                    password=self.address.password, timeout=max(1, int(self._timeout)),
                )
            except ReqlError as error:
                message = safe_message(error)
                self.log.warn("rethinkdb {address} unreachable: {error}",
                              address=str(self.address), error=message)
                raise StoreUnavailable("RethinkDB is unreachable: %s" % (message,)) from None
            _fail_queries_on_loss(connection)
            self._connection = connection
            self.log.info("connected to rethinkdb {address}", address=str(self.address))
            return connection

    async def run(self, query: Any, **options: Any) -> Any:
        """Run ``query``; its result, with sequences read into a list.

        Errors carry only the first line of the server's message: the rest
        prints the query, whose documents may hold keys.
        """
        connection = await self.connection()
        work = Deferred.fromCoroutine(self._execute(connection, query, options))
        if self._clock is not None:
            work.addTimeout(self._timeout, self._clock)
        try:
            return await work
        except TimeoutError:
            self.log.warn("rethinkdb {address}: no answer within {timeout}s",
                          address=str(self.address), timeout=self._timeout)
            await self.disconnect()
            raise StoreUnavailable("RethinkDB did not answer in time") from None
        except (ReqlDriverError, ReqlAvailabilityError, ReqlResourceLimitError,
                ReqlInternalError) as error:
            if not connection.is_open():
                self._connection = None
            message = safe_message(error)
            self.log.warn("rethinkdb {address} unavailable: {error}",
                          address=str(self.address), error=message)
            raise StoreUnavailable("RethinkDB is unavailable: %s" % (message,)) from None
        except ReqlError as error:
            # A query the server refused (or our own ``r.error``): not an outage.
            raise StoreError("RethinkDB refused a query: %s" % (safe_message(error),)) from None

    @staticmethod
    async def _execute(connection: Any, query: Any, options: Mapping[str, Any]) -> Any:
        result = await query.run(connection, **options)
        if not hasattr(result, "fetch_next"):
            return result
        rows = []
        while await result.fetch_next():
            rows.append(await result.next())
        return rows

    async def disconnect(self) -> None:
        """Close the connection, if any (queries still waiting fail)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close(noreply_wait=False)


# -- the store ------------------------------------------------------------------------


@implementer(IStore)
class RethinkDBStore:
    """Records in RethinkDB tables, shared by every daemon of a cluster.

    ``clock`` bounds every query by ``timeout`` seconds (a hung server then
    answers ``StoreUnavailable`` instead of never); without it only a lost
    connection ends a waiting query.  ``initialize`` may be called on a store
    that is not open and leaves it open.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        clock: IReactorTime | None = None,
        timeout: float = 30.0,
        claim_grace: float = 60.0,
    ) -> None:
        self.address = parse_url(url)
        self.r = RethinkDB()
        self.r.set_loop_type("twisted")
        self._connector = Connector(self.r, self.address, clock, timeout)
        self._claim_grace = claim_grace
        self._cursors = PageCursors()
        self._generations: dict[str, int] = {}
        self._open = False

    # -- plumbing ----------------------------------------------------------

    def _table(self, name: str) -> Any:
        return self.r.db(self.address.database).table(name)

    async def _run(self, query: Any, **options: Any) -> Any:
        if not self._open:
            raise StoreUnavailable("The store is not open")
        return await self._connector.run(query, **options)

    def _bump(self, tables: Sequence[str]) -> Any:
        """Add 1 to each table's generation: page positions there may move."""
        for table in tables:
            self._cursors.forget(table)
        return self.r.expr([
            self._table(SEQUENCES).get(table).update(
                lambda counter: {"generation": counter["generation"].add(1)})
            for table in tables
        ])

    def _deleting(self, tables: Sequence[str], query: Any) -> Any:
        """``query`` (a delete) wrapped in generation bumps before and after it."""
        return self._bump(tables).do(lambda _: query).do(
            lambda result: self._bump(tables).do(lambda _: result))

    def _allocate(self, table: str, count: int) -> Any:
        """The last of ``count`` new ``seq`` numbers of ``table`` (atomic)."""
        return self._table(SEQUENCES).get(table).update(
            lambda counter: {"next": counter["next"].add(count)}, return_changes="always",
        )["changes"][0]["new_val"]["next"]

    def _insert_numbered(self, table: str, rows: list[Record], extra: Any = None,
                         **options: Any) -> Any:
        """Insert ``rows`` with fresh ``seq`` numbers (and ``extra`` merged in), as ReQL:
        the counter is bumped first, the insert uses the numbers it handed out."""
        r = self.r
        documents = r.expr(rows)
        return self._allocate(table, len(rows)).do(lambda last: self._table(table).insert(
            r.range(len(rows)).map(lambda i: documents.nth(i).merge(
                {"seq": last.sub(len(rows) - 1).add(i)}, extra if extra is not None else {})),
            conflict="error", **options))

    def _owner(self, registration_id: str) -> Any:
        """The owner of a registration, or null, as ReQL."""
        return {"owner_id": self._table("registrations").get(registration_id)["account_id"]
                .default(None)}

    @staticmethod
    def _stored(kind: str, record: Record) -> Record:
        check_record(kind, record)
        return {field: encode(field, value) for field, value in record.items()}

    async def _insert(self, kind: str, record: Record, extra: Any = None) -> None:
        table = TABLES[kind]
        row = self._stored(kind, record)
        result = await self._run(self._insert_numbered(table, [row], extra))
        if result["errors"]:
            raise StoreError("%s %s: %s" % (kind, record["id"], write_error(result)))

    async def _get(self, kind: str, record_id: str) -> Record | None:
        row = await self._run(self._table(TABLES[kind]).get(record_id))
        return None if row is None else to_record(kind, row)

    async def _update(self, kind: str, record_id: str, changes: Mapping[str, Any]) -> WriteResult:
        check_changes(kind, changes)
        stored = {field: encode(field, value) for field, value in changes.items()}
        return to_write_result(
            await self._run(self._table(TABLES[kind]).get(record_id).update(stored)))

    async def _delete_by_id(self, table: str, record_id: str, cascade: Any = None,
                            also: Sequence[str] = ()) -> WriteResult:
        gone = self._table(table).get(record_id).delete()
        query = gone if cascade is None else cascade.do(lambda _: gone)
        return to_write_result(await self._run(self._deleting((table, *also), query)))

    async def _delete_all(self, table: str) -> WriteResult:
        return WriteResult(deleted=to_write_result(
            await self._run(self._deleting((table,), self._table(table).delete()))).deleted)

    def _range(self, table: str, index: str, value: Any) -> Any:
        """The rows of ``table`` whose ``[value, seq]`` index entry exists."""
        return self._table(table).between(
            [value, 0], [value, self.r.maxval], index=index, left_bound="open")

    async def _count(self, table: str, index: str, value: Any) -> int:
        return int(await self._run(self._range(table, index, value).count()))

    async def _page(self, kind: str, listing: Listing, start: int, limit: int) -> Page:
        check_page(start, limit)
        query = listing.cache_key()
        position, after = self._cursors.nearest(query, start)
        generation, rows = await self._read_page(listing, after, start - position, limit)
        if generation != self._generations.get(listing.table):
            # Some daemon deleted rows since the positions were remembered.
            self._cursors.forget(listing.table)
            self._generations[listing.table] = generation
            if position:
                position, after = 0, 0
                generation, rows = await self._read_page(listing, 0, start, limit)
        shown = rows[:limit]
        if shown:
            if position < start:
                self._cursors.remember(query, start, shown[0]["seq"] - 1)
            self._cursors.remember(query, start + len(shown), shown[-1]["seq"])
        return Page(rows=[to_record(kind, row) for row in shown], more=len(rows) > limit)

    async def _read_page(self, listing: Listing, after: int, skip: int,
                         limit: int) -> tuple[int, list[Record]]:
        r = self.r
        rows = self._table(listing.table).between(
            listing.key(after), listing.key(r.maxval), index=listing.index, left_bound="open",
        ).order_by(index=listing.index)
        if listing.match:
            rows = rows.filter(dict(listing.match))
        rows = rows.skip(skip).limit(limit + 1).coerce_to("array")
        # The generation is read before the rows (``do`` evaluates its argument
        # first), so rows read after a delete never pass for an older generation.
        generation = self._table(SEQUENCES).get(listing.table)["generation"].default(0)
        answer = await self._run(r.do(generation, lambda g: [g, rows]))
        return int(answer[0]), answer[1]

    # -- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        """Connect; ``DatabaseMissing`` (and closed again) when the database, one of
        the tables or one of the indexes is absent."""
        self._open = True
        try:
            missing = await self._run(self._missing_schema())
        except StoreUnavailable:
            await self.close()
            raise
        if missing["database"] or missing["tables"] or missing["indexes"]:
            await self.close()
            if missing["database"]:
                problem = "does not exist"
            elif missing["tables"]:
                problem = "has no %s table" % (", ".join(sorted(missing["tables"])),)
            else:
                problem = "lacks the index %s" % (", ".join(sorted(missing["indexes"])),)
            raise DatabaseMissing("The RethinkDB database %s %s: run --initdb"
                                  % (self.address, problem))

    def _missing_schema(self) -> Any:
        """``{"database": bool, "tables": [...], "indexes": ["table.index", ...]}``:
        what is missing, as ReQL (indexes are looked at once every table exists)."""
        r = self.r
        database = r.db(self.address.database)
        wanted = r.expr([[table, list(indexes)] for table, indexes in INDEXES.items()])
        nothing: list[str] = []
        return r.branch(
            r.db_list().contains(self.address.database).not_(),
            {"database": True, "tables": nothing, "indexes": nothing},
            r.expr(list(ALL_TABLES)).set_difference(database.table_list()).do(
                lambda tables: r.branch(
                    tables.is_empty().not_(),
                    {"database": False, "tables": tables, "indexes": nothing},
                    {"database": False, "tables": nothing, "indexes": wanted.concat_map(
                        lambda table: table[1].set_difference(
                            database.table(table[0]).index_list(),
                        ).map(lambda index: table[0].add(".", index)))},
                )),
        )

    async def close(self) -> None:
        """Close the connection."""
        self._open = False
        await self._connector.disconnect()

    async def initialize(self, drop: bool) -> None:
        """Create the database, this store's tables and indexes, and wait until they
        are ready; drop this store's tables (only them) first if ``drop``."""
        self._open = True
        r = self.r
        database = self.address.database
        await self._run(r.branch(
            r.db_list().contains(database), None, r.db_create(database)))
        existing = set(await self._run(r.db(database).table_list()))
        if drop:
            for table in ALL_TABLES:
                if table in existing:
                    await self._run(r.db(database).table_drop(table))
            existing.clear()
        for table in ALL_TABLES:
            if table not in existing:
                await self._run(r.db(database).table_create(table))
        for table, indexes in INDEXES.items():
            present = set(await self._run(self._table(table).index_list()))
            for name, (function, multi) in indexes.items():
                if name not in present:
                    await self._run(self._table(table).index_create(
                        name, self._index_body(function), multi=multi))
            await self._run(self._table(table).index_wait())
            await self._run(self._table(table).wait())
        await self._run(self._table(SEQUENCES).insert(
            [{"id": table, "next": 0, "generation": 0} for table in TABLES.values()],
            conflict=lambda key, old, new: old))
        self._cursors.clear()
        self._generations.clear()
        self.log.info("store schema ready in rethinkdb {address} (dropped first: {drop})",
                      address=str(self.address), drop=drop)

    def _index_body(self, function: IndexFunction) -> Callable[[Any], Any]:
        # The driver counts a lambda's parameters: it must take the row alone.
        return lambda row: function(self.r, row)

    # -- usernames ---------------------------------------------------------

    async def _claim(self, username: str, account_id: str) -> None:
        """Hold ``username`` for ``account_id``; ``DuplicateUsername`` if it is taken."""
        r = self.r
        usernames, accounts = self._table(USERNAMES), self._table("accounts")
        claim = {"id": username, "account_id": account_id, "claimed": r.now()}
        for _ in range(3):
            result = await self._run(usernames.insert(claim, conflict="error"))
            if result["inserted"]:
                return
            # Taken, unless the holder's account never appeared (or no longer
            # has this name) and the claim is older than the grace period.
            holder = await self._run(usernames.get(username).do(lambda held: r.branch(
                held.eq(None), None,
                accounts.get(held["account_id"])["username"].default(None).eq(username),
                "taken",
                r.now().sub(held["claimed"]).lt(self._claim_grace), "taken",
                held["account_id"],
            )))
            if holder == "taken":
                break
            if holder is None:
                continue  # released meanwhile: try again
            taken = await self._run(usernames.get(username).replace(lambda held: r.branch(
                held.eq(None).or_(held["account_id"].eq(holder)), claim, held)))
            if taken["replaced"] or taken["inserted"]:
                self.log.info("took over a stale username claim of account {stale}",
                              stale=holder)
                return
        raise DuplicateUsername("Username already exists")

    def _release(self, username: Any, account_id: Any) -> Any:
        """Drop ``username``'s claim if ``account_id`` holds it, as ReQL."""
        r = self.r
        return self._table(USERNAMES).get(username).replace(lambda held: r.branch(
            held.ne(None).and_(held["account_id"].eq(account_id)), None, held))

    async def _release_now(self, username: str, account_id: str) -> None:
        try:
            await self._run(self._release(username, account_id))
        except StoreUnavailable:
            self.log.warn("username claim of account {account_id} left behind; it is "
                          "taken over after the grace period", account_id=account_id)

    # -- accounts --------------------------------------------------------

    async def insert_account(self, account: Record) -> None:
        """Insert a new account; ``DuplicateUsername`` if the name is taken (atomic)."""
        check_record("account", account)
        await self._claim(account["username"], account["id"])
        try:
            await self._insert("account", account)
        except BaseException:
            await self._release_now(account["username"], account["id"])
            raise

    async def get_account(self, account_id: str) -> Record | None:
        """The account with this id, or None."""
        return await self._get("account", account_id)

    async def get_account_by_username(self, username: str) -> Record | None:
        """The account with exactly this username, or None."""
        rows = await self._run(self._table("accounts").get_all(
            username, index="username").limit(1).coerce_to("array"))
        return to_record("account", rows[0]) if rows else None

    async def update_account(self, account_id: str, changes: Mapping[str, Any]) -> WriteResult:
        """Set the fields in ``changes``; ``DuplicateUsername`` if a new name is taken."""
        check_changes("account", changes)
        if "username" not in changes:
            return await self._update("account", account_id, changes)
        current = await self.get_account(account_id)
        if current is None:
            return WriteResult(skipped=1)
        new, old = changes["username"], current["username"]
        if new == old:
            return await self._update("account", account_id, changes)
        await self._claim(new, account_id)
        try:
            result = await self._update("account", account_id, changes)
        except BaseException:
            await self._release_now(new, account_id)
            raise
        await self._release_now(new if result.skipped else old, account_id)
        return result

    async def delete_account(self, account_id: str) -> WriteResult:
        """Delete the account, its subscriptions, and its registrations with every
        subscription to them; the result counts the account row only."""
        r = self.r
        subscriptions = self._table("subscriptions")
        owned = self._range("registrations", "account_seq", account_id)
        cascade = r.expr([
            self._range("subscriptions", "account_seq", account_id).delete(),
            owned.for_each(lambda registration: subscriptions.between(
                [registration["id"], 0], [registration["id"], r.maxval],
                index="registration_seq", left_bound="open").delete()),
        ]).do(lambda _: owned.delete())
        gone = self._table("accounts").get(account_id).delete(return_changes=True)
        query = cascade.do(lambda _: gone).do(lambda result: r.branch(
            result["deleted"].eq(1),
            self._release(result["changes"][0]["old_val"]["username"], account_id)
            .do(lambda _: result),
            result,
        ))
        return to_write_result(await self._run(self._deleting(
            ("accounts", "registrations", "subscriptions"), query)))

    async def delete_non_admin_accounts(self) -> WriteResult:
        """Delete every account whose ``is_admin`` is false (no cascade), in chunks."""
        r = self.r
        accounts = self._table("accounts")
        total = 0
        while True:
            chunk = accounts.get_all(False, index="is_admin").limit(DELETE_CHUNK).delete(
                return_changes=True)
            result = await self._run(self._deleting(("accounts",), chunk).do(
                lambda result: {
                    "deleted": result["deleted"],
                    "gone": result["changes"].default([]).map(
                        lambda change: [change["old_val"]["username"], change["old_val"]["id"]]),
                }))
            if not result["deleted"]:
                return WriteResult(deleted=total)
            total += result["deleted"]
            await self._run(r.expr(result["gone"]).for_each(
                lambda gone: self._release(gone[0], gone[1])))

    async def list_accounts(self, start: int, limit: int) -> Page:
        """A ``Page`` of all accounts."""
        return await self._page("account", Listing("accounts", "seq"), start, limit)

    async def count_accounts(self) -> int:
        """How many accounts exist."""
        return int(await self._run(self._table("accounts").count()))

    # -- registrations ---------------------------------------------------

    async def insert_registration(self, registration: Record) -> None:
        """Insert a registration."""
        await self._insert("registration", registration)

    async def get_registration(self, registration_id: str) -> Record | None:
        """The registration, or None."""
        return await self._get("registration", registration_id)

    async def update_registration(
        self, registration_id: str, changes: Mapping[str, Any]
    ) -> WriteResult:
        """Set the fields in ``changes``."""
        return await self._update("registration", registration_id, changes)

    async def delete_registration(self, registration_id: str) -> WriteResult:
        """Delete the registration and every subscription to it; the result counts
        the registration row only."""
        cascade = self._range("subscriptions", "registration_seq", registration_id).delete()
        return await self._delete_by_id(
            "registrations", registration_id, cascade, also=("subscriptions",))

    async def delete_all_registrations(self) -> WriteResult:
        """Delete every registration, leaving subscriptions."""
        return await self._delete_all("registrations")

    async def list_registrations(
        self, start: int, limit: int, account_id: str | None = None
    ) -> Page:
        """A ``Page`` of registrations, only ``account_id``'s if given."""
        if account_id is None:
            listing = Listing("registrations", "seq")
        else:
            listing = Listing("registrations", "account_seq", (account_id,))
        return await self._page("registration", listing, start, limit)

    async def count_registrations(self, account_id: str) -> int:
        """How many registrations ``account_id`` owns."""
        return await self._count("registrations", "account_seq", account_id)

    # -- subscriptions ---------------------------------------------------

    async def insert_subscription(self, subscription: Record) -> None:
        """Insert a subscription (duplicates are allowed)."""
        await self._insert("subscription", subscription,
                           self._owner(subscription["registration_id"]))

    async def get_subscription(self, subscription_id: str) -> Record | None:
        """The subscription, or None."""
        return await self._get("subscription", subscription_id)

    async def delete_subscription(self, subscription_id: str) -> WriteResult:
        """Delete one subscription."""
        return await self._delete_by_id("subscriptions", subscription_id)

    async def delete_all_subscriptions(self) -> WriteResult:
        """Delete every subscription."""
        return await self._delete_all("subscriptions")

    async def list_subscriptions(
        self,
        start: int,
        limit: int,
        account_id: str | None = None,
        visible_to: str | None = None,
    ) -> Page:
        """A ``Page`` of subscriptions, filtered by subscriber and/or visibility."""
        if account_id is not None:
            # Subscriber X's subscriptions visible to V (X != V): those to V's
            # registrations, filtered within X's own index range.
            match = () if visible_to in (None, account_id) else (("owner_id", visible_to),)
            listing = Listing("subscriptions", "account_seq", (account_id,), match)
        elif visible_to is not None:
            listing = Listing("subscriptions", "visible_seq", (visible_to,))
        else:
            listing = Listing("subscriptions", "seq")
        return await self._page("subscription", listing, start, limit)

    async def count_subscriptions(self, account_id: str) -> int:
        """How many subscriptions ``account_id`` holds."""
        return await self._count("subscriptions", "account_seq", account_id)

    async def subscribers(self, registration_id: str) -> list[Record]:
        """The live subscribers of one registration, in subscription order."""
        r = self.r
        accounts = self._table("accounts")
        return await self._run(
            self._range("subscriptions", "registration_seq", registration_id)
            .order_by(index="registration_seq")
            .concat_map(lambda subscription: accounts.get(subscription["account_id"]).do(
                lambda account: r.branch(account.eq(None), [], [{
                    "subscription_id": subscription["id"],
                    "account_id": account["id"],
                    "endpoint": account["endpoint"],
                    "secret_key": account["secret_key"],
                    "failed_count": account["failed_count"],
                }])))
        )

    # -- firings and deliveries -------------------------------------------

    async def insert_firing(self, firing: Record, deliveries: list[Record]) -> None:
        """Record a firing and its deliveries together: nothing is left behind when
        any of them cannot be stored."""
        r = self.r
        firing_row = self._stored("firing", firing)
        rows = [self._stored("delivery", delivery) for delivery in deliveries]
        ids = [row["id"] for row in rows]
        if len(set(ids)) != len(ids):
            raise StoreError("duplicate delivery id in one firing")
        firings, stored = self._table("triggered_webhooks"), self._table("deliveries")
        free = firings.get(firing_row["id"]).eq(None)
        if ids:
            free = free.and_(stored.get_all(*ids).count().eq(0))
        inserts = {"firing": self._insert_numbered(
            "triggered_webhooks", [firing_row], self._owner(firing_row["registration_id"]))}
        if rows:
            inserts["deliveries"] = self._insert_numbered("deliveries", rows, return_changes=True)
        options = {"array_limit": len(rows) + 1} if len(rows) >= 100_000 else {}
        results = await self._run(
            r.branch(free, inserts, r.error("a firing or delivery id already exists")),
            **options)
        if any(result["errors"] for result in results.values()):
            await self._undo_firing(firing_row["id"], results)
            raise StoreError("firing %s: %s" % (firing_row["id"], "; ".join(
                write_error(result) for result in results.values() if result["errors"])))

    async def _undo_firing(self, firing_id: str, results: Mapping[str, Any]) -> None:
        """Delete what a failed ``insert_firing`` did store."""
        r = self.r
        inserted = [change["new_val"]["id"]
                    for change in results.get("deliveries", {}).get("changes", [])
                    if change.get("new_val")]
        undo = [self._table("triggered_webhooks").get(firing_id).delete()]
        if inserted:
            undo.append(self._table("deliveries").get_all(*inserted).delete())
        await self._run(self._deleting(("triggered_webhooks", "deliveries"), r.expr(undo)))

    async def list_firings(self, start: int, limit: int, owner_id: str | None = None) -> Page:
        """A ``Page`` of firings, only those of ``owner_id``'s registrations if given."""
        if owner_id is None:
            listing = Listing("triggered_webhooks", "seq")
        else:
            listing = Listing("triggered_webhooks", "owner_seq", (owner_id,))
        return await self._page("firing", listing, start, limit)

    async def get_deliveries(self, firing_id: str) -> list[Record]:
        """The delivery records of one firing, in creation order."""
        rows = await self._run(
            self._range("deliveries", "firing_seq", firing_id).order_by(index="firing_seq"))
        return [to_record("delivery", row) for row in rows]

    async def record_attempt(
        self, firing_id: str, delivery_id: str, account_id: str, attempt: Mapping[str, Any], final: bool
    ) -> int | None:
        """Append ``attempt`` to the delivery and count it on the subscriber; both are
        single-document server-side updates, so concurrent attempts never lose one."""
        r = self.r
        entry = json.dumps(attempt)
        state = delivery_state("pending", attempt, final)

        def log(delivery: Any) -> Any:
            changes = {"attempts": delivery["attempts"].append(entry)}
            if state != "pending":
                changes["state"] = state
            return r.branch(delivery["firing_id"] == firing_id, changes, {})

        def count(account: Any) -> Any:
            return {"failed_count": 0 if attempt["ok"] else account["failed_count"].add(1)}

        logged = self._table("deliveries").get(delivery_id).update(log)
        counted = self._table("accounts").get(account_id).update(count, return_changes="always")
        result = await self._run(r.expr([logged, counted]).nth(1))
        if result["skipped"] or not result["changes"]:
            return None
        return int(result["changes"][0]["new_val"]["failed_count"])
