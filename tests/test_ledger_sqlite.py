"""What only the embedded SQLite ledger does: group commit, sharing the store's file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults

from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.ledger.sqlite import SQLiteLedger
from pywebhooks.sqlitedb import SQLiteDatabase
from tests.support.ledgers import running_reactor
from tests.support.stores import store_and_ledger
from tests.test_ledger_behaviour import LEASE, T, entry


class CountingDatabase(SQLiteDatabase):
    """A SQLiteDatabase that counts its transactions."""

    transactions = 0

    async def run(self, function: Callable[[sqlite3.Connection], Any]) -> Any:
        self.transactions += 1
        return await super().run(function)


@pytest_twisted.ensureDeferred
async def test_finishes_and_reschedules_are_group_committed(tmp_path: Path) -> None:
    """Hundreds of finishes and reschedules issued together take a handful of transactions."""
    database = CountingDatabase(running_reactor(), str(tmp_path / "ledger.sqlite3"))
    ledger = SQLiteLedger(database)
    await ledger.open()
    try:
        added = [entry(T) for _ in range(400)]
        await ledger.add(added)
        claimed = await ledger.claim(T, 400, LEASE)
        before = database.transactions
        writes = [ensureDeferred(ledger.finish(item.id)) for item in claimed[:200]]
        for item in claimed[200:]:
            item.attempt, item.due = 1, T + 120
            writes.append(ensureDeferred(ledger.reschedule(item)))
        await gatherResults(writes)
        assert database.transactions - before <= 3
        assert await ledger.count() == 200
        assert len(await ledger.claim(T + 120, 400, LEASE)) == 200
    finally:
        await ledger.close()


@pytest_twisted.ensureDeferred
async def test_shares_the_file_with_the_store(tmp_path: Path) -> None:
    """The ledger can live in the store's own database (one file, one thread)."""
    database = SQLiteDatabase(running_reactor(), str(tmp_path / "pywebhooks.sqlite3"))
    async with store_and_ledger(database) as (store, ledger):
        await ledger.add([entry(T)])
        assert await store.count_accounts() == 0
        assert await ledger.count() == 1
    with sqlite3.connect(database.path) as check:
        tables = {name for (name,) in check.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "pending_deliveries" in tables and "accounts" in tables


@pytest_twisted.ensureDeferred
async def test_attempt_records_are_group_committed_and_counted_in_call_order(tmp_path: Path) -> None:
    """Hundreds of attempt records settled together take a couple of
    transactions, and each caller gets the count its attempt left, as if
    they had been written one by one."""
    database = CountingDatabase(running_reactor(), str(tmp_path / "pywebhooks.sqlite3"))
    async with store_and_ledger(database) as (store, ledger):
        account = {"id": "a1", "username": "john", "endpoint": "http://127.0.0.1/", "api_key": "h",
                   "secret_key": "s", "is_admin": False, "failed_count": 0, "epoch": T}
        await store.insert_account(account)
        added = [entry(T) for _ in range(200)]
        before = database.transactions
        attempt = {"attempt": 0, "at": T, "ok": False, "status_code": 500, "error": None,
                   "duration": 0.1}
        writes = [ensureDeferred(store.record_attempt(item.firing_id, item.id, "a1", attempt, False))
                  for item in added]
        results = await gatherResults(writes)
        assert database.transactions - before <= 2
        assert results == list(range(1, 201))
        assert (await store.get_account("a1"))["failed_count"] == 200


@pytest_twisted.ensureDeferred
async def test_a_batch_leaves_each_entry_as_calls_one_by_one_would(tmp_path: Path) -> None:
    """Within one batch, a finish wins over any reschedule of the same entry
    (before or after it), and the last of two reschedules wins."""
    ledger = SQLiteLedger(SQLiteDatabase(running_reactor(), str(tmp_path / "ledger.sqlite3")))
    await ledger.open()
    try:
        first, twice, finished_later, occupying = added = [entry(T) for _ in range(4)]
        await ledger.add(added)
        claimed = {item.id: item for item in await ledger.claim(T, 4, LEASE)}

        def moved(item: PendingDelivery, due: float) -> PendingDelivery:
            return PendingDelivery(**{**vars(claimed[item.id]), "attempt": 1, "due": due})

        writes = [
            ledger.finish(occupying.id),  # goes out alone: the rest queue behind it
            ledger.reschedule(moved(first, T + 10)), ledger.finish(first.id),
            ledger.reschedule(moved(twice, T + 20)), ledger.reschedule(moved(twice, T + 30)),
            ledger.finish(finished_later.id), ledger.reschedule(moved(finished_later, T + 40)),
        ]
        await gatherResults([ensureDeferred(write) for write in writes])
        assert await ledger.count() == 1
        assert await ledger.next_due() == T + 30
        assert await ledger.claim(T + 100, 10, LEASE) == [moved(twice, T + 30)]
    finally:
        await ledger.close()


@pytest_twisted.ensureDeferred
async def test_open_finds_leases_without_a_scan(tmp_path: Path) -> None:
    """Releasing a killed run's leases on open reads an index, not the whole backlog."""
    ledger = SQLiteLedger(SQLiteDatabase(running_reactor(), str(tmp_path / "ledger.sqlite3")))
    await ledger.open()
    await ledger.close()
    with sqlite3.connect(str(tmp_path / "ledger.sqlite3")) as check:
        plan = check.execute(
            "EXPLAIN QUERY PLAN UPDATE pending_deliveries SET leased = 0, available_at = due"
            " WHERE leased = 1"
        ).fetchall()
    assert "USING INDEX pending_deliveries_leased" in " ".join(str(row[3]) for row in plan)
