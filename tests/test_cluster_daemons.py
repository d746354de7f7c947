"""Two real daemons on one Redis ledger and one store share the deliveries: every
attempt is made once between them, and a daemon killed with ``kill -9`` has its
claimed deliveries taken over by the other once their lease expires.

The shared store is RethinkDB (the production case; skipped without a
``rethinkdb`` binary) or one SQLite file in WAL mode that both processes open
(so that machines without RethinkDB still run two daemons on one Redis).
Each test makes 2,000 deliveries: 20 subscribers of one registration, fired
100 times, the firings spread over both daemons' APIs.  The receiver answers
every POST 200 after ``RECEIVER_DELAY`` seconds, so attempts overlap and a
killed daemon always has some waiting for their answer.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from pywebhooks.delivery.scheduler import SETTLING_FACTOR
from pywebhooks.ledger.redis import RedisLedger
from pywebhooks.sqlitedb import SQLiteDatabase
from pywebhooks.store.interface import IStore
from pywebhooks.store.sqlite import SQLiteStore
from tests.support.cluster_receiver import CountingReceiver, tcp_ports
from tests.support.daemon import Daemon
from tests.support.redis_server import RedisServer
from tests.support.rethinkdb_server import require_rethinkdb, shared_server

# The driver's Twisted loop (used here to read the RethinkDB store) still calls
# ``returnValue``, deprecated since Twisted 24.7.
pytestmark = pytest.mark.filterwarnings(
    "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning:rethinkdb")

SUBSCRIBERS = 20
FIRINGS = 100
DELIVERIES = SUBSCRIBERS * FIRINGS
#: Seconds the receiver waits before answering each POST.
RECEIVER_DELAY = 0.05
#: The same in the kill test: slow enough that the firings are all recorded
#: (through the victim too) well before three quarters are delivered.
KILL_TEST_RECEIVER_DELAY = 0.15
#: Attempts each daemon makes at once (so at most this many are in flight in a killed one).
MAX_IN_FLIGHT = 20
#: The lease of the kill test: how long the survivor waits for the victim's claims.
SHORT_LEASE = 4
#: The lease of the exactly-once test: far longer than any attempt, however busy the machine.
LONG_LEASE = 30
#: Triggers sent at once to each daemon.
TRIGGER_CONCURRENCY = 5
DAEMON_OPTIONS = (
    "--retry-delays", "1,1,1",
    "--request-timeout", "2",
    "--max-in-flight", str(MAX_IN_FLIGHT),
    "--shutdown-grace", "2",
)


@dataclasses.dataclass
class Cluster:
    """Two daemons (not yet started) sharing a store and a Redis, and the receiver."""

    kind: str
    database: str
    redis: RedisServer
    daemons: list[Daemon]
    receiver: CountingReceiver

    async def start(self, lease_seconds: float) -> None:
        """Create the shared store and its admin, then start both daemons
        (with ``--lease-seconds lease_seconds``)."""
        first, second = self.daemons
        for daemon in self.daemons:
            daemon.options += ["--lease-seconds", "%g" % (lease_seconds,)]
        if self.kind == "rethinkdb":
            code, _, stderr = await first.run_once("--initdb", timeout=60)
            assert code == 0, stderr
        await first.start()  # an empty SQLite file gets its schema and admin here
        await second.start()
        assert second.printed_keys() == []  # one admin, made by the first daemon

    async def open_store(self) -> IStore:
        """The shared store, opened from the test process."""
        store: Any
        if self.kind == "rethinkdb":
            from pywebhooks.store.rethinkdb import RethinkDBStore

            store = RethinkDBStore(self.database, clock=reactor, timeout=30.0)
        else:
            store = SQLiteStore(SQLiteDatabase(reactor, self.database[len("sqlite:"):]))
        await store.open()
        return store


@pytest.fixture(params=["sqlite", "rethinkdb"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which shared store the two daemons use (RethinkDB is skipped without a binary)."""
    if request.param == "rethinkdb":
        require_rethinkdb()
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def cluster(store_kind: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """A Redis server, a receiver and two stopped daemons configured to share them."""
    if store_kind == "rethinkdb":
        database = shared_server().url("cluster_" + uuid.uuid4().hex[:12])
    else:
        database = "sqlite:%s" % (tmp_path / "shared.sqlite3",)
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    receiver = CountingReceiver(reactor)
    await receiver.start()
    daemons = []
    for name in ("a", "b"):
        daemon = Daemon(reactor, tmp_path / name, "--redis", redis.url, *DAEMON_OPTIONS)
        daemon.database = database
        daemons.append(daemon)
    try:
        yield Cluster(store_kind, database, redis, daemons, receiver)
    finally:
        for daemon in daemons:
            daemon.kill_now()
        await receiver.stop()
        redis.stop()


async def set_up_and_fire(cluster: Cluster, receiver_delay: float = RECEIVER_DELAY) -> list[str]:
    """Create a publisher and ``SUBSCRIBERS`` subscribers (through both daemons),
    register one event, subscribe everyone and fire it ``FIRINGS`` times, half
    through each daemon's API; the ids of the firings."""
    receiver = cluster.receiver
    apis = [daemon.api() for daemon in cluster.daemons]
    publisher = await apis[0].create_account("publisher", receiver.url("/publisher"))
    registration = await apis[1].register(publisher, "order.paid", {"order": 42})
    for number in range(SUBSCRIBERS):
        path = "/user%d" % (number,)
        receiver.behave(path, delay=receiver_delay)
        api = apis[number % 2]
        subscriber = await api.create_account("user%d" % (number,), receiver.url(path))
        await api.subscribe(subscriber, registration["id"])

    async def fire_through(api: Any, count: int) -> list[str]:
        fired: list[str] = []
        while len(fired) < count:
            batch = min(TRIGGER_CONCURRENCY, count - len(fired))
            firings = await gatherResults([
                Deferred.fromCoroutine(api.trigger(publisher, registration["id"])) for _ in range(batch)])
            fired.extend(firing["id"] for firing in firings)
        return fired

    halves = await gatherResults([Deferred.fromCoroutine(fire_through(api, FIRINGS // 2)) for api in apis])
    return [firing_id for half in halves for firing_id in half]


async def wait_until(condition: Any, timeout: float, what: str, cluster: Cluster) -> None:
    """Poll ``condition()`` until true; fail with ``what`` and the daemons' output after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("%s within %ss\n%s" % (what, timeout, "\n".join(
                daemon.diagnostics() for daemon in cluster.daemons)))
        await cluster.daemons[0].sleep(0.05)


async def ledger_count(redis_url: str) -> int:
    """How many entries the shared Redis ledger still holds."""
    ledger = RedisLedger(redis_url, clock=reactor)
    await ledger.open()
    try:
        return await ledger.count()
    finally:
        await ledger.close()


async def wait_until_ledger_empty(cluster: Cluster, timeout: float = 10.0) -> None:
    """Wait until every entry has left the shared ledger (finished)."""
    deadline = time.monotonic() + timeout
    while (left := await ledger_count(cluster.redis.url)) > 0:
        assert time.monotonic() < deadline, "%d entries left in the ledger" % (left,)
        await cluster.daemons[0].sleep(0.05)


async def stored_deliveries(cluster: Cluster, firing_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every delivery record of these firings in the shared store, by id."""
    store = await cluster.open_store()
    try:
        found: dict[str, dict[str, Any]] = {}
        for firing_id in firing_ids:
            deliveries = await store.get_deliveries(firing_id)
            assert len(deliveries) == SUBSCRIBERS, firing_id
            found.update((delivery["id"], delivery) for delivery in deliveries)
        return found
    finally:
        await store.close()


def posts_per_daemon(receiver: CountingReceiver, ports: list[set[int]]) -> list[int]:
    """How many POSTs came from each daemon (told apart by the client port)."""
    counts = [0] * len(ports)
    for client_ports in receiver.client_ports.values():
        for port in client_ports:
            for index, owned in enumerate(ports):
                if port in owned:
                    counts[index] += 1
    return counts


@pytest_twisted.ensureDeferred
async def test_two_daemons_make_each_attempt_exactly_once(cluster: Cluster) -> None:
    """Two daemons sharing one Redis and one store deliver 2,000 deliveries: each arrives once, none is lost."""
    await cluster.start(LONG_LEASE)
    receiver = cluster.receiver
    firing_ids = await set_up_and_fire(cluster)
    await wait_until(lambda: len(receiver.answered) >= DELIVERIES, 40, "not every delivery arrived", cluster)
    await wait_until_ledger_empty(cluster)
    ports = [tcp_ports(daemon.process.pid) for daemon in cluster.daemons]  # type: ignore[union-attr]
    await cluster.daemons[0].sleep(0.5)  # a duplicate already on its way would have arrived
    for daemon in cluster.daemons:
        assert await daemon.terminate() == 0, daemon.diagnostics()

    deliveries = await stored_deliveries(cluster, firing_ids)
    assert len(deliveries) == DELIVERIES
    assert set(receiver.received) == set(deliveries)
    assert receiver.duplicates() == {}
    assert receiver.dropped == []
    assert all(count == 1 for count in receiver.answered.values())
    for delivery in deliveries.values():
        assert delivery["state"] == "delivered", delivery
        assert [attempt["ok"] for attempt in delivery["attempts"]] == [True], delivery
    # Both took a real share.  (Only connections still open at the end are
    # attributed: those the daemons' pools closed on the way are not counted.)
    shares = posts_per_daemon(receiver, ports)
    assert min(shares) >= DELIVERIES // 10, shares


@pytest_twisted.ensureDeferred
async def test_killed_daemons_deliveries_are_taken_over(cluster: Cluster) -> None:
    """When one of two daemons is killed with kill -9 mid-run, the other makes every delivery, none lost.

    Delivery is at least once: an attempt the killed daemon had in flight (its
    POST sent, or answered but not yet marked done in the ledger) is made again
    by the survivor once its lease expires.  So duplicates are allowed only for
    those, and they are at most ``(1 + SETTLING_FACTOR) * MAX_IN_FLIGHT``:
    the killed daemon's cap on HTTP attempts in flight, plus its cap on
    answered attempts still being recorded.  The POSTs whose connection the kill cut are among them.
    The receiver tells the daemons apart by the client port of each POST.
    """
    await cluster.start(SHORT_LEASE)
    receiver = cluster.receiver
    survivor, victim = cluster.daemons
    victim_ports: set[int] = set()
    kill: dict[str, float] = {}

    def kill_the_victim() -> None:
        assert victim.process is not None
        victim_ports.update(tcp_ports(victim.process.pid))
        victim.kill_now()
        kill.update(at=reactor.seconds(), answered=len(receiver.answered))

    firing_ids = await set_up_and_fire(cluster, KILL_TEST_RECEIVER_DELAY)
    receiver.on_answered(DELIVERIES // 4, kill_the_victim)
    await wait_until(lambda: "at" in kill, 40, "no quarter delivered", cluster)
    assert victim.returncode == -9
    killed_at = kill["at"]
    assert kill["answered"] < DELIVERIES * 3 // 4, "the kill came too late to be mid-run"

    await wait_until(lambda: len(receiver.answered) >= DELIVERIES, 40, "not every delivery arrived", cluster)
    await wait_until_ledger_empty(cluster)
    survivor_ports = tcp_ports(survivor.process.pid)  # type: ignore[union-attr]
    assert await survivor.terminate() == 0, survivor.diagnostics()

    deliveries = await stored_deliveries(cluster, firing_ids)
    assert set(receiver.received) == set(deliveries)  # none lost, none unknown
    assert all(delivery["state"] == "delivered" for delivery in deliveries.values())
    # Sent twice: only what the victim had in flight, each at most twice.
    duplicates = receiver.duplicates()
    assert duplicates, "the victim had no attempt in flight when it was killed"
    assert len(duplicates) <= (1 + SETTLING_FACTOR) * MAX_IN_FLIGHT, duplicates
    assert set(duplicates.values()) == {2}, duplicates
    repeated = {delivery_id for delivery_id, delivery in deliveries.items() if len(delivery["attempts"]) > 1}
    assert repeated <= set(duplicates)  # the store saw a second attempt only for those
    # The attempts whose connection the kill cut were made again and answered...
    assert set(receiver.dropped) <= set(duplicates)
    assert all(receiver.answered[delivery_id] == 1 for delivery_id in receiver.dropped)
    # ... by the survivor, only once the victim's leases had expired.  (The victim's
    # last POSTs may be read after ``killed_at``: the retry is the last POST of each.)
    retried_after = [max(post.at for post in receiver.posts if post.headers["webhook-id"] == delivery_id)
                     - killed_at for delivery_id in duplicates]
    assert min(retried_after) >= SHORT_LEASE - 1, retried_after
    shares = posts_per_daemon(receiver, [survivor_ports, victim_ports])
    assert min(shares) > 0, shares
