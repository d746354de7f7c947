"""``SQLiteLedger``: pending deliveries in the embedded database (the default).

One table, ``pending_deliveries``: the entry as JSON plus its ``due`` time,
whether it is ``leased``, and ``available_at`` (the due time, or the lease
expiry while leased), indexed, so that a claim and ``next_due`` read only
the head of one index however many entries wait.  An embedded file serves a
single process, so ``open()`` drops every lease a killed run left behind and
those entries are due again at once; a partial index of the leased rows
alone lets it find them without reading the whole backlog.

The hot-path writes (``finish`` and ``reschedule``, one per attempt) are
group-committed (``SQLiteDatabase.run_grouped``): calls made while a
transaction is running are queued and written together in the next one,
with the store's attempt records when both share the database.
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Iterable

from zope.interface import implementer

from pywebhooks.ledger.interface import ILedger, PendingDelivery
from pywebhooks.sqlitedb import SQLiteDatabase

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


@implementer(ILedger)
class SQLiteLedger:
    """The ledger in a ``SQLiteDatabase`` (shared with the store, or its own file)."""

    def __init__(self, database: SQLiteDatabase) -> None:
        self._database = database
        self._open = False

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
        leased = 0 if leased_until is None else 1
        rows = [
            (entry.id, entry.due, entry.due if leased_until is None else leased_until, leased, entry.to_json())
            for entry in entries
        ]

        def insert(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "INSERT OR REPLACE INTO pending_deliveries (id, due, available_at, leased, payload)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )

        return insert

    @property
    def database(self) -> SQLiteDatabase:
        """The database this ledger lives in."""
        return self._database

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[PendingDelivery]:
        """Lease up to ``limit`` entries available at ``now``, earliest first."""

        def lease(connection: sqlite3.Connection) -> list[str]:
            rows = connection.execute(
                "SELECT id, payload FROM pending_deliveries WHERE available_at <= ?"
                " ORDER BY available_at LIMIT ?",
                (now, limit),
            ).fetchall()
            connection.executemany(
                "UPDATE pending_deliveries SET leased = 1, available_at = ? WHERE id = ?",
                [(now + lease_seconds, row[0]) for row in rows],
            )
            return [row[1] for row in rows]

        payloads = await self._database.run(lease)
        return [PendingDelivery.from_json(payload) for payload in payloads]

    async def reschedule(self, entry: PendingDelivery) -> None:
        """Store the entry's new attempt and due time and drop its lease."""
        await self._database.run_grouped(self.rescheduling(entry))

    def rescheduling(self, entry: PendingDelivery) -> Callable[[sqlite3.Connection], None]:
        """The statements of ``reschedule``, for a transaction of the caller's."""
        row = (entry.due, entry.due, entry.to_json(), entry.id)

        def update(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE pending_deliveries SET due = ?, available_at = ?, leased = 0, payload = ?"
                " WHERE id = ?",
                row,
            )

        return update

    async def finish(self, delivery_id: str) -> None:
        """Remove the entry."""
        await self._database.run_grouped(self.finishing(delivery_id))

    def finishing(self, delivery_id: str) -> Callable[[sqlite3.Connection], None]:
        """The statements of ``finish``, for a transaction of the caller's."""

        def delete(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM pending_deliveries WHERE id = ?", (delivery_id,))

        return delete

    async def release(self, delivery_ids: Iterable[str]) -> None:
        """Drop the leases of these entries: due again at once."""
        rows = [(key,) for key in delivery_ids]

        def unlease(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "UPDATE pending_deliveries SET leased = 0, available_at = due WHERE id = ? AND leased = 1",
                rows,
            )

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
