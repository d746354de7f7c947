"""The outbound target policy, seen from the daemon's API and its deliveries."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from tests.support.daemon import Daemon
from tests.support.receiver import Receiver


async def _receiver() -> Receiver:
    receiver = Receiver(reactor)
    await receiver.start()
    return receiver


@pytest_twisted.ensureDeferred
async def test_a_private_endpoint_is_refused_when_private_targets_are_denied(tmp_path: Path) -> None:
    """With --deny-targets private, creating an account on a loopback endpoint is a
    400 naming the reason, and the endpoint never hears from the daemon."""
    receiver = await _receiver()
    daemon = Daemon(reactor, tmp_path / "d", "--deny-targets", "private")
    try:
        await daemon.start()
        reply = await daemon.api().call(
            "POST", "/v1/account", {"username": "mallory", "endpoint": receiver.url()}
        )
        assert reply.status == 400
        assert reply.body["Error"].startswith("Endpoint not allowed: target 127.0.0.1 is not allowed")
        assert receiver.gets == []
        listed = await daemon.api().call("GET", "/v1/accounts?start=0&limit=10", account=daemon.admin)
        assert [account["username"] for account in listed.body["accounts"]] == ["admin"]
    finally:
        await daemon.terminate()
        await receiver.stop()


@pytest_twisted.ensureDeferred
async def test_an_allowed_network_overrides_the_deny_list(tmp_path: Path) -> None:
    """--allow-targets 127.0.0.1/32 lets loopback through a 'private' deny list."""
    receiver = await _receiver()
    daemon = Daemon(reactor, tmp_path / "d", "--deny-targets", "private", "--allow-targets", "127.0.0.1/32")
    try:
        await daemon.start()
        account = await daemon.api().create_account("alice", receiver.url())
        assert account["username"] == "alice"
        assert "echo" in receiver.gets[0]
    finally:
        await daemon.terminate()
        await receiver.stop()


@pytest_twisted.ensureDeferred
async def test_a_delivery_to_a_newly_denied_target_is_a_failed_attempt(tmp_path: Path) -> None:
    """When the policy changes after an account was created, its deliveries are
    refused at connect time: failed attempts that raise its failed_count, and the
    receiver gets no POST."""
    receiver = await _receiver()
    daemon = Daemon(reactor, tmp_path / "d", "--retry-delays", "0.2,0.2,0.2")
    try:
        await daemon.start()
        api = daemon.api()
        owner, subscriber, registration = await api.publisher_and_subscriber(
            receiver.url, "refused.event", {"n": 1}, publisher="owner")
        await daemon.terminate()
        daemon.options += ["--deny-targets", "127.0.0.0/8"]
        await daemon.start()
        await api.trigger(owner, registration["id"])
        for _ in range(100):
            reply = await api.call("GET", "/v1/account/" + subscriber["id"], account=subscriber)
            if reply.body["failed_count"] == 4:
                break
            await daemon.sleep(0.1)
        assert reply.body["failed_count"] == 4
        assert receiver.posts == []
        assert "is not allowed" in daemon.log_text()
    finally:
        await daemon.terminate()
        await receiver.stop()
