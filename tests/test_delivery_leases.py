"""Unit tests (``Clock``, ``StubTreq``, memory store and ledger) of what a
scheduler does with leases that are no longer its own, and with an attempt
answered just before a shutdown.

Two schedulers on one ledger stand for two daemons sharing a Redis ledger.
Once a lease has lapsed, the other daemon may have claimed the entry: the
first must neither release it (that would drop the other's lease, and let a
third claim it) nor attempt it again while the other's attempt runs.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET, Request

from pywebhooks.delivery.deliverer import HTTPDeliverer
from pywebhooks.delivery.recording import SeparateWrites
from pywebhooks.delivery.scheduler import DeliveryScheduler
from tests.support.deliveries import logged_errors  # noqa: F401
from tests.test_delivery_scheduler import Unit, answer_held, pending

pytestmark = pytest.mark.usefixtures("logged_errors")

LEASE = 60.0
FIRST = "http://receiver.example/first"
SECOND = "http://receiver.example/second"


class SlowRecorder(SeparateWrites):
    """Records each attempt's outcome only ``delay`` seconds after it ends
    (a store that is very slow to write)."""

    def __init__(self, unit: Unit, delay: float) -> None:
        super().__init__(unit.store, unit.ledger)
        self._clock = unit.clock
        self._delay = delay

    async def record_outcome(self, *args: Any) -> bool:
        await deferLater(self._clock, self._delay, lambda: None)
        return await super().record_outcome(*args)


def other_daemon(unit: Unit) -> DeliveryScheduler:
    """A second scheduler on the unit's ledger and store, with its own HTTP client."""
    deliverer = HTTPDeliverer(StubTreq(unit.receiver), unit.clock, unit.settings.request_timeout)
    return DeliveryScheduler(unit.clock, unit.ledger, unit.store, deliverer, unit.settings)


def advance(unit: Unit, seconds: int) -> None:
    """Let ``seconds`` pass, a second at a time."""
    for _ in range(seconds):
        unit.clock.advance(1.0)


async def stop_all(unit: Unit, *schedulers: DeliveryScheduler) -> None:
    """Stop the schedulers, giving each its grace periods."""
    unit.receiver.hanging.clear()
    for scheduler in schedulers:
        stopped = scheduler.stopService()
        advance(unit, 4 * int(unit.settings.shutdown_grace))
        await stopped


async def one_held_past_its_lease() -> tuple[Unit, DeliveryScheduler, DeliveryScheduler]:
    """Daemon ``a`` (one slot, room for one outcome being recorded, and
    outcomes recorded 62 s late) claims two
    entries at t=1: the first goes out, the second waits in ``a`` for the
    slot, leased until 61.  Daemon ``b`` takes the second over when that
    lease lapses, at t=61, and its attempt hangs."""
    unit = Unit(max_in_flight=1, lease_seconds=LEASE, request_timeout=5.0, shutdown_grace=1.0)
    a = DeliveryScheduler(unit.clock, unit.ledger, unit.store, unit.deliverer, unit.settings,
                          recorder=SlowRecorder(unit, 62.0), settling_factor=1)
    b = other_daemon(unit)
    unit.receiver.hanging.add("/second")
    await unit.ledger.add([pending(FIRST, 0.0), pending(SECOND, 0.5)])
    unit.clock.advance(1.0)
    a.startService()
    b.startService()
    assert unit.receiver.times("/first") == [1.0]
    assert unit.receiver.times("/second") == []
    advance(unit, 60)
    assert unit.receiver.times("/second") == [61.0]  # b's attempt
    return unit, a, b


@pytest_twisted.ensureDeferred
async def test_an_entry_held_past_its_lease_is_left_to_the_daemon_that_took_it() -> None:
    """When ``a``'s slot frees (t=63), ``a`` neither attempts the entry whose
    lease lapsed while it waited nor releases it: ``b``'s attempt is the only one."""
    unit, a, b = await one_held_past_its_lease()
    advance(unit, 3)
    assert b.in_flight == 1
    assert unit.receiver.times("/second") == [61.0]
    assert await unit.ledger.claim(unit.clock.seconds(), 10, LEASE) == []  # b's lease holds
    await stop_all(unit, a, b)


@pytest_twisted.ensureDeferred
async def test_stopping_leaves_a_lapsed_lease_to_the_daemon_that_took_it() -> None:
    """Stopping ``a`` releases what waits in it, but not the entry whose
    lease lapsed: ``b`` holds that one now."""
    unit, a, b = await one_held_past_its_lease()
    stopped = a.stopService()
    assert await unit.ledger.claim(unit.clock.seconds(), 10, LEASE) == []
    advance(unit, 4)
    await stopped
    await stop_all(unit, b)


@pytest_twisted.ensureDeferred
async def test_a_firing_recorded_after_its_lease_lapsed_is_not_attempted_twice() -> None:
    """With separate store and ledger writes, the entries are added leased,
    then the firing is written.  If that write outlasts the lease, another
    daemon claims and delivers them meanwhile; the firing daemon must not
    attempt them again once its write ends."""
    unit = Unit(lease_seconds=LEASE, request_timeout=5.0)
    await unit.start(subscribers=1)
    b = other_daemon(unit)
    b.startService()
    insert_firing = unit.store.insert_firing

    async def slow_insert(*args: Any) -> None:
        await deferLater(unit.clock, 62.0, lambda: None)
        await insert_firing(*args)

    unit.store.insert_firing = slow_insert  # type: ignore[method-assign]
    firing = Deferred.fromCoroutine(unit.fire())
    advance(unit, 62)
    assert firing.called
    assert [seen.at for seen in unit.receiver.seen] == [60.0]  # b's, once
    await stop_all(unit, unit.scheduler, b)


@pytest_twisted.ensureDeferred
async def test_an_answer_whose_body_a_shutdown_cuts_is_still_recorded() -> None:
    """The receiver answers 200 but never finishes its body.  The scheduler
    stops and cancels the exchange after the grace period: the delivery is
    recorded as delivered (its status had arrived), not left to be sent again."""
    unit = await Unit(shutdown_grace=2.0, request_timeout=5.0).start()

    def answer_without_ending(request: Request) -> Any:
        request.setResponseCode(200)
        request.write(b"{")
        return NOT_DONE_YET

    unit.receiver.render_POST = answer_without_ending  # type: ignore[method-assign]
    firing = await unit.fire()
    unit.stub.flush()
    stopped = unit.scheduler.stopService()
    advance(unit, 4)
    await stopped
    [delivery] = await unit.store.get_deliveries(firing["id"])
    assert delivery["state"] == "delivered"
    assert [attempt["ok"] for attempt in delivery["attempts"]] == [True]
    assert await unit.ledger.count() == 0


@pytest_twisted.ensureDeferred
async def test_a_ledger_update_is_given_up_when_the_lease_lapses() -> None:
    """An entry that waited for the slot (claimed at t=1, attempted at t=6)
    fails at t=8 while the ledger is down, until after its lease lapses
    (t=61), when another daemon claims it at once.  The daemon that attempted
    it must have given up rescheduling it by then: a late reschedule would
    drop the other daemon's lease, and the entry would go out again under it."""
    unit = Unit(max_in_flight=1, lease_seconds=LEASE, request_timeout=5.0, retry_delays=(1.0, 1.0, 1.0))
    unit.receiver.hanging.update({"/first", "/second"})
    await unit.ledger.add([pending(FIRST, 0.0), pending(SECOND, 0.5)])
    unit.clock.advance(1.0)
    await unit.start(subscribers=0)
    advance(unit, 5)  # the first times out (rescheduled); the second goes out
    assert unit.receiver.times("/second") == [6.0]
    unit.clock.advance(2.0)
    unit.ledger.available = False
    answer_held(unit, 500)  # t=8: the second fails; its reschedule waits for the ledger
    advance(unit, 53)
    unit.clock.advance(0.5)  # t=61.5: its lease has lapsed
    unit.ledger.available = True
    taken_over = await unit.ledger.claim(unit.clock.seconds(), 10, LEASE)
    assert sorted(entry.endpoint for entry in taken_over) == [FIRST, SECOND]
    advance(unit, 5)
    assert unit.receiver.times("/second") == [6.0]
    assert await unit.ledger.claim(unit.clock.seconds(), 10, LEASE) == []
    await stop_all(unit, unit.scheduler)
