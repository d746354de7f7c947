"""Fault tests with real processes: misbehaving receivers, a full disk, and
a daemon killed in the middle of a burst of triggers."""

from __future__ import annotations

import collections
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from tests.support.cluster_receiver import CountingReceiver
from tests.support.daemon import ApiClient, Daemon, Reply, verify_delivery
from tests.support.deliveries import eventually, sleep
from tests.support.fault_receivers import FaultReceiver
from tests.support.receiver import Receiver

#: A misbehaving receiver costs one request timeout per attempt: keep both short.
FAST_FAILURES = ("--request-timeout", "1", "--retry-delays", "0.2", "--lease-seconds", "3")

#: An API call or a neighbour's delivery that takes longer than this while a
#: receiver misbehaves means the daemon waited for it (below the 1 s timeout,
#: with room for a loaded machine).
RESPONSIVE = 0.9


async def _failed_count(api: ApiClient, account: dict[str, Any]) -> int:
    reply = await api.call("GET", "/v1/account/" + account["id"], account=account)
    assert reply.status == 200, reply
    return int(reply.body["failed_count"])


@pytest.mark.parametrize("mode", ["hang", "huge", "reset"])
@pytest_twisted.ensureDeferred
async def test_a_misbehaving_receiver_neither_blocks_the_daemon_nor_its_neighbours(
        tmp_path: Path, mode: str) -> None:
    """A receiver that hangs, resets the connection or answers a 1 GiB body costs
    only its own delivery: hang and reset are failed attempts (failed_count), a 200
    with a huge body is a success read no further than the cap, the API answers at
    once meanwhile and a healthy subscriber gets its delivery promptly."""
    fault = FaultReceiver(tmp_path / "receiver", mode)
    healthy = Receiver(reactor)
    daemon = Daemon(reactor, tmp_path / "daemon", *FAST_FAILURES)
    await fault.start(reactor)
    await healthy.start()
    try:
        await daemon.start()
        api = daemon.api()
        publisher = await api.create_account("publisher", healthy.url("/publisher"))
        victim = await api.create_account("victim", fault.url("/victim"))
        bystander = await api.create_account("bystander", healthy.url("/bystander"))
        registration = await api.register(publisher, "order.paid", {"order": 42})
        await api.subscribe(victim, registration["id"])
        await api.subscribe(bystander, registration["id"])

        fired_at = reactor.seconds()
        await api.trigger(publisher, registration["id"])
        (delivered,) = await healthy.wait_for_posts(1).addTimeout(5, reactor)
        assert delivered.path == "/bystander"
        assert delivered.at - fired_at < RESPONSIVE
        assert verify_delivery(delivered.headers, delivered.body, bystander["secret_key"]) == {"order": 42}

        (first,) = await fault.wait_for(reactor, "post")
        asked_at = reactor.seconds()
        assert await _failed_count(api, bystander) == 0
        assert reactor.seconds() - asked_at < RESPONSIVE
        if mode == "hang":  # the API answered while the attempt was still waiting
            assert fault.events("closed") == []

        if mode == "huge":
            (closed,) = await fault.wait_for(reactor, "closed")
            # the daemon dropped the connection long before the end of the body
            assert closed["sent"] < 64 * 1024 * 1024
            await daemon.sleep(1.0)  # past the retry delay: a failure would be retried by now
            assert len(fault.events("post")) == 1
            assert await _failed_count(api, victim) == 0
            assert [event for event in daemon.log_events() if event.get("delivery_id") == first["webhook_id"]] == []
        else:
            async def gave_up() -> bool:
                return await _failed_count(api, victim) == 2

            await eventually(gave_up, timeout=10, step=0.05)
            posts = fault.events("post")
            assert [post["webhook_id"] for post in posts] == [first["webhook_id"]] * 2
            failures = [event for event in daemon.log_events() if event.get("delivery_id") == first["webhook_id"]]
            assert [event["attempt"] for event in failures] == [1, 2]
            expected = "timeout after 1s" if mode == "hang" else "connection closed before the response"
            assert {event["error"] for event in failures} == {expected}
            await fault.wait_for(reactor, "closed", 2)  # the daemon let go of both connections
        assert len(healthy.posts) == 1  # the neighbour got exactly its one delivery
        assert await daemon.terminate() == 0
    finally:
        daemon.kill_now()
        fault.stop()
        await healthy.stop()


# -- a full disk ---------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test (skipped when it cannot be mounted)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs to fill up (needs root): " + mounted.stderr.strip())
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(directory: Path) -> Path:
    """A file that takes every free byte of the file system of ``directory``."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as output:
        block = b"\0" * 4096
        try:
            while True:
                output.write(block)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return filler


def _unavailable(reply: Reply) -> bool:
    return reply.status == 503 and isinstance(reply.body, dict) and set(reply.body) == {"Error"}


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_a_503_that_writes_nothing_and_clears_without_a_restart(
        tmp_path: Path, small_disk: Path) -> None:
    """When the database's disk is full, triggers and account creation answer 503
    with a JSON error and record nothing (no firing, no delivery), reads still work,
    and once space is freed the same requests succeed without a restart."""
    receiver = Receiver(reactor)
    await receiver.start()
    daemon = Daemon(reactor, tmp_path / "daemon")
    daemon.database = "sqlite:%s" % (small_disk / "db.sqlite3",)
    try:
        await daemon.start()
        api = daemon.api()
        publisher, subscriber, registration = await api.publisher_and_subscriber(
            receiver.url, "disk.event", {"n": 0})
        trigger_path = "/v1/webhook/triggered/" + registration["id"]
        first = await api.call("POST", trigger_path, {"event_data": {"n": 1}}, publisher)
        assert first.status == 201
        await receiver.wait_for_posts(1).addTimeout(5, reactor)
        await daemon.sleep(0.3)  # its attempt record is written

        filler = _fill(small_disk)
        # a payload big enough to need fresh pages however the WAL is laid out
        big = {"n": 2, "padding": "p" * 200_000}
        refused = await api.call("POST", trigger_path, {"event_data": big}, publisher)
        assert _unavailable(refused), refused
        signup = {"username": "latecomer", "endpoint": receiver.url("/latecomer")}
        refused_signup = await api.call("POST", "/v1/account", signup)
        assert _unavailable(refused_signup), refused_signup
        read = await api.call("GET", "/v1/account/" + subscriber["id"], account=subscriber)
        assert read.status == 200 and read.body["username"] == "subscriber"
        firings = await api.call("GET", "/v1/webhook/triggered?start=0&limit=100", account=publisher)
        assert [firing["id"] for firing in firings.body["triggered_webhooks"]] == [first.body["id"]]
        await daemon.sleep(0.5)
        assert [post.json()["n"] for post in receiver.posts_to("/subscriber")] == [1]

        filler.unlink()
        accepted = await api.call("POST", trigger_path, {"event_data": big}, publisher)
        assert accepted.status == 201, accepted
        latecomer = await api.call("POST", "/v1/account", signup)
        assert latecomer.status == 201, latecomer  # not a 409: nothing was half-written
        posts = await receiver.wait_for_posts(2).addTimeout(5, reactor)
        assert [post.json()["n"] for post in posts if post.path == "/subscriber"] == [1, 2]
        firings = await api.call("GET", "/v1/webhook/triggered?start=0&limit=100", account=publisher)
        assert [firing["id"] for firing in firings.body["triggered_webhooks"]] == [
            first.body["id"], accepted.body["id"]]
        assert await daemon.terminate() == 0
    finally:
        daemon.kill_now()
        await receiver.stop()


# -- kill -9 in the middle of a burst -------------------------------------------

BURST = 1000
CONCURRENCY = 20
KILL_AFTER = 400
MAX_IN_FLIGHT = 50


@pytest_twisted.ensureDeferred
async def test_a_daemon_killed_during_a_burst_delivers_every_accepted_firing(tmp_path: Path) -> None:
    """After kill -9 in the middle of 1,000 triggers (2 subscribers each; the rest
    of the burst goes to the restarted daemon), every accepted firing reaches both
    subscribers with its own payload; no run posts a delivery twice, and the only
    repeats across the kill are attempts unfinished then (at most --max-in-flight).

    Why that bound: an attempt keeps its in-flight slot until its outcome is in
    the store and its ledger entry is gone, so at the kill at most
    ``max_in_flight`` entries were sent without being finished; the restarted
    daemon drops their leases and sends them again (at least once).  Every
    other entry is either finished (never sent again) or was never sent.
    """
    receiver = CountingReceiver(reactor)
    await receiver.start()
    daemon = Daemon(reactor, tmp_path / "daemon", "--max-in-flight", str(MAX_IN_FLIGHT))
    try:
        await daemon.start()
        api = daemon.api()
        publisher = await api.create_account("publisher", receiver.url("/publisher"))
        subscribers = [await api.create_account(name, receiver.url("/" + name)) for name in ("alpha", "beta")]
        registration = await api.register(publisher, "burst.event", {"seq": None})
        for subscriber in subscribers:
            await api.subscribe(subscriber, registration["id"])
        trigger_path = "/v1/webhook/triggered/" + registration["id"]
        # a request cut off by the kill may wait for its timeout: keep it short
        burst_api = ApiClient(reactor, daemon.url(""), timeout=2)

        accepted: dict[int, str] = {}
        sequence = iter(range(BURST))

        async def fire() -> None:
            for seq in sequence:
                if not daemon.running:
                    return  # the rest of the burst would only be refused
                try:
                    reply = await burst_api.call("POST", trigger_path, {"event_data": {"seq": seq}}, publisher)
                except Exception:
                    continue  # refused or cut off by the kill: not accepted
                if reply.status == 201:
                    accepted[seq] = reply.body["id"]
                    if len(accepted) == KILL_AFTER and daemon.starts == 1:
                        daemon.kill_now()

        await gatherResults([Deferred.fromCoroutine(fire()) for _ in range(CONCURRENCY)])
        assert daemon.returncode == -9, "the burst ended before the kill"
        assert KILL_AFTER <= len(accepted) < BURST
        await daemon.sleep(0.3)  # what the killed daemon had sent is read by now
        restarted_at = reactor.seconds()
        await daemon.start()
        # the rest of the burst goes to the restarted daemon while it redelivers
        await gatherResults([Deferred.fromCoroutine(fire()) for _ in range(CONCURRENCY)])
        # missing: at most the requests cut off by the kill and one skipped per worker
        assert len(accepted) >= BURST - 2 * CONCURRENCY

        def delivered() -> dict[tuple[str, int], set[str]]:
            found: dict[tuple[str, int], set[str]] = collections.defaultdict(set)
            for post in receiver.posts:
                found[(post.path, post.json()["seq"])].add(post.headers["webhook-id"])
            return found

        expected = {("/" + name, seq) for name in ("alpha", "beta") for seq in accepted}

        async def all_delivered() -> bool:
            return expected <= set(delivered())

        await eventually(all_delivered, timeout=30, step=0.05)
        await _quiet(receiver, 0.5)

        # each delivery id stands for one (subscriber, payload), and each of those has one id
        ids = delivered()
        assert all(len(webhook_ids) == 1 for webhook_ids in ids.values()), "a payload delivered under two ids"
        bodies: dict[str, set[tuple[str, bytes]]] = collections.defaultdict(set)
        for post in receiver.posts:
            bodies[post.headers["webhook-id"]].add((post.path, post.body))
        assert all(len(seen) == 1 for seen in bodies.values())
        sample = next(post for post in receiver.posts if post.path == "/alpha")
        assert verify_delivery(sample.headers, sample.body, subscribers[0]["secret_key"]) == sample.json()

        # no run sent a delivery twice; repeats straddle the kill and are bounded
        before = collections.Counter(post.headers["webhook-id"] for post in receiver.posts if post.at < restarted_at)
        after = collections.Counter(post.headers["webhook-id"] for post in receiver.posts if post.at >= restarted_at)
        assert max(before.values()) == 1 and max(after.values(), default=1) == 1
        repeated = set(before) & set(after)
        assert len(repeated) <= MAX_IN_FLIGHT, len(repeated)
        assert set(receiver.dropped) <= repeated  # an attempt cut off by the kill is made again

        # every firing the store recorded was delivered (accepted or cut off before its 201)
        recorded = await _all_firings(api, publisher)
        assert set(accepted.values()) <= recorded
        for name in ("alpha", "beta"):
            assert len({seq for path, seq in ids if path == "/" + name}) >= len(recorded)
        assert await daemon.terminate() == 0
    finally:
        daemon.kill_now()
        await receiver.stop()


async def _quiet(receiver: Receiver, seconds: float) -> None:
    """Wait until ``receiver`` got no POST for ``seconds``."""
    count = -1
    while count != len(receiver.posts):
        count = len(receiver.posts)
        await sleep(seconds)


async def _all_firings(api: ApiClient, account: dict[str, Any]) -> set[str]:
    """The ids of every firing the daemon lists."""
    found: set[str] = set()
    start = 0
    while True:
        reply = await api.call("GET", "/v1/webhook/triggered?start=%d&limit=100" % (start,), account=account)
        if reply.status == 204:
            return found
        found.update(firing["id"] for firing in reply.body["triggered_webhooks"])
        if "next_start" not in reply.body:
            return found
        start = reply.body["next_start"]
