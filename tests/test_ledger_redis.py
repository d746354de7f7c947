"""What only the Redis ledger does: URLs, Redis restarts and outages, key prefixes."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from pywebhooks.errors import StoreUnavailable
from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.ledger.redis import RedisAddress, RedisLedger
from tests.support.ledgers import RedisLedgerFactory, redis_ledgers, running_reactor
from tests.support.processes import free_port
from tests.support.redis_server import RedisServer
from tests.test_ledger_behaviour import LEASE, T, entry, ids

T_ = TypeVar("T_")


@pytest_twisted.async_yield_fixture
async def ledgers(tmp_path: Path) -> AsyncIterator[RedisLedgerFactory]:
    """Redis ledgers on a redis-server of their own."""
    async with redis_ledgers(tmp_path) as factory:
        yield factory


async def eventually(call: Callable[[], Awaitable[T_]], timeout: float = 10.0) -> T_:
    """The result of ``call`` once the ledger has reconnected by itself."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the ledger did not reconnect"
            await deferLater(running_reactor(), 0.05, lambda: None)


def test_url_parsing() -> None:
    """--redis URLs give host, port, database and optional credentials."""
    assert RedisAddress.parse("redis://10.0.0.5:6380/3") == RedisAddress("10.0.0.5", 6380, 3)
    assert RedisAddress.parse("redis://localhost") == RedisAddress("localhost", 6379, 0)
    assert RedisAddress.parse("redis://[::1]:7000/") == RedisAddress("::1", 7000, 0)
    secret = RedisAddress.parse("redis://user:p%40ss@host:1/2")
    assert (secret.username, secret.password, secret.db) == ("user", "p@ss", 2)
    assert "p@ss" not in repr(secret)
    for bad in ("http://host:1/0", "redis://host:port/0", "redis://host:1/x"):
        with pytest.raises(ValueError):
            RedisAddress.parse(bad)


@pytest_twisted.ensureDeferred
async def test_entries_survive_a_redis_restart(ledgers: RedisLedgerFactory) -> None:
    """After Redis restarts, the ledger reconnects by itself and every entry is still there."""
    ledger = await ledgers.open_ledger()
    added = [entry(T + index) for index in range(10)]
    await ledger.add(added)
    assert ids(await ledger.claim(T + 5, 3, LEASE)) == ids(added[:3])
    ledgers.server.restart()
    assert await eventually(ledger.count) == 10
    assert ids(await ledger.claim(T + 50, 20, LEASE)) == ids(added[3:])


@pytest_twisted.ensureDeferred
async def test_entries_survive_redis_being_killed(ledgers: RedisLedgerFactory) -> None:
    """With append-only persistence, even a killed Redis keeps every acknowledged entry."""
    ledger = await ledgers.open_ledger()
    added = [entry(T) for _ in range(50)]
    await ledger.add(added)
    ledgers.server.kill()
    ledgers.server.start()
    claimed = await eventually(lambda: ledger.claim(T, 100, LEASE))
    assert set(ids(claimed)) == set(ids(added))


@pytest_twisted.ensureDeferred
async def test_outage_fails_fast_then_recovers(ledgers: RedisLedgerFactory) -> None:
    """While Redis is down every call fails at once with StoreUnavailable; it works again after."""
    ledger = await ledgers.open_ledger()
    kept = entry(T)
    await ledger.add([kept])
    ledgers.server.stop()
    started = time.monotonic()
    for call in (lambda: ledger.add([entry(T)]), lambda: ledger.claim(T, 1, LEASE),
                 ledger.next_due, ledger.count, lambda: ledger.finish(kept.id)):
        with pytest.raises(StoreUnavailable):
            await call()
    assert time.monotonic() - started < 1.0
    ledgers.server.start()
    assert ids(await eventually(lambda: ledger.claim(T, 10, LEASE))) == [kept.id]


@pytest_twisted.ensureDeferred
async def test_open_fails_when_redis_is_unreachable(tmp_path: Path) -> None:
    """Opening a ledger on a port where no Redis listens raises StoreUnavailable."""
    ledger = RedisLedger("redis://127.0.0.1:%d/0" % (free_port(),), clock=running_reactor(), timeout=0.5)
    with pytest.raises(StoreUnavailable):
        await ledger.open()
    assert not ledger.connected


@pytest_twisted.ensureDeferred
async def test_key_prefixes_and_databases_are_separate(tmp_path: Path) -> None:
    """Ledgers with different key prefixes or database numbers never see each other's entries."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    opened = []
    try:
        for url, prefix in ((server.url, "a:"), (server.url, "b:"), (server.url[:-1] + "1", "a:")):
            ledger = RedisLedger(url, prefix, clock=running_reactor())
            await ledger.open()
            opened.append(ledger)
        await opened[0].add([entry(T)])
        assert [await ledger.count() for ledger in opened] == [1, 0, 0]
    finally:
        for ledger in opened:
            await ledger.close()
        server.stop()


async def taken_over(ledgers: RedisLedgerFactory) -> tuple[RedisLedger, RedisLedger, PendingDelivery]:
    """Two daemons' ledgers: the first claims an entry at T and its lease
    lapses; the second takes the entry over just after; the entry."""
    first = await ledgers.open_ledger()
    second = await ledgers.open_ledger()
    added = entry(T)
    await first.add([added])
    assert ids(await first.claim(T, 1, LEASE)) == [added.id]
    assert ids(await second.claim(T + LEASE + 1, 1, LEASE)) == [added.id]
    return first, second, added


@pytest_twisted.ensureDeferred
async def test_a_late_release_leaves_the_new_holders_lease(ledgers: RedisLedgerFactory) -> None:
    """A release from a daemon whose lease lapsed, after another daemon took
    the entry over, does nothing: no third daemon can claim it meanwhile."""
    first, second, added = await taken_over(ledgers)
    await first.release([added.id])
    third = await ledgers.open_ledger()
    assert await third.claim(T + LEASE + 2, 1, LEASE) == []
    await second.release([added.id])  # the holder itself can
    assert ids(await third.claim(T + LEASE + 2, 1, LEASE)) == [added.id]


@pytest_twisted.ensureDeferred
async def test_a_late_reschedule_leaves_the_new_holders_lease(ledgers: RedisLedgerFactory) -> None:
    """A reschedule from a daemon whose lease lapsed does nothing once
    another daemon holds the entry; the holder's own reschedule is stored."""
    first, second, added = await taken_over(ledgers)
    await first.reschedule(dataclasses.replace(added, attempt=1, due=T + LEASE + 2))
    third = await ledgers.open_ledger()
    assert await third.claim(T + LEASE + 2, 1, LEASE) == []
    await second.reschedule(dataclasses.replace(added, attempt=2, due=T + LEASE + 2))
    [rescheduled] = await third.claim(T + LEASE + 2, 1, LEASE)
    assert (rescheduled.id, rescheduled.attempt) == (added.id, 2)
