"""Writing a firing down: the firing, its deliveries and their ledger entries
land together or not at all, whether the store and the ledger share one
SQLite file (one transaction) or not (ledger first, undone on failure)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults
from zope.interface.verify import verifyObject

from pywebhooks import records
from pywebhooks.delivery.recording import IFiringRecorder, OneTransaction, SeparateWrites, recorder_for
from pywebhooks.errors import StoreError
from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.ledger.memory import MemoryLedger
from pywebhooks.ledger.sqlite import SQLiteLedger
from pywebhooks.store.memory import MemoryStore
from pywebhooks.store.sqlite import SQLiteStore
from tests.support.deliveries import World, running_reactor
from tests.support.stores import sqlite_database, store_and_ledger

LEASED_UNTIL = 4_000_000_000.0


@contextlib.asynccontextmanager
async def sqlite_pair(directory: Path, shared: bool) -> AsyncIterator[tuple[SQLiteStore, SQLiteLedger]]:
    """An SQLite store and ledger, in one file or in two."""
    directory.mkdir(parents=True, exist_ok=True)
    store_database = sqlite_database(directory / "store.sqlite3")
    ledger_database = None if shared else sqlite_database(directory / "ledger.sqlite3")
    async with store_and_ledger(store_database, ledger_database) as opened:
        yield opened


def planned(world: World, count: int) -> tuple[dict[str, Any], list[dict[str, Any]], list[PendingDelivery]]:
    """A firing of ``world``'s registration with ``count`` deliveries and ledger entries."""
    firing = {"id": records.new_id(), "registration_id": world.registration["id"], "epoch": 1.0}
    deliveries, entries = [], []
    for subscriber in world.subscribers[:count]:
        delivery_id = records.new_id()
        deliveries.append({
            "id": delivery_id, "epoch": 1.0, "firing_id": firing["id"],
            "registration_id": world.registration["id"], "subscription_id": records.new_id(),
            "account_id": subscriber["id"], "event": "push", "endpoint": subscriber["endpoint"],
            "state": "pending", "attempts": [],
        })
        entries.append(PendingDelivery(
            id=delivery_id, firing_id=firing["id"], account_id=subscriber["id"],
            endpoint=subscriber["endpoint"], secret_key=subscriber["secret_key"], event="push",
            body="{}", attempt=0, due=1.0,
        ))
    return firing, deliveries, entries


async def world_of(store: Any, subscribers: int = 3) -> World:
    """An owner, its registration and ``subscribers`` subscribed accounts."""
    world = await World.create(store, running_reactor())
    for number in range(subscribers):
        await world.subscribe("http://127.0.0.1:9/%d" % (number,))
    return world


@pytest_twisted.ensureDeferred
async def test_a_store_and_ledger_in_one_file_are_written_in_one_transaction(tmp_path: Path) -> None:
    """The embedded default (one SQLite file) gets OneTransaction; anything else SeparateWrites."""
    async with sqlite_pair(tmp_path / "one", shared=True) as (store, ledger):
        assert isinstance(recorder_for(store, ledger), OneTransaction)
        assert verifyObject(IFiringRecorder, recorder_for(store, ledger))
    async with sqlite_pair(tmp_path / "two", shared=False) as (store, ledger):
        assert isinstance(recorder_for(store, ledger), SeparateWrites)
        with pytest.raises(ValueError):
            OneTransaction(store, ledger)
    assert isinstance(recorder_for(MemoryStore(), MemoryLedger()), SeparateWrites)
    assert verifyObject(IFiringRecorder, SeparateWrites(MemoryStore(), MemoryLedger()))


@pytest.mark.parametrize("shared", [True, False], ids=["one-file", "two-files"])
@pytest_twisted.ensureDeferred
async def test_a_recorded_firing_is_listed_and_its_entries_wait_leased(tmp_path: Path, shared: bool) -> None:
    """After ``record``, the firing and its deliveries are in the store and
    every entry is in the ledger, leased (nobody else can claim it)."""
    async with sqlite_pair(tmp_path, shared) as (store, ledger):
        world = await world_of(store)
        firing, deliveries, entries = planned(world, 3)
        await recorder_for(store, ledger).record(firing, deliveries, entries, LEASED_UNTIL)
        assert [row["id"] for row in (await store.list_firings(0, 10)).rows] == [firing["id"]]
        assert [d["id"] for d in await store.get_deliveries(firing["id"])] == [e.id for e in entries]
        assert await ledger.count() == 3
        assert await ledger.claim(LEASED_UNTIL - 1, 10, 30) == []
        assert sorted(e.id for e in await ledger.claim(LEASED_UNTIL, 10, 30)) == sorted(e.id for e in entries)


@pytest.mark.parametrize("shared", [True, False], ids=["one-file", "two-files"])
@pytest_twisted.ensureDeferred
async def test_a_firing_the_store_refuses_leaves_no_ledger_entry(tmp_path: Path, shared: bool) -> None:
    """When the store refuses the firing (here a delivery id it repeats),
    none of its entries stays in the ledger: nothing is sent for a firing
    that the API answered with an error."""
    async with sqlite_pair(tmp_path, shared) as (store, ledger):
        world = await world_of(store)
        recorder = recorder_for(store, ledger)
        first, first_deliveries, first_entries = planned(world, 1)
        await recorder.record(first, first_deliveries, first_entries, LEASED_UNTIL)
        second, deliveries, entries = planned(world, 3)
        deliveries[2]["id"] = deliveries[0]["id"]
        with pytest.raises(StoreError):
            await recorder.record(second, deliveries, entries, LEASED_UNTIL)
        assert [row["id"] for row in (await store.list_firings(0, 10)).rows] == [first["id"]]
        assert await ledger.count() == 1
        claimed = await ledger.claim(LEASED_UNTIL, 10, 30)
        assert [entry.id for entry in claimed] == [first_entries[0].id]


@pytest.mark.parametrize("shared", [True, False], ids=["one-file", "two-files"])
@pytest_twisted.ensureDeferred
async def test_a_ledger_that_cannot_be_written_leaves_no_firing(tmp_path: Path, shared: bool) -> None:
    """When the ledger cannot take the entries, the firing is not recorded
    either: it is never listed as pending with nothing to deliver it."""
    async with sqlite_pair(tmp_path, shared) as (store, ledger):
        world = await world_of(store)
        await ledger.database.run(lambda connection: connection.execute("DROP TABLE pending_deliveries"))
        firing, deliveries, entries = planned(world, 2)
        with pytest.raises(Exception):
            await recorder_for(store, ledger).record(firing, deliveries, entries, LEASED_UNTIL)
        assert (await store.list_firings(0, 10)).rows == []
        assert await store.get_deliveries(firing["id"]) == []


def attempt_record(number: int, ok: bool) -> dict[str, Any]:
    """What the scheduler logs of one attempt."""
    return {"attempt": number, "at": 5.5, "ok": ok, "status_code": 200 if ok else 500,
            "error": None, "duration": 0.25}


@pytest.mark.parametrize("shared", [True, False], ids=["one-file", "two-files"])
@pytest_twisted.ensureDeferred
async def test_an_outcome_is_logged_and_in_one_file_settles_the_ledger_too(tmp_path: Path, shared: bool) -> None:
    """``record_outcome`` logs the attempt on the delivery; in one file it also
    finishes (success) or reschedules (retry) the ledger entry in the same
    write and says so, otherwise it leaves the ledger to the caller."""
    async with sqlite_pair(tmp_path, shared) as (store, ledger):
        world = await world_of(store)
        recorder = recorder_for(store, ledger)
        firing, deliveries, entries = planned(world, 2)
        await recorder.record(firing, deliveries, entries, LEASED_UNTIL)
        delivered, retried = entries
        later = PendingDelivery(**{**vars(retried), "attempt": 1, "due": 7.0})
        assert await recorder.record_outcome(delivered, attempt_record(1, True), True, None) is shared
        assert await recorder.record_outcome(retried, attempt_record(1, False), False, later) is shared
        logged = {d["id"]: d for d in await store.get_deliveries(firing["id"])}
        assert logged[delivered.id]["state"] == "delivered"
        assert logged[delivered.id]["attempts"] == [attempt_record(1, True)]
        assert logged[retried.id]["state"] == "pending"
        assert logged[retried.id]["attempts"] == [attempt_record(1, False)]
        assert (await store.get_account(retried.account_id))["failed_count"] == 1
        if shared:
            assert await ledger.count() == 1
            assert await ledger.claim(7.0, 10, 30) == [later]
        else:
            assert await ledger.count() == 2


@pytest.mark.parametrize("shared", [True, False], ids=["one-file", "two-files"])
@pytest_twisted.ensureDeferred
async def test_fire_plans_from_the_live_subscribers_and_records_it_all(tmp_path: Path, shared: bool) -> None:
    """``fire`` hands the registration's subscribers to the plan and writes
    what it returns: the firing with one delivery per planned subscriber,
    and their entries leased in the ledger."""
    async with sqlite_pair(tmp_path, shared) as (store, ledger):
        world = await world_of(store, subscribers=4)
        firing, deliveries, entries = planned(world, 4)
        seen: list[list[str]] = []

        def plan(subscribers: list[dict[str, Any]]) -> Any:
            seen.append([subscriber["account_id"] for subscriber in subscribers])
            return deliveries[:3], entries[:3]  # the plan leaves one out (say, muted)

        returned = await recorder_for(store, ledger).fire(firing, world.registration["id"], plan, LEASED_UNTIL)
        assert seen == [[subscriber["id"] for subscriber in world.subscribers]]
        assert returned == entries[:3]
        assert [d["id"] for d in await store.get_deliveries(firing["id"])] == [e.id for e in entries[:3]]
        assert await ledger.count() == 3
        assert await ledger.claim(LEASED_UNTIL - 1, 10, 30) == []


@pytest_twisted.ensureDeferred
async def test_outcomes_settled_together_share_a_transaction_of_a_few_statements(tmp_path: Path) -> None:
    """In one file, outcomes that settle while a write runs go out in the
    next transaction, as a fixed handful of statements however many there
    are; a delivery named twice in a batch keeps both attempts in order,
    and its entry is finished if either outcome finished it."""
    async with sqlite_pair(tmp_path, shared=True) as (store, ledger):
        world = await world_of(store, subscribers=60)
        recorder = recorder_for(store, ledger)
        firing, deliveries, entries = planned(world, 60)
        await recorder.record(firing, deliveries, entries, LEASED_UNTIL)
        statements: list[str] = []
        await store.database.trace(statements.append)
        writes = []
        for entry in entries:
            retry = PendingDelivery(**{**vars(entry), "attempt": 1, "due": 7.0})
            writes.append(recorder.record_outcome(entry, attempt_record(1, False), False, retry))
            writes.append(recorder.record_outcome(entry, attempt_record(2, False), True, None))
        await gatherResults([ensureDeferred(write) for write in writes])
        await store.database.trace(None)
        assert len(statements) <= 20, statements
        for delivery in await store.get_deliveries(firing["id"]):
            assert delivery["state"] == "failed"
            assert delivery["attempts"] == [attempt_record(1, False), attempt_record(2, False)]
        for subscriber in world.subscribers:
            assert (await store.get_account(subscriber["id"]))["failed_count"] == 2
        assert await ledger.count() == 0
