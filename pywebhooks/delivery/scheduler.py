"""The retry scheduler: claims due deliveries from the ledger and attempts them.

Due times live in the ledger, not in memory: the scheduler holds one timer
(the next due time or the poll interval, whichever comes first) and at most
``max_in_flight`` attempts.  Each round it claims (leases) as many due
entries as it has free slots, so a million pending retries cost a million
ledger rows and no ``IDelayedCall``.  The poll covers entries that other
daemons sharing a Redis ledger add, and leases that lapse.

After an attempt: the outcome goes to the store (attempt log and
``failed_count``), then the entry leaves the ledger (success, or the last
attempt) or is rescheduled after the next retry delay.  The attempt's slot
is free as soon as its HTTP exchange ends, so the next attempt does not
wait for that bookkeeping; at most ``SETTLING_FACTOR`` times
``max_in_flight`` outcomes are being recorded at a time (past that, no new
attempt starts: the store is behind).  Outcomes are written in batches, so
under load a fair number of them wait for the batch ahead of theirs: a
cap of only ``max_in_flight`` left the slots idle half the time
(``bench/RESULTS.md``, ninth pass).  Up to another
``max_in_flight`` leased entries wait in memory for a slot (the surplus of
a fan-out, or of a claim), so that a slot that frees starts the next
attempt at once instead of after a trip to the ledger; one whose lease has
become too short for a whole attempt is released instead, and one whose
lease has lapsed is left alone (another daemon may have claimed it).
Entries are held only when the lease is long against an attempt
(``--lease-seconds`` at least three times ``--request-timeout`` plus the
retry interval, as with the defaults), so that holding never turns into
claiming and releasing.  A crash anywhere
leaves the entry in the ledger, leased at worst, so it is attempted again:
at least once, always with the same delivery id.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Awaitable, Callable, Iterable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from pywebhooks.delivery.deliverer import AttemptOutcome
from pywebhooks.delivery.recording import IFiringRecorder, recorder_for
from pywebhooks.errors import StoreUnavailable
from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.settings import Settings

#: Seconds between looks at the ledger when nothing is due sooner.
POLL_INTERVAL = 1.0

#: Seconds before trying again after the ledger failed.
RETRY_INTERVAL = 1.0

#: Shortest timer, so that entries due "now" that could not be claimed yet
#: never make a busy loop.
MIN_DELAY = 0.01

#: How many outcomes, per slot of ``max_in_flight``, may be waiting to be
#: recorded before no new attempt starts.
SETTLING_FACTOR = 4

#: Seconds before the end of a lease from which this daemon leaves the entry
#: alone (neither releases nor updates it): room for the clocks of daemons
#: sharing a ledger to disagree a little, and for the trip to the ledger.
#: (A quarter of the lease when that is shorter.)
LEASE_SAFETY = 1.0


class DeliveryScheduler(Service):
    """Attempts pending deliveries when they are due, with capped concurrency."""

    log = Logger()
    name = "delivery-scheduler"

    def __init__(self, clock: IReactorTime, ledger: Any, store: Any, deliverer: Any,
                 settings: Settings, *, poll_interval: float = POLL_INTERVAL,
                 retry_interval: float = RETRY_INTERVAL, recorder: IFiringRecorder | None = None,
                 settling_factor: int = SETTLING_FACTOR) -> None:
        self._clock = clock
        self._ledger = ledger
        self._store = store
        self._recorder = recorder if recorder is not None else recorder_for(store, ledger)
        self._deliverer = deliverer
        self._settings = settings
        self._poll_interval = poll_interval
        self._retry_interval = retry_interval
        self._settling_factor = settling_factor
        #: how long before its end a lease stops being safely ours (see LEASE_SAFETY)
        self._lease_safety = min(LEASE_SAFETY, settings.lease_seconds / 4)
        self._timer: IDelayedCall | None = None
        #: ids of the deliveries whose HTTP attempt is running
        self._in_flight: set[str] = set()
        #: ids of the deliveries whose outcome is being recorded
        self._settling: set[str] = set()
        #: leased entries waiting here for a slot, with the end of their lease
        self._ready: collections.deque[tuple[PendingDelivery, float]] = collections.deque()
        #: delivery id -> the Deferred of its HTTP request, while it runs
        self._requests: dict[str, Deferred[AttemptOutcome]] = {}
        self._pumping = False
        self._pump_again = False
        #: True when due entries may be waiting in the ledger unseen: the last
        #: claim was full, or a look was skipped because every slot was busy
        self._backlog = False
        self._idle_waiters: list[Deferred[None]] = []
        self._background: set[Deferred[None]] = set()
        #: attempts made (and settled) since this scheduler was created
        self.attempts_made = 0

    # -- the Service --------------------------------------------------------

    def startService(self) -> None:
        """Start claiming what is due (everything overdue goes out at once)."""
        super().startService()
        self.wake()

    def stopService(self) -> Deferred[None]:
        """Stop claiming, wait up to ``shutdown_grace`` for attempts in flight,
        then abandon the rest (their entries stay in the ledger, released)."""
        super().stopService()
        self._cancel_timer()
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        """Wait for attempts (``shutdown_grace``), then cancel what is left and
        release its leases (within one more grace period at most)."""
        grace = self._settings.shutdown_grace
        # A lease that has lapsed may be another daemon's now: not ours to release.
        waiting = [entry.id for entry, leased_until in self._ready if self._still_ours(leased_until)]
        self._ready.clear()
        self._in_background(self._release(waiting))
        if not await self._wait_idle(grace):
            abandoned = list(self._requests)
            self.log.warn("shutting down with {count} deliveries in flight; they stay pending",
                          count=len(abandoned))
            for request in list(self._requests.values()):
                request.cancel()
            deadline = self._clock.seconds() + grace
            await self._wait_idle(grace)
            release = Deferred.fromCoroutine(self._release(abandoned))
            await self._bounded(release, max(0.0, deadline - self._clock.seconds()))
        else:
            deadline = self._clock.seconds() + grace
        # anything still running in the background (a release of unstarted entries)
        for pending in list(self._background):
            await self._bounded(pending, max(0.0, deadline - self._clock.seconds()))

    async def _bounded(self, waited: Deferred[Any], seconds: float) -> bool:
        """Wait for ``waited`` at most ``seconds`` without cancelling it; True if it fired."""
        done: Deferred[None] = Deferred()

        def fire(result: object = None) -> object:
            if not done.called:
                done.callback(None)
            return result

        waited.addBoth(fire)
        timeout = self._clock.callLater(seconds, fire)
        await done
        if timeout.active():
            timeout.cancel()
        return bool(waited.called)

    async def _wait_idle(self, seconds: float) -> bool:
        """True once nothing is in flight, or False after ``seconds``."""
        if self._is_idle():
            return True
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return await self._bounded(waiter, seconds)

    def _is_idle(self) -> bool:
        return not self._in_flight and not self._settling and not self._pumping

    def _check_idle(self) -> None:
        if self._is_idle() and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    @property
    def in_flight(self) -> int:
        """How many HTTP attempts are in progress."""
        return len(self._in_flight)

    @property
    def settling(self) -> int:
        """How many attempt outcomes are being recorded."""
        return len(self._settling)

    # -- claiming ---------------------------------------------------------

    def wake(self) -> None:
        """Look at the ledger now (call after adding entries that are due)."""
        if not self.running:
            return
        if self._pumping:
            self._pump_again = True
            return
        Deferred.fromCoroutine(self._pump())

    def submit(self, entries: list[PendingDelivery], leased_until: float) -> None:
        """Attempt entries the caller has just added *already leased* to it
        until ``leased_until`` (``ledger.add(entries, leased_until=...)``): as
        many as there are free slots start at once, more wait here for a slot
        (see ``_hold``); the others are released to be claimed in turn.

        When recording them took so long that their lease has lapsed, they
        are left alone: another daemon may have claimed them meanwhile."""
        if not self._still_ours(leased_until):
            self._backlog = True
            self.wake()
            return
        free = self._free_slots() if self.running else 0
        for entry in entries[:free]:
            self._start(entry, leased_until)
        rest = entries[free:]
        if rest and self.running:
            rest = self._hold(rest, leased_until)
        if rest:
            self._backlog = True
            self._in_background(self._release_then_wake([entry.id for entry in rest]))

    def _hold(self, entries: list[PendingDelivery], leased_until: float) -> list[PendingDelivery]:
        """Keep what fits of ``entries`` (leased until ``leased_until``) waiting
        for a slot; the entries that did not fit."""
        room = self._hold_room()
        self._ready.extend((entry, leased_until) for entry in entries[:room])
        return entries[room:]

    def _hold_room(self) -> int:
        """How many more leased entries may wait here for a slot."""
        if self._settings.lease_seconds < 3 * self._attempt_margin():
            return 0
        return max(0, self._settings.max_in_flight - len(self._ready))

    def _still_ours(self, leased_until: float) -> bool:
        """True while a lease ending at ``leased_until`` is safely this daemon's."""
        return leased_until - self._clock.seconds() > self._lease_safety

    def _attempt_margin(self) -> float:
        """The lease an entry needs left to be attempted: a whole attempt,
        plus the time to settle it."""
        return self._settings.request_timeout + self._retry_interval

    def _start_ready(self) -> None:
        """Start waiting entries while there are free slots; release those
        whose lease no longer covers a whole attempt, and forget those whose
        lease has lapsed (another daemon may hold them now)."""
        expired: list[str] = []
        lapsed = False
        margin = self._attempt_margin()
        while self._ready and self._free_slots() > 0:
            entry, leased_until = self._ready.popleft()
            left = leased_until - self._clock.seconds()
            if left <= self._lease_safety:
                lapsed = True
            elif left < margin:
                expired.append(entry.id)
            else:
                self._start(entry, leased_until)
        if expired:
            self._backlog = True
            self._in_background(self._release_then_wake(expired))
        elif lapsed:
            self._backlog = True
            self.wake()

    async def _release_then_wake(self, delivery_ids: list[str]) -> None:
        await self._release(delivery_ids)
        self.wake()

    def _settling_cap(self) -> int:
        """How many outcomes may be being recorded before no attempt starts."""
        return self._settling_factor * self._settings.max_in_flight

    def _free_slots(self) -> int:
        if len(self._settling) >= self._settling_cap():
            return 0  # the store is behind: let it catch up first
        return self._settings.max_in_flight - len(self._in_flight)

    async def _pump(self) -> None:
        """Claim and start what is due, then set the timer; never raises."""
        self._pumping = True
        try:
            while self.running:
                self._pump_again = False
                await self._claim_all()
                if self.running and not self._pump_again:
                    await self._arm()
                if not self._pump_again:
                    break
        except StoreUnavailable as error:
            self.log.warn("ledger unavailable, retrying in {delay}s: {error}",
                          delay=self._retry_interval, error=str(error))
            self._set_timer(self._clock.seconds() + self._retry_interval)
        except Exception:
            self.log.failure("delivery scheduler round failed; retrying in {delay}s",
                             delay=self._retry_interval)
            self._set_timer(self._clock.seconds() + self._retry_interval)
        finally:
            self._pumping = False
            self._check_idle()

    async def _claim_all(self) -> None:
        """Claim due entries until the slots are full or nothing more is due;
        claim up to as many again to wait here for the next free slots."""
        while self.running:
            self._start_ready()
            free = self._free_slots()
            if free <= 0:
                self._backlog = self._backlog or bool(self._ready)
                return
            wanted = free + self._hold_room()
            now = self._clock.seconds()
            entries = await self._ledger.claim(now, wanted, self._settings.lease_seconds)
            if not self.running:
                await self._release(entry.id for entry in entries)
                return
            leased_until = now + self._settings.lease_seconds
            # ``submit`` may have taken slots while the claim was on its way.
            startable = max(0, self._free_slots())
            for entry in entries[:startable]:
                self._start(entry, leased_until)
            rest = self._hold(entries[startable:], leased_until)
            if rest:
                self._backlog = True
                await self._release(entry.id for entry in rest)
                return
            self._backlog = len(entries) >= wanted
            if not self._backlog:
                return

    async def _arm(self) -> None:
        """Set the one timer to the next due time, or the poll interval.

        With every slot busy there is no timer: the next slot to free claims
        again (and that round sets the timer).
        """
        if self._free_slots() <= 0:
            self._backlog = True
            return
        next_due = await self._ledger.next_due()
        if not self.running:
            return
        now = self._clock.seconds()
        when = now + self._poll_interval
        if next_due is not None:
            when = min(when, max(next_due, now + MIN_DELAY))
        self._set_timer(when)

    def _set_timer(self, when: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= when:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self.wake()

    # -- attempts ---------------------------------------------------------

    def _start(self, entry: PendingDelivery, leased_until: float) -> None:
        """Attempt ``entry``, leased to this daemon until ``leased_until``.

        The attempt is a chain of callbacks (``_answered``, then ``_settled``)
        rather than a coroutine: it runs once per delivery, and a coroutine's
        trampoline cost a noticeable share of it (``bench/RESULTS.md``, tenth
        pass)."""
        if entry.id in self._in_flight or entry.id in self._settling:
            return
        self._in_flight.add(entry.id)
        request = maybeDeferred(self._deliverer.attempt, entry)
        self._requests[entry.id] = request  # until ``_answered``, maybe at once
        request.addBoth(self._answered, entry, leased_until)

    def _answered(self, outcome: AttemptOutcome | Failure, entry: PendingDelivery,
                  leased_until: float) -> None:
        """The HTTP exchange of ``entry`` is over: free its slot, and record
        its outcome (``outcome`` is a failure only for a crash, or a
        cancellation at shutdown, whose entry ``_drain`` releases)."""
        self._requests.pop(entry.id, None)
        self._in_flight.discard(entry.id)
        if isinstance(outcome, Failure):
            self._log_crash(outcome, entry)
            self._slot_freed()
            self._check_idle()
            return
        self._settling.add(entry.id)
        self._slot_freed()
        self._settle(entry, outcome, leased_until).addBoth(self._settled, entry)

    def _settled(self, result: None | Failure, entry: PendingDelivery) -> None:
        """The outcome of ``entry`` is recorded (or recording it crashed)."""
        if isinstance(result, Failure):
            self._log_crash(result, entry)
        recorders_were_full = len(self._settling) >= self._settling_cap()
        self._settling.discard(entry.id)
        if recorders_were_full:
            self._slot_freed()
        self._check_idle()

    def _log_crash(self, failure: Failure, entry: PendingDelivery) -> None:
        """Log ``failure`` of an attempt, unless it is a shutdown's cancellation."""
        if not failure.check(CancelledError):
            self.log.failure("delivery {delivery_id} attempt {attempt} crashed", failure,
                             delivery_id=entry.id, attempt=entry.attempt + 1)

    def _slot_freed(self) -> None:
        """Start an entry waiting here, and claim again when due entries may
        be waiting in the ledger."""
        self._start_ready()
        if self._backlog:
            self.wake()

    def _settle(self, entry: PendingDelivery, outcome: AttemptOutcome, leased_until: float) -> Deferred[None]:
        """Record the outcome, then finish or reschedule the ledger entry
        (while its lease, until ``leased_until``, holds)."""
        self.attempts_made += 1
        number = entry.attempt + 1
        delays = self._settings.retry_delays
        final = outcome.ok or number > len(delays)
        if not outcome.ok:
            # Successes are not logged: the store has their record, and on the
            # hot path a log event costs a noticeable share of an attempt.
            self._log_failure(entry, number, outcome, final)
        retry = None
        if not final:
            retry = dataclasses.replace(entry, attempt=number, due=self._clock.seconds() + delays[number - 1])
        recorded = maybeDeferred(self._recorder.record_outcome, entry, outcome.record(number), final, retry)
        return recorded.addCallbacks(self._recorded, self._not_recorded,
                                     callbackArgs=(entry, retry, leased_until),
                                     errbackArgs=(entry, retry, leased_until))

    def _recorded(self, ledger_updated: bool, entry: PendingDelivery, retry: PendingDelivery | None,
                  leased_until: float) -> Deferred[None] | None:
        """The outcome is in the store: the ledger entry next, unless the
        recorder updated it in the same write."""
        if not ledger_updated:
            return self._update_ledger(entry, retry, leased_until)
        self._ledger_updated(None, retry)
        return None

    def _not_recorded(self, failure: Failure, entry: PendingDelivery, retry: PendingDelivery | None,
                      leased_until: float) -> Deferred[None]:
        """The store could not take the outcome: the ledger entry is updated
        all the same (the attempt log misses one line; the delivery is not
        made twice)."""
        self.log.warn("could not record attempt {attempt} of delivery {delivery_id}: {error}",
                      attempt=entry.attempt + 1, delivery_id=entry.id, error=str(failure.value))
        return self._update_ledger(entry, retry, leased_until)

    def _update_ledger(self, entry: PendingDelivery, retry: PendingDelivery | None,
                       leased_until: float) -> Deferred[None]:
        """Finish the ledger entry (``retry`` is None) or replace it with
        ``retry`` and set the timer for it, retrying while the ledger is
        unavailable and the lease (until ``leased_until``) still holds."""
        if retry is None:
            update: Callable[[], Awaitable[None]] = functools.partial(self._ledger.finish, entry.id)
        else:
            update = functools.partial(self._ledger.reschedule, retry)
        return maybeDeferred(update).addCallbacks(
            self._ledger_updated, self._update_failed,
            callbackArgs=(retry,), errbackArgs=(entry, retry, leased_until, update))

    def _ledger_updated(self, _: object, retry: PendingDelivery | None) -> None:
        """Set the timer for ``retry`` now that it is in the ledger."""
        if retry is not None:
            self._set_timer(retry.due)

    def _update_failed(self, failure: Failure, entry: PendingDelivery, retry: PendingDelivery | None,
                       leased_until: float, update: Callable[[], Awaitable[None]]) -> Deferred[None]:
        """A ledger update failed: try again while the ledger is unavailable."""
        failure.trap(StoreUnavailable)
        return Deferred.fromCoroutine(self._update_again(entry, retry, leased_until, update, failure.value))

    async def _update_again(self, entry: PendingDelivery, retry: PendingDelivery | None, leased_until: float,
                            update: Callable[[], Awaitable[None]], error: BaseException) -> None:
        """Run ``update`` again (it failed with ``error``) while the ledger is
        unavailable and the lease still holds.  When it cannot be done the
        lease lapses and the attempt is made again, at least once; a late
        update would touch an entry that another daemon may have claimed by
        then."""
        deadline = leased_until - self._lease_safety
        while True:
            if not self.running or self._clock.seconds() + self._retry_interval >= deadline:
                self.log.warn("ledger update of delivery {delivery_id} failed: {error}",
                              delivery_id=entry.id, error=str(error))
                return
            await deferLater(self._clock, self._retry_interval, lambda: None)
            try:
                await update()
            except StoreUnavailable as again:
                error = again
            else:
                self._ledger_updated(None, retry)
                return

    def _log_failure(self, entry: PendingDelivery, number: int, outcome: AttemptOutcome,
                     final: bool) -> None:
        self.log.info(
            "delivery {delivery_id} attempt {attempt} to account {account_id} failed"
            " ({status}{error}){final}",
            delivery_id=entry.id, attempt=number, account_id=entry.account_id,
            status=outcome.status_code or "", error=outcome.error or "",
            final="; giving up" if final else "",
        )

    # -- background work ----------------------------------------------------

    async def _release(self, delivery_ids: Iterable[str]) -> None:
        """Release leases, logging (not raising) a ledger failure."""
        ids = list(delivery_ids)
        if not ids:
            return
        try:
            await self._ledger.release(ids)
        except Exception as error:
            self.log.warn("could not release {count} leases (they lapse on their own): {error}",
                          count=len(ids), error=str(error))

    def _in_background(self, work: Any) -> None:
        task = Deferred.fromCoroutine(work)
        if not task.called:
            self._background.add(task)
            task.addBoth(lambda _: self._background.discard(task))
