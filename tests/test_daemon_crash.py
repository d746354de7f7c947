"""A daemon killed with SIGKILL while a retry is pending delivers it after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.daemon import Daemon, verify_delivery
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer

FAST_RETRIES = ("--retry-delays", "1,1,1", "--request-timeout", "1", "--lease-seconds", "2")


@pytest.mark.parametrize("ledger", ["embedded", "redis"])
@pytest_twisted.ensureDeferred
async def test_pending_retry_survives_kill_9_and_restart(tmp_path: Path, ledger: str) -> None:
    """After kill -9 with a retry pending, the restarted daemon delivers it with the same webhook-id."""
    options = list(FAST_RETRIES)
    redis = None
    if ledger == "redis":
        redis = RedisServer(tmp_path / "redis")
        redis.start()
        options += ["--redis", redis.url]
    daemon = Daemon(reactor, tmp_path / "daemon", *options)
    receiver = Receiver(reactor)
    await receiver.start()
    try:
        receiver.behave("/subscriber", status=500)
        await daemon.start()
        api = daemon.api()
        publisher, subscriber, registration = await api.publisher_and_subscriber(
            receiver.url, "order.paid", {"order": 42})
        await api.trigger(publisher, registration["id"])

        (first,) = await receiver.wait_for_posts(1).addTimeout(10, reactor)
        failed = await _failed_attempt_logged(daemon)
        assert failed["delivery_id"] == first.headers["webhook-id"] and failed["attempt"] == 1
        await daemon.sleep(0.1)  # the retry is being written to the ledger, due in 1 s
        assert await daemon.kill() == -9
        assert len(receiver.posts) == 1
        receiver.behave("/subscriber", status=200)

        await daemon.start()
        posts = await receiver.wait_for_posts(2).addTimeout(10, reactor)
        second = posts[1]
        assert second.headers["webhook-id"] == first.headers["webhook-id"]
        assert second.body == first.body
        assert verify_delivery(second.headers, second.body, subscriber["secret_key"]) == {"order": 42}

        await daemon.sleep(1.3)  # a duplicate retry would be due by now
        assert len(receiver.posts) == 2
        account = await api.call("GET", "/v1/account/" + subscriber["id"], account=subscriber)
        assert account.body["failed_count"] == 0
        assert await daemon.terminate() == 0
    finally:
        daemon.kill_now()
        await receiver.stop()
        if redis is not None:
            redis.stop()


async def _failed_attempt_logged(daemon: Daemon, timeout: float = 5.0) -> dict[str, Any]:
    """The log event of the first failed attempt, once the daemon has logged it."""
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        for event in daemon.log_events():
            if "failed" in event.get("log_format", "") and "delivery_id" in event:
                return event
        await daemon.sleep(0.02)
    raise AssertionError("no failed attempt in the log\n" + daemon.diagnostics())
