"""Unit tests of the retry scheduler and the fan-out: a ``Clock``, ``StubTreq``,
the memory store and the memory ledger, so every timing is exact and instant.

The same behaviours run for real (HTTP on loopback, SQLite, Redis) in
``test_delivery_http.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pywebhooks import records
from pywebhooks.delivery.deliverer import HTTPDeliverer
from pywebhooks.delivery.dispatch import Dispatcher
from pywebhooks.delivery.scheduler import SETTLING_FACTOR, DeliveryScheduler
from pywebhooks.errors import StoreUnavailable
from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.ledger.memory import MemoryLedger
from pywebhooks.settings import Settings
from pywebhooks.store.memory import MemoryStore
from tests.support.deliveries import World, logged_errors  # noqa: F401

pytestmark = pytest.mark.usefixtures("logged_errors")

ENDPOINT = "http://receiver.example/account/endpoint"


@dataclasses.dataclass
class Seen:
    """One request the stub receiver got."""

    path: str
    at: float
    headers: dict[str, str]
    body: bytes


class StubReceiver(Resource):
    """A receiver for StubTreq: statuses per path (the last one repeats), or hang."""

    isLeaf = True

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self._clock = clock
        self.seen: list[Seen] = []
        self.statuses: dict[str, list[int]] = {}
        self.hanging: set[str] = set()
        self.held: list[Request] = []

    def render_POST(self, request: Request) -> Any:
        path = request.path.decode()
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        assert request.content is not None
        self.seen.append(Seen(path, self._clock.seconds(), headers, request.content.read()))
        if path in self.hanging:
            self.held.append(request)
            return NOT_DONE_YET
        statuses = self.statuses.get(path, [200])
        request.setResponseCode(statuses.pop(0) if len(statuses) > 1 else statuses[0])
        return b"{}"

    def times(self, path: str = "/account/endpoint") -> list[float]:
        """When requests to ``path`` arrived."""
        return [seen.at for seen in self.seen if seen.path == path]


class Unit:
    """The delivery machinery on a Clock."""

    def __init__(self, **overrides: Any) -> None:
        self.settings = Settings(**overrides)
        self.clock = Clock()
        self.store = MemoryStore()
        self.ledger = MemoryLedger()
        self.receiver = StubReceiver(self.clock)
        self.stub = StubTreq(self.receiver)
        self.deliverer = HTTPDeliverer(self.stub, self.clock, self.settings.request_timeout)
        self.scheduler = DeliveryScheduler(self.clock, self.ledger, self.store, self.deliverer, self.settings)
        self.dispatcher = Dispatcher(self.clock, self.store, self.ledger, self.scheduler, self.settings)
        self.world: World

    async def start(self, subscribers: int = 1, **subscriber: Any) -> Unit:
        """A world with ``subscribers`` accounts at ENDPOINT, and the scheduler running."""
        await self.store.open()
        await self.ledger.open()
        self.world = await World.create(self.store, self.clock)
        for _ in range(subscribers):
            await self.world.subscribe(ENDPOINT, **subscriber)
        self.scheduler.startService()
        return self

    async def fire(self) -> dict[str, Any]:
        """Trigger the registration."""
        return await self.dispatcher.fire(self.world.registration, self.world.registration["event_data"])

    async def stop(self) -> None:
        """Stop the scheduler; nothing may be left scheduled."""
        stopped = self.scheduler.stopService()
        self.clock.advance(self.settings.shutdown_grace)
        self.clock.advance(self.settings.shutdown_grace)
        await stopped
        assert self.clock.getDelayedCalls() == []


def pending(endpoint: str = ENDPOINT, due: float = 0.0) -> PendingDelivery:
    """A ledger entry to ``endpoint`` due at ``due``."""
    return PendingDelivery(records.new_id(), records.new_id(), records.new_id(), endpoint,
                           "k" * 40, "push", "{}", 0, due)


@pytest_twisted.ensureDeferred
async def test_retries_follow_the_delays_then_give_up() -> None:
    """A receiver that always answers 500 gets 4 attempts, 120 s, 120 s and 3600 s apart, then none."""
    unit = await Unit().start()
    [subscriber] = unit.world.subscribers
    unit.receiver.statuses["/account/endpoint"] = [500]
    firing = await unit.fire()
    assert unit.receiver.times() == [0]
    unit.clock.advance(119.9)
    assert unit.receiver.times() == [0]
    unit.clock.advance(0.1)
    unit.clock.advance(120)
    assert unit.receiver.times() == [0, 120, 240]
    unit.clock.advance(3599)
    assert len(unit.receiver.times()) == 3
    unit.clock.advance(1)
    assert unit.receiver.times() == [0, 120, 240, 3840]
    for _ in range(10):
        unit.clock.advance(10_000)
    assert len(unit.receiver.times()) == 4
    assert await unit.world.failed_count(subscriber) == 4
    [delivery] = await unit.store.get_deliveries(firing["id"])
    assert delivery["state"] == "failed"
    assert [(a["attempt"], a["ok"], a["status_code"], a["at"]) for a in delivery["attempts"]] == [
        (1, False, 500, 0), (2, False, 500, 120), (3, False, 500, 240), (4, False, 500, 3840)]
    assert await unit.ledger.count() == 0
    ids = {seen.headers["webhook-id"] for seen in unit.receiver.seen}
    assert ids == {delivery["id"]}
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_custom_retry_delays() -> None:
    """--retry-delays sets both the number of retries and their spacing."""
    unit = await Unit(retry_delays=(5.0, 7.0)).start()
    unit.receiver.statuses["/account/endpoint"] = [503]
    await unit.fire()
    for _ in range(30):
        unit.clock.advance(1)
    assert unit.receiver.times() == [0, 5, 12]
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_success_resets_failed_count() -> None:
    """A delivered attempt sets the subscriber's failed_count back to 0 and ends the delivery."""
    unit = await Unit().start(failed_count=7)
    [subscriber] = unit.world.subscribers
    unit.receiver.statuses["/account/endpoint"] = [500, 200]
    firing = await unit.fire()
    assert await unit.world.failed_count(subscriber) == 8
    unit.clock.advance(120)
    assert await unit.world.failed_count(subscriber) == 0
    [delivery] = await unit.store.get_deliveries(firing["id"])
    assert delivery["state"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    assert await unit.ledger.count() == 0
    unit.clock.advance(10_000)
    assert len(unit.receiver.times()) == 2
    await unit.stop()


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
@pytest_twisted.ensureDeferred
async def test_any_2xx_is_a_success(status: int) -> None:
    """Any 2xx answer, with or without a body, counts as delivered."""
    unit = await Unit().start(failed_count=3)
    unit.receiver.statuses["/account/endpoint"] = [status]
    firing = await unit.fire()
    [delivery] = await unit.store.get_deliveries(firing["id"])
    assert (delivery["state"], delivery["attempts"][0]["ok"]) == ("delivered", True)
    assert await unit.world.failed_count(unit.world.subscribers[0]) == 0
    await unit.stop()


@pytest.mark.parametrize("status", [301, 302, 400, 404, 410, 500])
@pytest_twisted.ensureDeferred
async def test_anything_else_is_a_failure(status: int) -> None:
    """A redirect or an error status is a failed attempt, retried later."""
    unit = await Unit().start()
    unit.receiver.statuses["/account/endpoint"] = [status]
    firing = await unit.fire()
    [delivery] = await unit.store.get_deliveries(firing["id"])
    assert delivery["state"] == "pending"
    assert (delivery["attempts"][0]["ok"], delivery["attempts"][0]["status_code"]) == (False, status)
    assert await unit.ledger.next_due() == 120
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_a_hanging_receiver_times_out() -> None:
    """A receiver that never answers fails the attempt at the request timeout."""
    unit = await Unit(request_timeout=5.0).start()
    unit.receiver.hanging.add("/account/endpoint")
    firing = await unit.fire()
    unit.clock.advance(4.9)
    [delivery] = await unit.store.get_deliveries(firing["id"])
    assert delivery["attempts"] == []
    unit.clock.advance(0.1)
    [delivery] = await unit.store.get_deliveries(firing["id"])
    [attempt] = delivery["attempts"]
    assert (attempt["ok"], attempt["status_code"], attempt["duration"]) == (False, None, 5.0)
    assert "timeout" in attempt["error"]
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_in_flight_attempts_are_capped() -> None:
    """No more than max_in_flight attempts run at once; the rest wait in the ledger."""
    unit = await Unit(max_in_flight=10).start(subscribers=25)
    unit.receiver.hanging.add("/account/endpoint")
    await unit.fire()
    assert unit.scheduler.in_flight == 10
    assert len(unit.receiver.seen) == 10
    unit.clock.advance(5)
    assert len(unit.receiver.seen) == 20
    unit.receiver.hanging.clear()
    unit.clock.advance(5)
    assert len(unit.receiver.seen) == 25
    unit.clock.advance(115)
    assert unit.receiver.times()[25:] == [125] * 10  # the timed-out ones, 120 s after failing
    unit.clock.advance(5)
    assert unit.receiver.times()[35:] == [130] * 10
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_attempts_stop_starting_while_the_store_is_far_behind() -> None:
    """Answered attempts whose outcomes are still being recorded free their
    slots, up to SETTLING_FACTOR x max_in_flight of them; past that no new
    attempt starts until the store catches up."""
    unit = await Unit(max_in_flight=2).start(subscribers=SETTLING_FACTOR * 2 + 3)
    recording: list[Deferred[None]] = []

    def stuck(*args: Any) -> Deferred[None]:
        recording.append(Deferred())
        return recording[-1]

    unit.store.record_attempt = stuck  # type: ignore[method-assign]
    await unit.fire()
    assert len(unit.receiver.seen) == SETTLING_FACTOR * 2
    assert len(recording) == SETTLING_FACTOR * 2
    recording[0].callback(None)
    # the freed room starts attempts again, at most a slot's worth at once
    assert SETTLING_FACTOR * 2 < len(unit.receiver.seen) <= SETTLING_FACTOR * 2 + 2
    while len(unit.receiver.seen) < SETTLING_FACTOR * 2 + 3:
        next(done for done in recording if not done.called).callback(None)
    for done in recording:
        if not done.called:
            done.callback(None)
    assert await unit.ledger.count() == 0
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_a_few_timers_for_ten_thousand_pending() -> None:
    """10,000 pending retries cost one timer, plus two per attempt in flight, never one each."""
    unit = Unit(max_in_flight=20)
    unit.receiver.hanging.add("/due")
    await unit.ledger.add([pending("http://receiver.example/due", 0.0) for _ in range(5_000)])
    await unit.ledger.add([pending(ENDPOINT, 100.0 + index) for index in range(5_000)])
    await unit.start(subscribers=0)
    assert unit.scheduler.in_flight == 20
    assert len(unit.clock.getDelayedCalls()) <= 1 + 2 * 20
    unit.clock.advance(5)
    assert unit.scheduler.in_flight == 20
    assert len(unit.clock.getDelayedCalls()) <= 1 + 2 * 20
    unit.receiver.hanging.clear()
    await unit.stop()
    assert await unit.ledger.count() == 10_000


@pytest_twisted.ensureDeferred
async def test_waits_with_one_timer_for_the_next_due_entry() -> None:
    """With only future entries, one timer waits; the entry is attempted exactly at its due time."""
    unit = Unit()
    await unit.ledger.add([pending(ENDPOINT, 30.5)])
    await unit.start(subscribers=0)
    assert len(unit.clock.getDelayedCalls()) == 1
    for _ in range(30):
        unit.clock.advance(1)
    assert unit.receiver.times() == []
    unit.clock.advance(0.5)
    assert unit.receiver.times() == [30.5]
    await unit.stop()


class CountingLedger(MemoryLedger):
    """A memory ledger that counts the claims that found something, and releases."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0
        self.released: list[str] = []

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[PendingDelivery]:
        entries = await super().claim(now, limit, lease_seconds)
        self.claims += bool(entries)
        return entries

    async def release(self, delivery_ids: Any) -> None:
        ids = list(delivery_ids)
        self.released.extend(ids)
        await super().release(ids)


def counting_unit(**overrides: Any) -> Unit:
    """A Unit whose ledger counts claims and releases."""
    unit = Unit(**overrides)
    unit.ledger = CountingLedger()
    unit.scheduler = DeliveryScheduler(unit.clock, unit.ledger, unit.store, unit.deliverer, unit.settings)
    unit.dispatcher = Dispatcher(unit.clock, unit.store, unit.ledger, unit.scheduler, unit.settings)
    return unit


async def stalled(max_in_flight: int, subscribers: int, **overrides: Any) -> Unit:
    """A counting unit fired once at ``subscribers`` endpoints that never answer:
    ``max_in_flight`` attempts hang, the rest of the fan-out is left over."""
    unit = await counting_unit(max_in_flight=max_in_flight, **overrides).start(subscribers=subscribers)
    unit.receiver.hanging.add("/account/endpoint")
    await unit.fire()
    assert unit.scheduler.in_flight == max_in_flight
    return unit


@pytest_twisted.ensureDeferred
async def test_a_fan_outs_surplus_waits_here_and_starts_as_slots_free() -> None:
    """Entries of a firing beyond the free slots (up to max_in_flight more) wait
    in the scheduler, still leased, and start the moment a slot frees: no
    release and no claim in between."""
    unit = await stalled(max_in_flight=10, subscribers=15)
    unit.clock.advance(5)  # the first ten time out; the five waiting start at once
    assert unit.receiver.times()[10:] == [5.0] * 5
    assert (unit.ledger.claims, unit.ledger.released) == (0, [])
    unit.receiver.hanging.clear()
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_entries_waiting_here_are_released_at_shutdown() -> None:
    """Stopping releases the entries waiting for a slot: another daemon can claim them at once."""
    unit = await stalled(max_in_flight=2, subscribers=5, shutdown_grace=1.0)
    await unit.stop()
    assert len(await unit.ledger.claim(unit.clock.seconds(), 100, 60)) == 5


@pytest_twisted.ensureDeferred
async def test_with_a_short_lease_nothing_waits_here() -> None:
    """When the lease is short against an attempt, the surplus is released to
    the ledger at once instead of waiting here."""
    unit = await stalled(max_in_flight=2, subscribers=5, lease_seconds=10.0)
    assert len(unit.ledger.released) == 3
    unit.receiver.hanging.clear()
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_attempts_then_leaves_them_pending() -> None:
    """Stopping waits up to the grace period, then abandons attempts, which stay due in the ledger."""
    unit = await Unit(shutdown_grace=2.0, max_in_flight=3).start(subscribers=5)
    unit.receiver.hanging.add("/account/endpoint")
    firing = await unit.fire()
    stopped = unit.scheduler.stopService()
    unit.clock.advance(1.9)
    assert not stopped.called
    unit.clock.advance(0.1)
    await stopped
    assert unit.clock.getDelayedCalls() == []
    assert unit.scheduler.in_flight == 0
    for delivery in await unit.store.get_deliveries(firing["id"]):
        assert (delivery["state"], delivery["attempts"]) == ("pending", [])
    assert len(await unit.ledger.claim(unit.clock.seconds(), 100, 60)) == 5


@pytest_twisted.ensureDeferred
async def test_stop_lets_quick_attempts_finish() -> None:
    """An attempt that ends within the grace period is recorded before the scheduler stops."""
    unit = await Unit(shutdown_grace=5.0).start()
    unit.receiver.hanging.add("/account/endpoint")
    firing = await unit.fire()
    stopped = unit.scheduler.stopService()
    unit.clock.advance(1)
    assert len(unit.receiver.held) == 1
    answer_held(unit, 204)
    assert stopped.called
    await stopped
    [delivery] = await unit.store.get_deliveries(firing["id"])
    assert delivery["state"] == "delivered"
    assert await unit.ledger.count() == 0
    assert unit.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_new_scheduler_delivers_what_a_dead_one_left() -> None:
    """After a crash, a new scheduler over the same ledger makes every pending delivery, same id."""
    unit = await Unit().start(subscribers=3)
    unit.receiver.hanging.add("/account/endpoint")
    firing = await unit.fire()
    ids = {seen.headers["webhook-id"] for seen in unit.receiver.seen}
    # the daemon dies: its scheduler is never stopped, its leases stay behind
    unit.receiver.hanging.clear()
    unit.receiver.seen.clear()
    await unit.ledger.open()  # the embedded ledger drops a dead run's leases on open
    restarted = DeliveryScheduler(unit.clock, unit.ledger, unit.store, unit.deliverer, unit.settings)
    restarted.startService()
    assert {seen.headers["webhook-id"] for seen in unit.receiver.seen} == ids
    assert {d["state"] for d in await unit.store.get_deliveries(firing["id"])} == {"delivered"}
    await restarted.stopService()
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_ledger_outage_is_retried_without_crashing() -> None:
    """When the ledger is unreachable the scheduler keeps trying and delivers once it is back."""
    unit = Unit()
    await unit.ledger.add([pending(ENDPOINT, 0.0)])
    unit.ledger.available = False
    unit.scheduler.startService()
    unit.clock.advance(1)
    unit.clock.advance(1)
    assert unit.receiver.times() == []
    unit.ledger.available = True
    unit.clock.advance(1)
    assert unit.receiver.times() == [3]
    assert await unit.ledger.count() == 0
    await unit.stop()


async def answered_during_a_ledger_blip(status: int) -> tuple[Unit, dict[str, Any]]:
    """A unit whose one delivery is answered ``status`` at t=0 while the
    ledger is unreachable, until t=2; at t=3, with the firing."""
    unit = await Unit().start()
    unit.receiver.hanging.add("/account/endpoint")
    firing = await unit.fire()
    unit.ledger.available = False
    unit.receiver.hanging.clear()
    [request] = unit.receiver.held
    request.setResponseCode(status)
    request.finish()
    unit.stub.flush()
    unit.clock.advance(1)
    unit.clock.advance(1)
    unit.ledger.available = True
    unit.clock.advance(1)
    return unit, firing


@pytest_twisted.ensureDeferred
async def test_a_ledger_blip_after_an_attempt_is_retried() -> None:
    """If the ledger is unreachable for a moment when an attempt ends, its update is retried: no resend."""
    unit, firing = await answered_during_a_ledger_blip(200)
    assert await unit.ledger.count() == 0
    for _ in range(5):
        unit.clock.advance(100)
    assert len(unit.receiver.seen) == 1
    [delivery] = await unit.store.get_deliveries(firing["id"])
    assert delivery["state"] == "delivered"
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_store_failure_after_an_attempt_still_moves_the_ledger() -> None:
    """If the attempt cannot be logged, the ledger still moves on (no endless resend)."""
    unit = await Unit().start()

    async def unavailable(*args: Any) -> None:
        raise StoreUnavailable("down")

    unit.store.record_attempt = unavailable  # type: ignore[method-assign]
    await unit.fire()
    assert await unit.ledger.count() == 0
    unit.clock.advance(1000)
    assert len(unit.receiver.times()) == 1
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_muted_subscribers_get_nothing() -> None:
    """A subscriber at max_failed_count gets no new delivery; one below it still does."""
    unit = await Unit(max_failed_count=3).start(subscribers=0)
    await unit.world.subscribe("http://receiver.example/muted", failed_count=3)
    await unit.world.subscribe("http://receiver.example/alive", failed_count=2)
    firing = await unit.fire()
    deliveries = await unit.store.get_deliveries(firing["id"])
    assert [d["endpoint"] for d in deliveries] == ["http://receiver.example/alive"]
    assert [seen.path for seen in unit.receiver.seen] == ["/alive"]
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_fan_out_one_delivery_per_subscription_row() -> None:
    """Each subscription row, duplicates included, gets its own delivery with its own id."""
    unit = await Unit().start(subscribers=0)
    subscriber = await unit.world.subscribe(ENDPOINT)
    await unit.store.insert_subscription({
        "id": records.new_id(), "account_id": subscriber["id"],
        "registration_id": unit.world.registration["id"], "epoch": 0.0})
    firing = await unit.fire()
    assert set(firing) == {"epoch", "id", "registration_id"}
    deliveries = await unit.store.get_deliveries(firing["id"])
    assert len(deliveries) == 2 == len({d["id"] for d in deliveries})
    assert {seen.headers["webhook-id"] for seen in unit.receiver.seen} == {d["id"] for d in deliveries}
    [listed] = (await unit.store.list_firings(0, 10)).rows
    assert listed["id"] == firing["id"]
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_a_retry_rescheduled_after_a_ledger_blip_goes_out_on_time() -> None:
    """A failed attempt whose reschedule waits out a ledger blip is still
    retried at its due time (the timer is set once the reschedule is in)."""
    unit, firing = await answered_during_a_ledger_blip(500)
    assert await unit.ledger.count() == 1
    unit.clock.advance(116.9)
    assert unit.receiver.times() == [0]
    unit.clock.advance(0.1)
    assert unit.receiver.times() == [0, 120]
    [delivery] = await unit.store.get_deliveries(firing["id"])
    assert [attempt["ok"] for attempt in delivery["attempts"]] == [False, True]
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_ledger_outage_at_trigger_records_nothing() -> None:
    """If the ledger cannot be written, the trigger fails with StoreUnavailable and records nothing."""
    unit = await Unit().start()
    unit.ledger.available = False
    with pytest.raises(StoreUnavailable):
        await unit.fire()
    unit.ledger.available = True
    assert (await unit.store.list_firings(0, 10)).rows == []
    assert await unit.ledger.count() == 0
    unit.clock.advance(1000)
    assert unit.receiver.seen == []
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_store_outage_at_trigger_removes_the_ledger_entries() -> None:
    """If the firing cannot be stored, its ledger entries are removed and nothing is sent."""
    unit = await Unit().start(subscribers=3)

    async def unavailable(*args: Any) -> None:
        raise StoreUnavailable("down")

    unit.store.insert_firing = unavailable  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await unit.fire()
    assert await unit.ledger.count() == 0
    unit.clock.advance(1000)
    assert unit.receiver.seen == []
    await unit.stop()


@pytest_twisted.ensureDeferred
async def test_a_firing_while_stopped_waits_in_the_ledger() -> None:
    """A trigger accepted while the scheduler is stopped is delivered once it starts."""
    unit = await Unit().start()
    await unit.stop()
    await unit.fire()
    assert unit.receiver.seen == []
    assert await unit.ledger.count() == 1
    unit.scheduler.startService()
    assert len(unit.receiver.seen) == 1
    await unit.stop()


def answer_held(unit: Unit, status: int = 200) -> None:
    """Answer every request the stub receiver is holding."""
    held, unit.receiver.held = unit.receiver.held, []
    for request in held:
        request.setResponseCode(status)
        request.finish()
    unit.stub.flush()


@pytest_twisted.ensureDeferred
async def test_the_ledger_is_watched_again_when_full_slots_free() -> None:
    """A poll that finds every slot busy sets no timer; once the slots free,
    the scheduler looks at the ledger again, so an entry that another daemon
    added meanwhile (or whose lease lapsed) goes out within a poll interval."""
    unit = await Unit(max_in_flight=2).start(subscribers=2)
    unit.receiver.hanging.add("/account/endpoint")
    await unit.fire()
    unit.clock.advance(1.5)  # the poll comes and goes while both slots are busy
    await unit.ledger.add([pending("http://receiver.example/other", unit.clock.seconds())])
    answer_held(unit)
    unit.clock.advance(1.0)
    assert unit.receiver.times("/other") == [1.5]
    await unit.stop()
