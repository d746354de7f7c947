"""Writing down what the delivery machinery does, in the store and the ledger:
a firing (its record, its delivery records, its ledger entries), and each
attempt's outcome (the attempt log, the subscriber's ``failed_count``, the
ledger entry finished or rescheduled).

Two ways, one interface:

- ``SeparateWrites`` (any store with any ledger): the ledger entries first,
  added already leased to this daemon so that nobody attempts them yet, then
  the firing and its deliveries in one store call.  If the store write fails
  the entries are removed again.  A crash between the two leaves leased
  entries without a firing row; their lease lapses and they are delivered
  anyway (at least once, never lost).
- ``OneTransaction`` (the embedded default: the SQLite store and the SQLite
  ledger in one file): both in one transaction, so they commit together or
  not at all, with one trip to the database thread instead of three (the
  subscribers are read in the same transaction).  The attempts that end
  while a write is running are logged, and their ledger entries updated,
  together in the next transaction (group commit).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, NamedTuple

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

from pywebhooks.batching import GroupCommit
from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.ledger.sqlite import SQLiteLedger
from pywebhooks.records import Record
from pywebhooks.sqlitedb import in_sequence
from pywebhooks.store.attempt_log import AttemptWrite, logging_attempts
from pywebhooks.store.sqlite import SQLiteStore


class Outcome(NamedTuple):
    """One attempt's outcome to write down (``record_outcome``'s arguments)."""

    entry: PendingDelivery
    attempt: dict[str, Any]
    final: bool
    retry: PendingDelivery | None


#: Turns the live subscribers of a registration into (delivery records, ledger entries).
Plan = Callable[[list[Record]], "tuple[list[Record], list[PendingDelivery]]"]


class IFiringRecorder(Interface):
    """Durably records one firing with its deliveries and ledger entries."""

    def fire(firing, registration_id, plan, leased_until):
        """Read the live subscribers of ``registration_id``, turn them into
        ``(deliveries, entries)`` with ``plan`` (a pure function, which may
        run on a database thread), and ``record`` them; the entries."""

    def record(firing, deliveries, entries, leased_until):
        """Write the firing record, its delivery records, and the ledger
        ``entries`` leased until ``leased_until``: all of it or (once the
        call has failed) none of it.  Raises ``errors.StoreUnavailable`` when
        the store or the ledger cannot be written."""

    def record_outcome(entry, attempt, final, retry):
        """Log ``attempt`` (an ``AttemptOutcome.record``) of ``entry`` in the
        store (``IStore.record_attempt``); True when the ledger entry was
        updated in the same write (finished when ``retry`` is None, else
        replaced by ``retry``), False when the caller updates the ledger."""


@implementer(IFiringRecorder)
class SeparateWrites:
    """The ledger, then the store; the ledger entries go again if the store fails."""

    log = Logger()

    def __init__(self, store: Any, ledger: Any) -> None:
        self._store = store
        self._ledger = ledger

    async def fire(self, firing: Record, registration_id: str, plan: Plan,
                   leased_until: float) -> list[PendingDelivery]:
        """See ``IFiringRecorder.fire``: the subscribers, then ``record``."""
        deliveries, entries = plan(await self._store.subscribers(registration_id))
        await self.record(firing, deliveries, entries, leased_until)
        return entries

    async def record(self, firing: Record, deliveries: list[Record],
                     entries: list[PendingDelivery], leased_until: float) -> None:
        """See ``IFiringRecorder.record``."""
        if entries:
            await self._ledger.add(entries, leased_until=leased_until)
        try:
            await self._store.insert_firing(firing, deliveries)
        except BaseException:
            await self._forget(entries)
            raise

    def record_outcome(self, entry: PendingDelivery, attempt: dict[str, Any], final: bool,
                       retry: PendingDelivery | None) -> Deferred[bool]:
        """See ``IFiringRecorder.record_outcome``: the store only."""
        logged = maybeDeferred(self._store.record_attempt, entry.firing_id, entry.id, entry.account_id,
                               attempt, final)
        return logged.addCallback(lambda _: False)

    async def _forget(self, entries: list[PendingDelivery]) -> None:
        """Remove the ledger entries of a firing that could not be recorded."""
        if not entries:
            return
        removals = [ensureDeferred(self._ledger.finish(entry.id)) for entry in entries]
        try:
            await gatherResults(removals, consumeErrors=True)
        except Exception as error:
            self.log.error(
                "firing not recorded, and {count} of its ledger entries could not be removed"
                " (they will be delivered when their lease lapses): {error}",
                count=len(entries), error=str(error),
            )


@implementer(IFiringRecorder)
class OneTransaction:
    """The SQLite store and ledger of one database, written in one transaction."""

    def __init__(self, store: SQLiteStore, ledger: SQLiteLedger) -> None:
        if store.database is not ledger.database:
            raise ValueError("OneTransaction needs the store and the ledger on one SQLiteDatabase")
        self._store = store
        self._ledger = ledger
        self._outcomes: GroupCommit[Outcome, None] = GroupCommit(self._write_outcomes)

    async def fire(self, firing: Record, registration_id: str, plan: Plan,
                   leased_until: float) -> list[PendingDelivery]:
        """See ``IFiringRecorder.fire``: reading the subscribers, planning and
        writing are one transaction, one trip to the database thread."""
        read = self._store.reading_subscribers(registration_id)

        def fan_out(connection: sqlite3.Connection) -> list[PendingDelivery]:
            deliveries, entries = plan(read(connection))
            self._writing(firing, deliveries, entries, leased_until)(connection)
            return entries

        return await self._store.transaction(fan_out, "firing")

    async def record(self, firing: Record, deliveries: list[Record],
                     entries: list[PendingDelivery], leased_until: float) -> None:
        """See ``IFiringRecorder.record``."""
        await self._store.transaction(self._writing(firing, deliveries, entries, leased_until), "firing")

    def _writing(self, firing: Record, deliveries: list[Record], entries: list[PendingDelivery],
                 leased_until: float) -> Callable[[sqlite3.Connection], None]:
        """The statements that write a firing down: ledger entries, then records."""
        return in_sequence(self._ledger.adding(entries, leased_until=leased_until),
                           self._store.inserting_firing(firing, deliveries))

    def record_outcome(self, entry: PendingDelivery, attempt: dict[str, Any], final: bool,
                       retry: PendingDelivery | None) -> Deferred[bool]:
        """See ``IFiringRecorder.record_outcome``: the store and the ledger
        together, in one transaction with the outcomes settled meanwhile."""
        return self._outcomes.submit(Outcome(entry, attempt, final, retry)).addCallback(lambda _: True)

    async def _write_outcomes(self, outcomes: list[Outcome]) -> None:
        log = logging_attempts([
            AttemptWrite(outcome.entry.firing_id, outcome.entry.id, outcome.entry.account_id, outcome.attempt,
                         outcome.final)
            for outcome in outcomes])
        update = self._ledger.updating([(outcome.entry.id, outcome.retry) for outcome in outcomes])
        await self._store.transaction(in_sequence(log, update), "delivery")


def recorder_for(store: Any, ledger: Any) -> IFiringRecorder:
    """``OneTransaction`` when ``store`` and ``ledger`` share one SQLite
    database, else ``SeparateWrites``."""
    if (isinstance(store, SQLiteStore) and isinstance(ledger, SQLiteLedger)
            and store.database is ledger.database):
        return OneTransaction(store, ledger)
    return SeparateWrites(store, ledger)
