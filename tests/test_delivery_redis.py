"""Deliveries with the Redis ledger (``--redis``): outages, and daemons sharing one Redis.

Real redis-server, real receivers on 127.0.0.1, the store in SQLite.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted

from pywebhooks.errors import StoreUnavailable
from pywebhooks.ledger.redis import RedisLedger
from pywebhooks.store.sqlite import SQLiteStore
from tests.support.deliveries import (  # noqa: F401 (fixtures)
    running_reactor,
    DeliveryNode,
    DeadDeliverer,
    World,
    daemons,
    eventually,
    fired,
    logged_errors,
    receiver,
    sleep,
    within,
)
from tests.support.ledgers import RedisLedgerFactory, redis_ledgers
from tests.support.receiver import Receiver
from tests.support.stores import sqlite_database

pytestmark = pytest.mark.usefixtures("logged_errors")


reactor = running_reactor


@pytest_twisted.async_yield_fixture
async def ledgers(tmp_path: Path) -> AsyncIterator[RedisLedgerFactory]:
    """Redis ledgers on a redis-server of their own."""
    async with redis_ledgers(tmp_path) as factory:
        yield factory


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """The store every daemon of a test shares."""
    opened = SQLiteStore(sqlite_database(tmp_path / "pywebhooks.sqlite3"))
    await opened.initialize(drop=True)
    yield opened
    await opened.close()


@pytest_twisted.ensureDeferred
async def test_redis_outage_refuses_triggers_then_recovers(
        store: SQLiteStore, ledgers: RedisLedgerFactory, receiver: Receiver,
        daemons: list[DeliveryNode]) -> None:
    """With Redis down a trigger gets StoreUnavailable and records nothing; once back, held retries go out."""
    ledger = await ledgers.open_ledger()
    world = await World.create(store, reactor())
    await world.subscribe(receiver.url("/flaky"))
    receiver.behave("/flaky", status=500)
    daemon = DeliveryNode(store, ledger, retry_delays=(0.3, 0.3, 0.3)).start()
    daemons.append(daemon)
    accepted = await fired(daemon, world)
    await within(receiver.wait_for_posts(1), 5.0)
    await eventually(_rescheduled(ledger))

    ledgers.server.stop()
    await sleep(0.05)  # the connections notice they are gone
    with pytest.raises(StoreUnavailable):
        await fired(daemon, world)
    assert [firing["id"] for firing in (await store.list_firings(0, 10)).rows] == [accepted["id"]]
    receiver.behave("/flaky", status=200)
    await sleep(0.5)  # the retry falls due while Redis is down
    assert len(receiver.posts) == 1

    ledgers.server.start()
    await within(receiver.wait_for_posts(2), 10.0)
    [delivery] = await eventually(lambda: _delivered(store, accepted))
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [500, 200]
    assert {post.headers["webhook-id"] for post in receiver.posts} == {delivery["id"]}
    assert await eventually(lambda: _empty(ledger))
    await fired(daemon, world)
    await within(receiver.wait_for_posts(3), 5.0)


def _rescheduled(ledger: RedisLedger) -> Any:
    """A check: the retry is in the ledger (due in 0.3 s, not the 5 s lease)."""
    async def check() -> bool:
        due = await ledger.next_due()
        return due is not None and due < reactor().seconds() + 1.0

    return check


async def _delivered(store: SQLiteStore, firing: dict[str, Any]) -> Any:
    deliveries = await store.get_deliveries(firing["id"])
    return deliveries if all(d["state"] == "delivered" for d in deliveries) else None


async def _empty(ledger: RedisLedger) -> bool:
    return await ledger.count() == 0


@pytest_twisted.ensureDeferred
async def test_two_daemons_share_the_work_each_attempt_once(
        store: SQLiteStore, ledgers: RedisLedgerFactory, receiver: Receiver,
        daemons: list[DeliveryNode]) -> None:
    """Two daemons on one Redis ledger split a big fan-out and send every delivery exactly once."""
    world = await World.create(store, reactor())
    for index in range(120):
        await world.subscribe(receiver.url("/hook%d" % (index % 7,)))
    for index in range(7):
        receiver.behave("/hook%d" % (index,), delay=0.02)
    first = DeliveryNode(store, await ledgers.open_ledger(), max_in_flight=10).start()
    second = DeliveryNode(store, await ledgers.open_ledger(), max_in_flight=10).start()
    daemons.extend([first, second])
    firing = await fired(first, world)
    await within(receiver.wait_for_posts(120), 10.0)
    await eventually(lambda: _delivered(store, firing))
    await sleep(0.3)
    sent = collections.Counter(post.headers["webhook-id"] for post in receiver.posts)
    assert len(sent) == 120 and set(sent.values()) == {1}
    assert first.scheduler.attempts_made + second.scheduler.attempts_made == 120
    assert second.scheduler.attempts_made > 0


@pytest_twisted.ensureDeferred
async def test_a_killed_daemons_deliveries_are_taken_over(
        store: SQLiteStore, ledgers: RedisLedgerFactory, receiver: Receiver,
        daemons: list[DeliveryNode]) -> None:
    """Deliveries leased by a daemon that died are made by another once the lease expires, once."""
    world = await World.create(store, reactor())
    for index in range(5):
        await world.subscribe(receiver.url("/hook%d" % (index,)))
    dead = DeadDeliverer()
    killed = DeliveryNode(store, await ledgers.open_ledger(), deliverer=dead, lease_seconds=1.0).start()
    survivor = DeliveryNode(store, await ledgers.open_ledger(), lease_seconds=1.0).start()
    daemons.append(survivor)
    started = reactor().seconds()
    firing = await fired(killed, world)
    assert len(dead.started) == 5
    killed.kill()
    await sleep(0.5)
    assert receiver.posts == []
    await within(receiver.wait_for_posts(5), 5.0)
    assert reactor().seconds() - started >= 1.0
    await eventually(lambda: _delivered(store, firing))
    await sleep(0.3)
    assert sorted(post.headers["webhook-id"] for post in receiver.posts) == sorted(e.id for e in dead.started)
    assert survivor.scheduler.attempts_made == 5
    await killed.pool.closeCachedConnections()
