"""The real daemon on a real RethinkDB server: --initdb, start-up errors, the
end-to-end flow, and a RethinkDB outage (503s, then recovery by itself).

Skipped, with the reason, when there is no ``rethinkdb`` binary (see
``tests.support.rethinkdb_server``), except the test with no server at all.  Most tests use the server shared by the
test process, each in a database of its own; the outage test stops and
restarts a server of its own.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.support.daemon import ApiClient, Daemon, Reply, verify_delivery
from tests.support.deliveries import receiver  # noqa: F401
from tests.support.receiver import Receiver
from tests.support.processes import free_port
from tests.support.rethinkdb_server import RethinkDBServer, require_rethinkdb, shared_server

EVENT_DATA = {"order": 42, "items": ["a", "b"], "total": 1.5}
ACCOUNTS = "/v1/accounts?start=0&limit=10"
#: Short retries, so that a delivery keeps being retried through an outage.
FAST_RETRIES = ("--retry-delays", ",".join(["1"] * 20), "--request-timeout", "1", "--lease-seconds", "3")


@pytest.fixture
def binary() -> str:
    """The rethinkdb binary; skips the test (with the reason) without one."""
    return require_rethinkdb()


@pytest.fixture
def daemon(binary: str, tmp_path: Path) -> Iterator[Daemon]:
    """A stopped daemon whose ``--database`` is a new, not yet created database
    on the shared RethinkDB server; killed after the test if it still runs."""
    made = Daemon(reactor, tmp_path / "daemon", *FAST_RETRIES)
    made.database = shared_server().url("daemon_" + uuid.uuid4().hex[:12])
    try:
        yield made
    finally:
        made.kill_now()


async def initdb(daemon: Daemon) -> dict[str, str]:
    """Run ``--initdb``; the keys it printed (the only line of its standard output)."""
    code, stdout, stderr = await daemon.run_once("--initdb", timeout=60)
    assert code == 0, stderr + daemon.diagnostics()
    (line,) = stdout.splitlines()
    keys = json.loads(line)
    assert set(keys) == {"api_key", "secret_key"}
    return dict(keys)


def logged(daemon: Daemon, *levels: str) -> list[dict[str, Any]]:
    """The events the daemon logged at one of these levels, or with a traceback."""
    return [event for event in daemon.log_events()
            if event["log_level"].name in levels or "log_failure" in event]


def critical_reasons(daemon: Daemon) -> list[str]:
    """The reasons of the critical events the daemon logged."""
    return [str(event.get("reason", "")) for event in logged(daemon, "critical")]


def assert_unavailable(reply: Reply) -> None:
    """The answer is 503 with a JSON error body."""
    assert reply.status == 503, reply
    assert isinstance(reply.body, dict) and set(reply.body) == {"Error"}, reply
    assert reply.body["Error"]


@pytest_twisted.ensureDeferred
async def test_initdb_creates_the_database_and_prints_the_keys(daemon: Daemon) -> None:
    """--initdb on a RethinkDB URL creates everything, prints the admin keys once, and the daemon then serves."""
    keys = await initdb(daemon)
    assert len(keys["api_key"]) == len(keys["secret_key"]) == 40
    await daemon.start(timeout=30)
    assert daemon.printed_keys() == []  # the admin exists: nothing printed
    reply = await daemon.api().call("GET", ACCOUNTS, account=daemon.admin)
    assert reply.status == 200, reply
    assert [account["username"] for account in reply.body["accounts"]] == ["admin"]
    assert await daemon.terminate() == 0


@pytest_twisted.ensureDeferred
async def test_start_on_a_missing_database_exits_with_a_clear_message(daemon: Daemon) -> None:
    """Starting on a RethinkDB database that was never initialised exits 1 and says to run --initdb."""
    code, _, stderr = await daemon.run_once(timeout=30)
    assert code == 1, stderr
    (reason,) = critical_reasons(daemon)
    assert "is not initialised" in reason
    assert "--initdb --database %s" % (daemon.database,) in reason


@pytest_twisted.ensureDeferred
async def test_start_without_a_server_exits_with_a_clear_message(tmp_path: Path) -> None:
    """Starting with no RethinkDB server listening exits 1 and says the store is unreachable."""
    daemon = Daemon(reactor, tmp_path / "daemon")
    daemon.database = "rethinkdb://127.0.0.1:%d/hooks" % (free_port(),)
    try:
        code, _, stderr = await daemon.run_once(timeout=30)
    finally:
        daemon.kill_now()
    assert code == 1, stderr
    (reason,) = critical_reasons(daemon)
    assert "cannot open the store" in reason and "unreachable" in reason


async def set_up(api: ApiClient, receiver: Receiver) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A publisher with a registration and a subscriber to it (accounts through the echo)."""
    publisher, subscriber, registration = await api.publisher_and_subscriber(
        receiver.url, "order.paid", EVENT_DATA)
    return publisher, subscriber, registration


@pytest_twisted.ensureDeferred
async def test_trigger_delivers_a_signed_post(daemon: Daemon, receiver: Receiver) -> None:  # noqa: F811
    """On RethinkDB, accounts made through the echo, then register, subscribe and trigger give a signed delivery."""
    await initdb(daemon)
    await daemon.start(timeout=30)
    api = daemon.api()
    publisher, subscriber, registration = await set_up(api, receiver)
    echoed = [query for query in receiver.gets if "echo" in query]
    assert len(echoed) == 2
    firing = await api.trigger(publisher, registration["id"])

    (post,) = await receiver.wait_for_posts(1).addTimeout(10, reactor)
    assert post.path == "/subscriber"
    assert post.headers["event"] == "order.paid"
    assert verify_delivery(post.headers, post.body, subscriber["secret_key"]) == EVENT_DATA
    listed = await api.call("GET", "/v1/webhook/triggered?start=0&limit=10", account=publisher)
    assert listed.status == 200, listed
    assert [row["id"] for row in listed.body["triggered_webhooks"]] == [firing["id"]]
    assert await daemon.terminate() == 0
    assert logged(daemon, "error", "critical") == []


@pytest_twisted.async_yield_fixture
async def own_server(binary: str, tmp_path: Path) -> AsyncIterator[RethinkDBServer]:
    """A RethinkDB server of this test only (it will be stopped and started again)."""
    server = RethinkDBServer(tmp_path / "rethinkdb", binary)
    server.start()
    yield server
    server.stop()


async def eventually_answers(api: ApiClient, path: str, account: dict[str, Any], timeout: float) -> Reply:
    """Call ``GET path`` until it answers 200 (503s are expected meanwhile); the 200 reply."""
    deadline = reactor.seconds() + timeout
    while True:
        reply = await api.call("GET", path, account=account)
        if reply.status == 200:
            return reply
        assert_unavailable(reply)
        assert reactor.seconds() < deadline, "still 503 after %ss" % (timeout,)
        await deferLater(reactor, 0.1, lambda: None)


@pytest_twisted.ensureDeferred
async def test_outage_answers_503_then_recovers_and_delivers(
        own_server: RethinkDBServer, receiver: Receiver, tmp_path: Path) -> None:  # noqa: F811
    """While RethinkDB is down the API answers 503 with a JSON error; when it is back the daemon
    serves again by itself, and a firing accepted before the outage is still delivered."""
    daemon = Daemon(reactor, tmp_path / "daemon", *FAST_RETRIES)
    daemon.database = own_server.url("hooks")
    try:
        await initdb(daemon)
        await daemon.start(timeout=30)
        api = daemon.api()
        publisher, subscriber, registration = await set_up(api, receiver)
        receiver.behave("/subscriber", status=500)
        await api.trigger(publisher, registration["id"])
        (first,) = await receiver.wait_for_posts(1).addTimeout(10, reactor)

        own_server.stop()
        own_path = "/v1/account/" + subscriber["id"]
        assert_unavailable(await api.call("GET", own_path, account=subscriber))
        assert_unavailable(await api.call("GET", ACCOUNTS, account=daemon.admin))
        assert_unavailable(await api.call("POST", "/v1/webhook/triggered/" + registration["id"],
                                          None, publisher))
        assert_unavailable(await api.call("POST", "/v1/webhook/registration",
                                          {"event": "e", "description": "d", "event_data": {}}, publisher))
        retried = len(receiver.posts)
        await receiver.wait_for_posts(retried + 1).addTimeout(10, reactor)  # retries go on meanwhile
        assert daemon.running

        own_server.start()
        account = await eventually_answers(api, own_path, subscriber, timeout=20)
        assert account.body["username"] == "subscriber"
        receiver.behave("/subscriber", status=200)
        failed = len(receiver.posts)  # the POSTs from now on are answered 200
        posts = await receiver.wait_for_posts(failed + 1).addTimeout(10, reactor)
        delivered = posts[failed]
        assert delivered.headers["webhook-id"] == first.headers["webhook-id"]
        assert verify_delivery(delivered.headers, delivered.body, subscriber["secret_key"]) == EVENT_DATA
        await daemon.sleep(1.5)  # the next retry would be due by now
        assert len(receiver.posts) == failed + 1
        assert all(post.headers["webhook-id"] == first.headers["webhook-id"] for post in receiver.posts)
        account = await api.call("GET", own_path, account=subscriber)
        assert account.body["failed_count"] == 0  # the success was recorded in the store

        # Only that one firing was accepted: the trigger during the outage left nothing behind.
        listed = await api.call("GET", "/v1/webhook/triggered?start=0&limit=10", account=publisher)
        assert listed.status == 200, listed
        assert len(listed.body["triggered_webhooks"]) == 1
        assert await daemon.terminate() == 0
        assert logged(daemon, "error", "critical") == []  # the outage is only warned about
    finally:
        daemon.kill_now()
