"""Unit tests of the API's helpers: the reset rate limiter (on a Clock),
the account builders, and the shield that lets a request outlive its client."""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger

from pywebhooks.accounts import create_admin, new_account, public_view
from pywebhooks.api.base import shielded
from pywebhooks.errors import DuplicateUsername
from pywebhooks.keys import verify_api_key
from pywebhooks.ratelimit import RateLimiter
from pywebhooks.store.memory import MemoryStore

HEX40 = re.compile(r"[0-9a-f]{40}")


def test_limiter_allows_limit_attempts_per_window_then_says_how_long_to_wait() -> None:
    """Three attempts pass; the fourth is refused with the seconds until the oldest expires."""
    clock = Clock()
    limiter = RateLimiter(clock, limit=3, window=3600)
    assert [limiter.attempt("a") for _ in range(3)] == [None, None, None]
    clock.advance(100)
    assert limiter.attempt("a") == 3500
    assert limiter.attempt("b") is None
    clock.advance(3499.5)
    assert limiter.attempt("a") == 1
    clock.advance(0.5)
    assert [limiter.attempt("a") for _ in range(4)] == [None, None, None, 3600]
    assert clock.getDelayedCalls() == []


def test_limiter_does_not_count_refused_attempts() -> None:
    """Hammering while refused does not push the window out."""
    clock = Clock()
    limiter = RateLimiter(clock, limit=1, window=10)
    assert limiter.attempt("a") is None
    for _ in range(5):
        clock.advance(1)
        assert limiter.attempt("a") is not None
    clock.advance(5)
    assert limiter.attempt("a") is None


def test_limiter_forgets_idle_keys() -> None:
    """Keys whose attempts have all expired are swept once many keys are tracked."""
    clock = Clock()
    limiter = RateLimiter(clock, limit=1, window=10)
    for n in range(RateLimiter.SWEEP_AT):
        limiter.attempt("k%d" % n)
    clock.advance(11)
    limiter.attempt("fresh")
    assert len(limiter._hits) == 1


def test_limiter_rejects_nonsense_settings() -> None:
    """A limit below 1 or a non-positive window is a ValueError."""
    with pytest.raises(ValueError):
        RateLimiter(Clock(), 0, 10)
    with pytest.raises(ValueError):
        RateLimiter(Clock(), 1, 0)


def test_new_account_hashes_the_api_key_and_stamps_the_clock() -> None:
    """A new account has a hashed api key, a 40-hex secret, failed_count 0 and
    the clock's time; the plaintext key is returned separately."""
    clock = Clock()
    clock.advance(42.5)
    record, api_key = new_account("john", "http://127.0.0.1/", clock)
    assert HEX40.fullmatch(api_key) and HEX40.fullmatch(record["secret_key"])
    assert verify_api_key(record["api_key"], api_key) and record["api_key"] != api_key
    assert (record["epoch"], record["failed_count"], record["is_admin"]) == (42.5, 0, False)
    assert public_view(record) == {
        key: value for key, value in record.items() if key not in ("api_key", "secret_key")
    }


@pytest_twisted.ensureDeferred
async def test_create_admin_stores_an_admin_and_returns_its_keys_once() -> None:
    """create_admin inserts an is_admin account named admin without endpoint;
    a second call is DuplicateUsername."""
    store = MemoryStore()
    api_key, secret_key = await create_admin(store, Clock())
    admin = await store.get_account_by_username("admin")
    assert admin["is_admin"] is True and admin["endpoint"] == ""
    assert verify_api_key(admin["api_key"], api_key) and admin["secret_key"] == secret_key
    with pytest.raises(DuplicateUsername):
        await create_admin(store, Clock())


def test_a_cancelled_request_lets_its_work_finish() -> None:
    """When Klein cancels a request (client gone) the handler's work goes on
    to completion; only the reply is dropped."""
    work: Deferred[bytes] = Deferred()
    outer = shielded(work, Logger())
    outer.addErrback(lambda failure: failure.trap(CancelledError))
    outer.cancel()
    assert not work.called
    work.callback(b"done")
    assert work.called and work.result is None  # consumed, not left dangling


def test_a_failure_after_the_client_left_is_logged_not_lost() -> None:
    """A handler that fails after its client went away is logged as a failure."""
    events: list[dict] = []
    work: Deferred[bytes] = Deferred()
    outer = shielded(work, Logger(observer=events.append))
    outer.addErrback(lambda failure: failure.trap(CancelledError))
    outer.cancel()
    work.errback(RuntimeError("late"))
    assert [event["log_failure"].value.args for event in events] == [("late",)]


def test_an_uncancelled_request_gets_the_result() -> None:
    """Without cancellation the shield passes results and failures through."""
    results: list[object] = []
    work: Deferred[bytes] = Deferred()
    shielded(work, Logger()).addCallback(results.append)
    work.callback(b"body")
    failed: Deferred[bytes] = Deferred()
    shielded(failed, Logger()).addErrback(lambda failure: results.append(failure.value))
    error = ValueError("x")
    failed.errback(error)
    assert results == [b"body", error]
