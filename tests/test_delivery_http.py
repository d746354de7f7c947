"""Deliveries for real: treq on the running reactor, receivers on 127.0.0.1,
the store and the ledger in one SQLite file (the default set-up).

Timings are short (0.5 s request timeout, retries 0.2 s apart) so that the
whole file runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import ipaddress
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from standardwebhooks import Webhook
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from pywebhooks.delivery.signing import delivery_body
from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.ledger.sqlite import SQLiteLedger
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
    stopped_afterwards,
    within,
)
from tests.support.receiver import Receiver
from tests.support.processes import free_port
from tests.support.stores import sqlite_database, store_and_ledger

pytestmark = pytest.mark.usefixtures("logged_errors")


reactor = running_reactor


# -- servers that misbehave ----------------------------------------------------


class _Silent(Protocol):
    """Accepts a connection, reads the request, never answers."""

    def dataReceived(self, data: bytes) -> None:
        pass


class _Redirect(Resource):
    isLeaf = True

    def __init__(self, location: str) -> None:
        super().__init__()
        self._location = location.encode()

    def render_POST(self, request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", self._location)
        return b""


class _CookieSetter(Resource):
    """Answers 200 with a Set-Cookie; notes every Cookie header it is sent."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[str] = []
        self.cookies_sent: list[bytes] = []

    def render_POST(self, request: Request) -> bytes:
        self.posts.append(request.path.decode())
        self.cookies_sent.extend(request.requestHeaders.getRawHeaders(b"cookie", []))
        request.setHeader(b"set-cookie", b"session=%s; Path=/" % (request.path,))
        return b"{}"


class _Counting(Resource):
    """Answers 200 after ``delay``; counts concurrent requests."""

    isLeaf = True

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.active = 0
        self.most_active = 0
        self.served = 0

    def render_POST(self, request: Request) -> Any:
        self.active += 1
        self.most_active = max(self.most_active, self.active)

        def answer() -> None:
            self.active -= 1
            self.served += 1
            request.finish()

        reactor().callLater(self.delay, answer)
        return NOT_DONE_YET


class _CountingSite(Site):
    """A Site that counts the TCP connections it accepted."""

    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


def _self_signed_tls() -> ssl.ContextFactory:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )

    class SelfSigned(ssl.ContextFactory):
        def getContext(self) -> SSL.Context:
            context = SSL.Context(SSL.TLS_METHOD)
            context.use_certificate(certificate)
            context.use_privatekey(key)
            return context

    return SelfSigned()


# -- fixtures ---------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def storage(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteLedger]]:
    """A SQLite store and the ledger in the same file."""
    async with opened_sqlite(tmp_path / "pywebhooks.sqlite3") as opened:
        yield opened


@pytest_twisted.async_yield_fixture
async def servers() -> AsyncIterator[list[IListeningPort]]:
    """Extra servers a test starts; stopped afterwards."""
    async with stopped_afterwards(lambda port: port.stopListening()) as ports:
        yield ports


async def listen(servers: list[IListeningPort], factory: Any, tls: Any = None) -> str:
    """Serve ``factory`` on a free loopback port; its base URL."""
    if tls is None:
        port = await TCP4ServerEndpoint(reactor(), 0, interface="127.0.0.1").listen(factory)
    else:
        port = await SSL4ServerEndpoint(reactor(), 0, tls, interface="127.0.0.1").listen(factory)
    servers.append(port)
    return "%s://127.0.0.1:%d" % ("https" if tls else "http", port.getHost().port)


@contextlib.asynccontextmanager
async def opened_sqlite(path: Path, create: bool = True) -> AsyncIterator[tuple[SQLiteStore, SQLiteLedger]]:
    """A store and a ledger on their own connection to the file at ``path``."""
    async with store_and_ledger(sqlite_database(path), create=create) as opened:
        yield opened


async def deliveries_by_endpoint(store: Any, firing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The firing's delivery records, by endpoint."""
    return {delivery["endpoint"]: delivery for delivery in await store.get_deliveries(firing["id"])}


def settled(store: Any, firing: dict[str, Any], count: int) -> Any:
    """A check: ``count`` deliveries of ``firing`` have left the pending state."""
    async def check() -> Any:
        deliveries = await deliveries_by_endpoint(store, firing)
        done = [d for d in deliveries.values() if d["state"] != "pending"]
        return deliveries if len(done) >= count else None

    return check


# -- tests --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_both_signatures_verify_at_the_receiver(
        storage: Any, receiver: Receiver, daemons: list[DeliveryNode]) -> None:
    """Each subscriber's receiver verifies both signatures with its own secret key."""
    store, ledger = storage
    world = await World.create(store, reactor())
    alice = await world.subscribe(receiver.url("/alice"))
    bob = await world.subscribe(receiver.url("/bob"))
    daemon = DeliveryNode(store, ledger).start()
    daemons.append(daemon)
    firing = await fired(daemon, world)
    await within(receiver.wait_for_posts(2), 5.0)
    deliveries = await eventually(settled(store, firing, 2))
    expected_body = delivery_body(world.registration["event_data"]).encode()
    for subscriber, path in ((alice, "/alice"), (bob, "/bob")):
        [post] = receiver.posts_to(path)
        secret = subscriber["secret_key"]
        assert post.body == expected_body
        assert post.headers["event"] == "push"
        assert post.headers["webhook-id"] == deliveries[receiver.url(path)]["id"]
        assert abs(int(post.headers["webhook-timestamp"]) - time.time()) < 60
        assert Webhook(secret.encode()).verify(post.body, post.headers) == world.registration["event_data"]
        raw = hmac.new(secret.encode(), post.body, hashlib.sha1).hexdigest()
        reserialised = hmac.new(secret.encode(), json.dumps(json.loads(post.body)).encode(), hashlib.sha1)
        assert post.headers["pywebhooks-signature"] == raw == reserialised.hexdigest()
        assert deliveries[receiver.url(path)]["state"] == "delivered"
    assert await ledger.count() == 0


@pytest_twisted.ensureDeferred
async def test_failing_and_hanging_receivers_do_not_slow_healthy_ones(
        storage: Any, receiver: Receiver, servers: list[IListeningPort], daemons: list[DeliveryNode]) -> None:
    """A 500 and a receiver that never answers fail on their own; healthy receivers get theirs at once."""
    store, ledger = storage
    world = await World.create(store, reactor())
    silent = await listen(servers, Factory.forProtocol(_Silent))
    receiver.behave("/broken", status=500)
    await world.subscribe(silent + "/silent")
    await world.subscribe(receiver.url("/broken"))
    for index in range(5):
        await world.subscribe(receiver.url("/ok%d" % (index,)))
    daemon = DeliveryNode(store, ledger, retry_delays=(30.0,)).start()
    daemons.append(daemon)
    started = time.monotonic()
    firing = await fired(daemon, world)
    await within(receiver.wait_for_posts(6), 5.0)
    assert time.monotonic() - started < 0.4  # well under the 0.5 s request timeout
    deliveries = await eventually(settled(store, firing, 5))
    assert all(deliveries[receiver.url("/ok%d" % (i,))]["state"] == "delivered" for i in range(5))
    [broken] = deliveries[receiver.url("/broken")]["attempts"]
    assert (broken["ok"], broken["status_code"], broken["error"]) == (False, 500, None)
    deliveries = await eventually(
        lambda: _attempted(store, firing, silent + "/silent"), timeout=2.0)
    [hung] = deliveries["attempts"]
    assert (hung["ok"], hung["status_code"]) == (False, None)
    assert "timeout" in hung["error"]
    assert 0.45 <= hung["duration"] < 1.0
    assert deliveries["state"] == "pending"  # a retry is due in 30 s


async def _attempted(store: Any, firing: dict[str, Any], endpoint: str) -> Any:
    delivery = (await deliveries_by_endpoint(store, firing))[endpoint]
    return delivery if delivery["attempts"] else None


@pytest_twisted.ensureDeferred
async def test_failures_are_retried_then_given_up(
        storage: Any, receiver: Receiver, daemons: list[DeliveryNode]) -> None:
    """A receiver answering 500 gets 4 attempts with the retry delays between them, then none."""
    store, ledger = storage
    world = await World.create(store, reactor())
    subscriber = await world.subscribe(receiver.url("/down"))
    receiver.behave("/down", status=500)
    daemon = DeliveryNode(store, ledger).start()
    daemons.append(daemon)
    firing = await fired(daemon, world)
    deliveries = await eventually(settled(store, firing, 1))
    delivery = deliveries[receiver.url("/down")]
    assert delivery["state"] == "failed"
    assert [a["attempt"] for a in delivery["attempts"]] == [1, 2, 3, 4]
    gaps = [b["at"] - a["at"] for a, b in zip(delivery["attempts"], delivery["attempts"][1:])]
    assert all(0.19 <= gap < 0.5 for gap in gaps), gaps
    assert len({post.headers["webhook-id"] for post in receiver.posts_to("/down")}) == 1
    assert await world.failed_count(subscriber) == 4
    assert await ledger.count() == 0
    await sleep(0.4)
    assert len(receiver.posts_to("/down")) == 4


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_a_failure_and_is_not_followed(
        storage: Any, receiver: Receiver, servers: list[IListeningPort], daemons: list[DeliveryNode]) -> None:
    """A 302 counts as a failed attempt and the Location is never requested."""
    store, ledger = storage
    world = await World.create(store, reactor())
    redirecting = await listen(servers, Site(_Redirect(receiver.url("/elsewhere"))))
    subscriber = await world.subscribe(redirecting + "/hook")
    daemon = DeliveryNode(store, ledger, retry_delays=(30.0,)).start()
    daemons.append(daemon)
    firing = await fired(daemon, world)
    delivery = await eventually(lambda: _attempted(store, firing, redirecting + "/hook"))
    [attempt] = delivery["attempts"]
    assert (attempt["ok"], attempt["status_code"]) == (False, 302)
    assert await world.failed_count(subscriber) == 1
    await sleep(0.1)
    assert receiver.posts == []


@pytest_twisted.ensureDeferred
async def test_a_cookie_set_by_a_receiver_is_never_sent_back(
        storage: Any, servers: list[IListeningPort], daemons: list[DeliveryNode]) -> None:
    """Deliveries keep no cookies: a Set-Cookie from one subscriber's endpoint
    never reaches it or another subscriber's endpoint on the same host."""
    store, ledger = storage
    world = await World.create(store, reactor())
    setter = _CookieSetter()
    base = await listen(servers, Site(setter))
    await world.subscribe(base + "/alice")
    await world.subscribe(base + "/bob")
    daemon = DeliveryNode(store, ledger).start()
    daemons.append(daemon)
    for round_number in (1, 2, 3):
        firing = await fired(daemon, world)
        await eventually(settled(store, firing, 2))
        assert len(setter.posts) == 2 * round_number
    assert sorted(setter.posts) == ["/alice"] * 3 + ["/bob"] * 3
    assert setter.cookies_sent == []


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_a_failure(storage: Any, daemons: list[DeliveryNode]) -> None:
    """Nothing listening at the endpoint is a failed attempt, counted on the subscriber."""
    store, ledger = storage
    world = await World.create(store, reactor())
    endpoint = "http://127.0.0.1:%d/hook" % (free_port(),)
    subscriber = await world.subscribe(endpoint)
    daemon = DeliveryNode(store, ledger, retry_delays=(30.0,)).start()
    daemons.append(daemon)
    firing = await fired(daemon, world)
    delivery = await eventually(lambda: _attempted(store, firing, endpoint))
    [attempt] = delivery["attempts"]
    assert (attempt["ok"], attempt["status_code"], attempt["error"]) == (False, None, "connection refused")
    assert await world.failed_count(subscriber) == 1


@pytest_twisted.ensureDeferred
async def test_tls_certificates_are_verified(
        storage: Any, servers: list[IListeningPort], daemons: list[DeliveryNode]) -> None:
    """An https endpoint with a certificate no authority signed is a failed attempt."""
    store, ledger = storage
    world = await World.create(store, reactor())
    counting = _Counting(0.0)
    endpoint = await listen(servers, Site(counting), tls=_self_signed_tls()) + "/hook"
    await world.subscribe(endpoint)
    daemon = DeliveryNode(store, ledger, retry_delays=(30.0,)).start()
    daemons.append(daemon)
    firing = await fired(daemon, world)
    delivery = await eventually(lambda: _attempted(store, firing, endpoint))
    [attempt] = delivery["attempts"]
    assert (attempt["ok"], attempt["status_code"]) == (False, None)
    assert attempt["error"].startswith("TLS error")
    assert counting.served == 0


@pytest_twisted.ensureDeferred
async def test_muted_subscribers_get_nothing_until_reset(
        storage: Any, receiver: Receiver, daemons: list[DeliveryNode]) -> None:
    """At max_failed_count a subscriber is skipped; once its count is reset it gets deliveries again."""
    store, ledger = storage
    world = await World.create(store, reactor())
    muted = await world.subscribe(receiver.url("/muted"), failed_count=250)
    await world.subscribe(receiver.url("/almost"), failed_count=249)
    daemon = DeliveryNode(store, ledger).start()
    daemons.append(daemon)
    firing = await fired(daemon, world)
    await within(receiver.wait_for_posts(1), 5.0)
    assert list(await deliveries_by_endpoint(store, firing)) == [receiver.url("/almost")]
    await store.update_account(muted["id"], {"failed_count": 0})  # what an endpoint change does
    await fired(daemon, world)
    await within(receiver.wait_for_posts(3), 5.0)
    assert sorted(post.path for post in receiver.posts) == ["/almost", "/almost", "/muted"]


@pytest_twisted.ensureDeferred
async def test_fan_out_is_capped_and_reuses_connections(
        storage: Any, servers: list[IListeningPort], daemons: list[DeliveryNode]) -> None:
    """At most max_in_flight requests run at once, and their connections are kept for the next firing."""
    store, ledger = storage
    world = await World.create(store, reactor())
    counting = _Counting(0.05)
    site = _CountingSite(counting)
    base = await listen(servers, site)
    for index in range(40):
        await world.subscribe(base + "/hook%d" % (index,))
    daemon = DeliveryNode(store, ledger, max_in_flight=8).start()
    daemons.append(daemon)
    await fired(daemon, world)
    await eventually(lambda: _succeed(counting.served == 40))
    assert counting.most_active == 8
    await fired(daemon, world)
    await eventually(lambda: _succeed(counting.served == 80))
    assert site.connections == 8


async def _succeed(value: Any) -> Any:
    return value


@pytest_twisted.ensureDeferred
async def test_shutdown_waits_for_quick_attempts(
        storage: Any, receiver: Receiver, daemons: list[DeliveryNode]) -> None:
    """Stopping lets an attempt finish within the grace period and records it."""
    store, ledger = storage
    world = await World.create(store, reactor())
    await world.subscribe(receiver.url("/slow"))
    receiver.behave("/slow", delay=0.3)
    daemon = DeliveryNode(store, ledger, shutdown_grace=2.0).start()
    firing = await fired(daemon, world)
    await within(receiver.wait_for_posts(1), 5.0)
    started = time.monotonic()
    await daemon.stop()
    assert time.monotonic() - started < 1.0
    [delivery] = await store.get_deliveries(firing["id"])
    assert delivery["state"] == "delivered"
    assert await ledger.count() == 0


@pytest_twisted.ensureDeferred
async def test_shutdown_leaves_slow_attempts_pending(storage: Any, receiver: Receiver) -> None:
    """Stopping gives up on attempts after the grace period; they stay in the ledger, due at once."""
    store, ledger = storage
    world = await World.create(store, reactor())
    await world.subscribe(receiver.url("/slow"))
    receiver.behave("/slow", delay=3.0)
    daemon = DeliveryNode(store, ledger, request_timeout=10.0, shutdown_grace=0.3).start()
    firing = await fired(daemon, world)
    await within(receiver.wait_for_posts(1), 5.0)
    started = time.monotonic()
    await daemon.stop()
    assert time.monotonic() - started < 1.0
    [delivery] = await store.get_deliveries(firing["id"])
    assert (delivery["state"], delivery["attempts"]) == ("pending", [])
    [entry] = await ledger.claim(reactor().seconds(), 10, 60)
    assert entry.id == delivery["id"]


@pytest_twisted.ensureDeferred
async def test_a_restart_delivers_everything_left_pending(tmp_path: Path, receiver: Receiver) -> None:
    """After a crash, a restarted daemon sends overdue deliveries at once and retries on time, same ids."""
    path = tmp_path / "pywebhooks.sqlite3"
    async with opened_sqlite(path) as (store, ledger):
        world = await World.create(store, reactor())
        for index in range(3):
            await world.subscribe(receiver.url("/hook%d" % (index,)))
        dead = DeadDeliverer()
        crashed = DeliveryNode(store, ledger, deliverer=dead).start()
        firing = await fired(crashed, world)
        assert len(dead.started) == 3
        crashed.kill()
        retry = PendingDelivery(**{**dead.started[0].__dict__, "id": "retry-id", "attempt": 1,
                                   "due": reactor().seconds() + 0.6, "endpoint": receiver.url("/retry")})
        await ledger.add([retry])

        # a new process: its own connection to the same file
        async with opened_sqlite(path, create=False) as (store_again, ledger_again):
            restarted = DeliveryNode(store_again, ledger_again).start()
            try:
                started = reactor().seconds()
                await within(receiver.wait_for_posts(3), 2.0)
                assert reactor().seconds() - started < 0.5
                deliveries = await store_again.get_deliveries(firing["id"])
                sent = {post.headers["webhook-id"] for post in receiver.posts}
                assert sent == {d["id"] for d in deliveries}
                await within(receiver.wait_for_posts(4), 2.0)
                assert receiver.posts[3].path == "/retry"
                assert receiver.posts[3].at >= retry.due
                assert receiver.posts[3].headers["webhook-id"] == "retry-id"
                await eventually(lambda: _succeed(restarted.scheduler.attempts_made == 4))
            finally:
                await restarted.stop()
        await crashed.pool.closeCachedConnections()
