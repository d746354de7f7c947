"""``SQLiteLedger``: pending deliveries in the embedded database (the default).

One table, ``pending_deliveries``: the entry as JSON plus its ``due`` time,
whether it is ``leased``, and ``available_at`` (the due time, or the lease
expiry while leased), indexed, so that a claim and ``next_due`` read only
the head of one index however many entries wait.  An embedded file serves a
single process, so ``open()`` drops every lease a killed run left behind and
those entries are due again at once; a partial index of the leased rows
alone lets it find them without reading the whole backlog.

The hot-path writes (``finish`` and ``reschedule``, one per attempt) are
group-committed: calls made while a transaction is running are queued and
written together in the next one (``updating``; with the store's attempt
records when both share the database, ``delivery.recording``).  Every
write, whatever its number of entries, is a fixed handful of statements
that take the entries as one JSON array (``json_each``): each statement
step on the database thread has to take the GIL back from the busy
reactor, so row-by-row writes spent their time waiting for it
(``bench/RESULTS.md``, ninth pass).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Callable, Iterable, Sequence

from twisted.internet.defer import Deferred
from zope.interface import implementer

from pywebhooks.batching import GroupCommit
from pywebhooks.ledger.interface import ILedger, PendingDelivery
from pywebhooks.sqlitedb import SQLiteDatabase

#: A queued ledger write: the entry's id, and its rescheduled entry (None: finish it).
LedgerUpdate = tuple[str, PendingDelivery | None]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS pending_deliveries (
        id TEXT PRIMARY KEY,
        due REAL NOT NULL,
        available_at REAL NOT NULL,
        leased INTEGER NOT NULL DEFAULT 0,
        payload TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS pending_deliveries_available ON pending_deliveries (available_at)",
    # Only the leased rows (at most the in-flight ones): open() finds them
    # without scanning a backlog of millions.
    "CREATE INDEX IF NOT EXISTS pending_deliveries_leased ON pending_deliveries (leased)"
    " WHERE leased = 1",
)


def _create(connection: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        connection.execute(statement)
    connection.execute("UPDATE pending_deliveries SET leased = 0, available_at = due WHERE leased = 1")


_ADD = (
    "INSERT OR REPLACE INTO pending_deliveries (id, due, available_at, leased, payload)"
    " SELECT json_extract(entry.value, '$.id'), json_extract(entry.value, '$.due'),"
    " coalesce(?, json_extract(entry.value, '$.due')), ?, entry.value FROM json_each(?) AS entry"
)

_LEASE_HEAD = (
    "SELECT json_group_array(json_array(available_at, id)), '[' || group_concat(payload, ',') || ']'"
    " FROM (SELECT available_at, id, payload FROM pending_deliveries WHERE available_at <= ?"
    " ORDER BY available_at LIMIT ?)"
)

_IDS = "SELECT value FROM json_each(?)"

_LEASE = "UPDATE pending_deliveries SET leased = 1, available_at = ? WHERE id IN (%s)" % (_IDS,)

_FINISH = "DELETE FROM pending_deliveries WHERE id IN (%s)" % (_IDS,)

_RESCHEDULE = (
    "UPDATE pending_deliveries SET due = json_extract(entry.value, '$.due'),"
    " available_at = json_extract(entry.value, '$.due'), leased = 0, payload = entry.value"
    " FROM json_each(?) AS entry WHERE pending_deliveries.id = json_extract(entry.value, '$.id')"
)

_RELEASE = (
    "UPDATE pending_deliveries SET leased = 0, available_at = due WHERE leased = 1 AND id IN (%s)"
    % (_IDS,)
)


def net_updates(updates: Sequence[LedgerUpdate]) -> tuple[list[str], list[PendingDelivery]]:
    """``(ids to finish, entries to reschedule)`` with the effect of applying
    ``updates`` one by one: a finished entry stays gone (a later reschedule
    finds no row), and the last reschedule of an entry wins."""
    finished = {key for key, retry in updates if retry is None}
    rescheduled = {key: retry for key, retry in updates if retry is not None and key not in finished}
    return sorted(finished), list(rescheduled.values())


@implementer(ILedger)
class SQLiteLedger:
    """The ledger in a ``SQLiteDatabase`` (shared with the store, or its own file)."""

    def __init__(self, database: SQLiteDatabase) -> None:
        self._database = database
        self._open = False
        self._updates: GroupCommit[LedgerUpdate, None] = GroupCommit(self._write_updates)

    async def open(self) -> None:
        """Open the database, create the table, and release every lease."""
        await self._database.open()
        self._open = True
        try:
            await self._database.run(_create)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close (this ledger's use of) the database; a second call does nothing."""
        if self._open:
            self._open = False
            await self._database.close()

    async def add(self, entries: Iterable[PendingDelivery], leased_until: float | None = None) -> None:
        """Insert (or replace) entries, all in one transaction; already leased
        until ``leased_until`` if given (the caller attempts them itself)."""
        await self._database.run(self.adding(entries, leased_until))

    def adding(self, entries: Iterable[PendingDelivery],
               leased_until: float | None = None) -> Callable[[sqlite3.Connection], None]:
        """The statements of ``add``, to run in a transaction of the caller's
        on the same database (a firing and its ledger entries commit together)."""
        arguments = (leased_until, 0 if leased_until is None else 1, PendingDelivery.list_to_json(entries))

        def insert(connection: sqlite3.Connection) -> None:
            connection.execute(_ADD, arguments)

        return insert

    @property
    def database(self) -> SQLiteDatabase:
        """The database this ledger lives in."""
        return self._database

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[PendingDelivery]:
        """Lease up to ``limit`` entries available at ``now``, earliest first."""

        def lease(connection: sqlite3.Connection) -> tuple[str, str | None]:
            heads, payloads = connection.execute(_LEASE_HEAD, (now, limit)).fetchone()
            if payloads is not None:
                ids = json.dumps([key for _, key in json.loads(heads)])
                connection.execute(_LEASE, (now + lease_seconds, ids))
            return heads, payloads

        heads, payloads = await self._database.run(lease)
        if payloads is None:
            return []
        order = [available_at for available_at, _ in json.loads(heads)]
        claimed = zip(order, json.loads(payloads))
        return [PendingDelivery(**fields) for _, fields in sorted(claimed, key=lambda pair: pair[0])]

    def reschedule(self, entry: PendingDelivery) -> Deferred[None]:
        """Store the entry's new attempt and due time and drop its lease."""
        return self._updates.submit((entry.id, entry))

    def finish(self, delivery_id: str) -> Deferred[None]:
        """Remove the entry."""
        return self._updates.submit((delivery_id, None))

    async def _write_updates(self, updates: list[LedgerUpdate]) -> None:
        await self._database.run(self.updating(updates))

    @staticmethod
    def updating(updates: Sequence[LedgerUpdate]) -> Callable[[sqlite3.Connection], None]:
        """The statements of a batch of ``finish`` and ``reschedule`` calls
        (``(id, None)`` and ``(id, entry)``, in call order), for a
        transaction of the caller's: one ``DELETE`` and one ``UPDATE``."""
        finished, rescheduled = net_updates(updates)
        finished_ids = json.dumps(finished)
        rescheduled_entries = PendingDelivery.list_to_json(rescheduled)

        def update(connection: sqlite3.Connection) -> None:
            if finished:
                connection.execute(_FINISH, (finished_ids,))
            if rescheduled:
                connection.execute(_RESCHEDULE, (rescheduled_entries,))

        return update

    async def release(self, delivery_ids: Iterable[str]) -> None:
        """Drop the leases of these entries: due again at once."""
        ids = json.dumps(list(delivery_ids))

        def unlease(connection: sqlite3.Connection) -> None:
            connection.execute(_RELEASE, (ids,))

        await self._database.run(unlease)

    async def next_due(self) -> float | None:
        """The earliest due time or lease expiry, None when empty."""

        def earliest(connection: sqlite3.Connection) -> float | None:
            row = connection.execute("SELECT MIN(available_at) FROM pending_deliveries").fetchone()
            return None if row is None else row[0]

        return await self._database.run(earliest)

    async def count(self) -> int:
        """How many entries are held (pending and leased)."""

        def total(connection: sqlite3.Connection) -> int:
            return int(connection.execute("SELECT COUNT(*) FROM pending_deliveries").fetchone()[0])

        return await self._database.run(total)
