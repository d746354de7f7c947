"""The real ``twist pywebhooks`` process: admin keys, --initdb, SIGTERM, fatal start-up errors."""

from __future__ import annotations

import json
import signal
import socket

import pytest_twisted
from twisted.internet import reactor

from tests.support.daemon import Daemon, daemon  # noqa: F401
from tests.support.receiver import Receiver

ACCOUNTS = "/v1/accounts?start=0&limit=10"


@pytest_twisted.ensureDeferred
async def test_first_start_prints_admin_keys_once_and_sigterm_exits_zero(daemon: Daemon) -> None:  # noqa: F811
    """The first start prints the admin keys as one JSON line, a restart prints none, SIGTERM exits 0."""
    await daemon.start()
    assert len(daemon.printed_keys()) == 1
    assert daemon.stdout().strip() == json.dumps(
        {"api_key": daemon.admin["api_key"], "secret_key": daemon.admin["secret_key"]}, sort_keys=True)
    api = daemon.api()
    assert (await api.call("GET", ACCOUNTS, account=daemon.admin)).status == 200
    assert await daemon.terminate() == 0
    assert any(event.get("log_format") == "PyWebhooks stopped" for event in daemon.log_events())

    await daemon.start()
    assert daemon.stdout() == ""
    reply = await api.call("GET", ACCOUNTS, account=daemon.admin)
    assert reply.status == 200
    assert [account["username"] for account in reply.body["accounts"]] == ["admin"]
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)  # an impatient operator: twice
    await daemon.sleep(0.01)
    daemon.process.send_signal(signal.SIGTERM)  # (by now it has stopped, or is about to)
    assert await daemon.terminate() == 0
    errors = [event for event in daemon.log_events() if event["log_level"].name in ("error", "critical")]
    assert errors == []


@pytest_twisted.ensureDeferred
async def test_initdb_prints_one_json_line_and_replaces_the_admin(daemon: Daemon) -> None:  # noqa: F811
    """--initdb prints exactly one JSON line of new keys, exits 0, and the old admin key stops working."""
    await daemon.start()
    old_admin = daemon.admin
    assert await daemon.terminate() == 0

    code, stdout, stderr = await daemon.run_once("--initdb")
    assert code == 0, stderr
    (line,) = stdout.splitlines()
    keys = json.loads(line)
    assert set(keys) == {"api_key", "secret_key"}
    assert len(keys["api_key"]) == len(keys["secret_key"]) == 40
    assert keys["api_key"] != old_admin["api_key"]

    await daemon.start()
    assert daemon.stdout() == ""
    api = daemon.api()
    assert (await api.call("GET", ACCOUNTS, account=old_admin)).status == 401
    assert (await api.call("GET", ACCOUNTS, account=daemon.admin)).status == 200
    assert await daemon.terminate() == 0


@pytest_twisted.ensureDeferred
async def test_initdb_without_log_file_keeps_stdout_to_the_keys(daemon: Daemon) -> None:  # noqa: F811
    """With twist's default log destination, --initdb still writes only the keys line on stdout."""
    daemon.twist_options = []
    code, stdout, stderr = await daemon.run_once("--initdb")
    assert code == 0, stderr
    (line,) = stdout.splitlines()
    assert set(json.loads(line)) == {"api_key", "secret_key"}
    assert "Main loop terminated" in stderr


@pytest_twisted.ensureDeferred
async def test_port_in_use_is_a_fatal_error_with_non_zero_exit(daemon: Daemon) -> None:  # noqa: F811
    """When the port is taken the daemon logs why and exits with status 1 instead of running deaf."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", daemon.port))
        taken.listen()
        code, _, stderr = await daemon.run_once()
    assert code == 1, stderr
    critical = [event for event in daemon.log_events() if event["log_level"].name == "critical"]
    assert len(critical) == 1
    assert "cannot listen on tcp:%d" % (daemon.port,) in critical[0]["reason"]



@pytest_twisted.ensureDeferred
async def test_sigterm_waits_for_the_delivery_in_flight(daemon: Daemon) -> None:  # noqa: F811
    """SIGTERM (even twice) lets a delivery in flight finish before exiting 0; it is not sent again."""
    receiver = Receiver(reactor)
    await receiver.start()
    try:
        receiver.behave("/subscriber", status=200, delay=0.5)
        daemon.options += ["--shutdown-grace", "5"]
        await daemon.start()
        api = daemon.api()
        publisher, subscriber, registration = await api.publisher_and_subscriber(
            receiver.url, "slow.event", {"slow": True})
        await api.trigger(publisher, registration["id"])
        await receiver.wait_for_posts(1).addTimeout(10, reactor)

        assert daemon.process is not None
        asked = reactor.seconds()
        daemon.process.send_signal(signal.SIGTERM)
        await daemon.sleep(0.1)
        daemon.process.send_signal(signal.SIGTERM)
        assert await daemon.terminate() == 0
        assert reactor.seconds() - asked >= 0.35  # it waited for the receiver's answer
        errors = [event for event in daemon.log_events() if event["log_level"].name in ("error", "critical")]
        assert errors == []

        await daemon.start()
        await daemon.sleep(0.5)
        assert len(receiver.posts) == 1
        assert await daemon.terminate() == 0
    finally:
        daemon.kill_now()
        await receiver.stop()
