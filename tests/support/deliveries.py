"""Helpers for delivery tests: a small world of accounts, a daemon's delivery
half on the real reactor, polling, and a guard against logged errors.

    world = await World.create(store, clock)
    subscriber = await world.subscribe("http://127.0.0.1:PORT/account/endpoint")
    daemon = DeliveryNode(store, ledger).start()
    firing = await daemon.dispatcher.fire(world.registration, world.registration["event_data"])
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import pytest
import pytest_twisted
from twisted.application.service import Service

from pywebhooks import keys, records
from pywebhooks.errors import StoreUnavailable
from tests.support.receiver import Receiver

T = TypeVar("T")

EVENT_DATA = {"message": "hello world", "items": [{"item1": 1}, {"item2": 2}], "é": "ü"}


def account_record(username: str, endpoint: str, epoch: float, failed_count: int = 0) -> dict[str, Any]:
    """A new account with a fresh secret key."""
    return {
        "id": records.new_id(), "username": username, "endpoint": endpoint,
        "api_key": keys.hash_api_key(keys.generate_key()), "secret_key": keys.generate_key(),
        "is_admin": False, "failed_count": failed_count, "epoch": epoch,
    }


@dataclasses.dataclass
class World:
    """An owner account with one registration, and the accounts subscribed to it."""

    store: Any
    clock: Any
    owner: dict[str, Any]
    registration: dict[str, Any]
    subscribers: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    async def create(cls, store: Any, clock: Any, event: str = "push",
                     event_data: Any = EVENT_DATA) -> World:
        """An owner and its registration in ``store``."""
        owner = account_record("owner", "http://127.0.0.1:9/owner", clock.seconds())
        await store.insert_account(owner)
        registration = {
            "id": records.new_id(), "account_id": owner["id"], "event": event,
            "description": "a hook", "event_data": event_data, "epoch": clock.seconds(),
        }
        await store.insert_registration(registration)
        return cls(store, clock, owner, registration)

    async def subscribe(self, endpoint: str, failed_count: int = 0) -> dict[str, Any]:
        """A new account at ``endpoint`` subscribed to the registration."""
        subscriber = account_record("user%d" % (len(self.subscribers),), endpoint,
                                    self.clock.seconds(), failed_count)
        await self.store.insert_account(subscriber)
        await self.store.insert_subscription({
            "id": records.new_id(), "account_id": subscriber["id"],
            "registration_id": self.registration["id"], "epoch": self.clock.seconds(),
        })
        self.subscribers.append(subscriber)
        return subscriber

    async def failed_count(self, subscriber: dict[str, Any]) -> int:
        """The subscriber's failed_count as stored now."""
        account = await self.store.get_account(subscriber["id"])
        assert account is not None
        return int(account["failed_count"])


class LoggedErrors:
    """Collects error and critical log events (and logged failures) while installed."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        from twisted.logger import LogLevel

        level = event.get("log_level")
        if "log_failure" in event or level in (LogLevel.error, LogLevel.critical):
            self.events.append(event)

    def messages(self) -> list[str]:
        """The formatted events."""
        from twisted.logger import formatEvent

        return [formatEvent(event) for event in self.events]


@pytest.fixture
def logged_errors() -> Iterator[LoggedErrors]:
    """Fails the test if anything logged an error or an unhandled failure."""
    from twisted.logger import globalLogPublisher

    errors = LoggedErrors()
    globalLogPublisher.addObserver(errors)
    try:
        yield errors
        gc.collect()  # unobserved failed Deferreds are logged when collected
    finally:
        globalLogPublisher.removeObserver(errors)
    assert errors.messages() == []


class DeliveryNode:
    """The delivery half of a daemon on the running reactor: a real pooled
    treq client, the scheduler and the dispatcher over a given store and ledger.

    Short timings by default, so real-HTTP tests stay fast: retries 0.2 s
    apart, a 0.5 s request timeout, a 0.1 s ledger poll.
    """

    TEST_SETTINGS: dict[str, Any] = {
        "retry_delays": (0.2, 0.2, 0.2),
        "request_timeout": 0.5,
        "shutdown_grace": 1.0,
        "lease_seconds": 5.0,
    }

    def __init__(self, store: Any, ledger: Any, deliverer: Any = None, **overrides: Any) -> None:
        from pywebhooks.delivery.deliverer import HTTPDeliverer
        from pywebhooks.delivery.dispatch import Dispatcher
        from pywebhooks.delivery.scheduler import DeliveryScheduler
        from pywebhooks.httpclient import make_connection_pool, make_http_client
        from pywebhooks.settings import Settings

        self.reactor = running_reactor()
        self.settings = Settings(**{**self.TEST_SETTINGS, **overrides})
        self.store = store
        self.ledger = ledger
        self.pool = make_connection_pool(self.reactor, self.settings)
        self.client = make_http_client(self.reactor, self.settings, self.pool)
        self.deliverer = deliverer or HTTPDeliverer(self.client, self.reactor, self.settings.request_timeout)
        self.scheduler = DeliveryScheduler(self.reactor, ledger, store, self.deliverer, self.settings,
                                           poll_interval=0.1, retry_interval=0.1)
        self.dispatcher = Dispatcher(self.reactor, store, ledger, self.scheduler, self.settings)

    def start(self) -> DeliveryNode:
        """Start the scheduler."""
        self.scheduler.startService()
        return self

    def kill(self) -> None:
        """Stop claiming at once, releasing nothing and abandoning attempts in
        flight, as ``kill -9`` would (their leases stay taken)."""
        Service.stopService(self.scheduler)

    async def stop(self) -> None:
        """Stop the scheduler and close the idle connections."""
        if self.scheduler.running:
            await self.scheduler.stopService()
        await self.pool.closeCachedConnections()


class DeadDeliverer:
    """Stands for a daemon killed mid-attempt: attempts never end, leases stay taken."""

    def __init__(self) -> None:
        self.started: list[Any] = []

    async def attempt(self, entry: Any) -> Any:
        from twisted.internet.defer import Deferred

        self.started.append(entry)
        await Deferred()


@pytest_twisted.async_yield_fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A recording receiver (``tests.support.receiver``) on 127.0.0.1."""
    started = Receiver(running_reactor())
    await started.start()
    yield started
    await started.stop()


def running_reactor() -> Any:
    """The running reactor (imported late, so this module installs none)."""
    from twisted.internet import reactor

    return reactor


async def sleep(seconds: float) -> None:
    """Let the reactor run for ``seconds``."""
    from twisted.internet.task import deferLater

    await deferLater(running_reactor(), seconds, lambda: None)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 5.0, step: float = 0.02) -> Any:
    """Poll ``check`` until it returns something true; that value (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
        except StoreUnavailable:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met within %ss" % (timeout,)
        await sleep(step)


async def within(waited: Awaitable[Any], seconds: float) -> Any:
    """Await ``waited`` (a Deferred) but fail the test after ``seconds`` instead of hanging."""
    from twisted.internet.defer import ensureDeferred

    deferred = ensureDeferred(waited) if not hasattr(waited, "addTimeout") else waited
    return await deferred.addTimeout(seconds, running_reactor())  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def stopped_afterwards(stop: Callable[[T], Awaitable[Any]]) -> AsyncIterator[list[T]]:
    """A list for a test to append what it starts; ``stop`` is awaited for
    each of them afterwards, whatever the test did."""
    started: list[T] = []
    try:
        yield started
    finally:
        for thing in started:
            await stop(thing)


@pytest_twisted.async_yield_fixture
async def daemons() -> AsyncIterator[list[DeliveryNode]]:
    """Delivery nodes a test starts (it appends them); stopped afterwards."""
    async with stopped_afterwards(DeliveryNode.stop) as started:
        yield started


async def fired(daemon: DeliveryNode, world: World) -> dict[str, Any]:
    """Trigger the world's registration on ``daemon``; the firing record."""
    return await daemon.dispatcher.fire(world.registration, world.registration["event_data"])
