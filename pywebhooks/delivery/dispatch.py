"""The fan-out of one firing: a delivery per subscription row, recorded before the 201.

Order of writes, so that nothing is half-recorded:

1. the ledger entries, added *already leased to this daemon*: nobody (not
   even another daemon on a shared Redis) can attempt them yet;
2. the firing and its delivery records, in one store call; if that fails
   the ledger entries are removed again and the error goes to the caller
   (503 for ``StoreUnavailable``);
3. the entries go to the local scheduler, which starts what fits under its
   in-flight cap at once and releases the rest to be claimed in turn.

A crash between 1 and 2 leaves leased entries without a firing row; their
lease lapses (or the embedded ledger drops it on restart) and they are
delivered anyway: at least once, never lost.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pywebhooks.delivery.signing import delivery_body
from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.records import Record, new_id
from pywebhooks.settings import Settings


class Dispatcher:
    """Turns a trigger into durable pending deliveries."""

    log = Logger()

    def __init__(self, clock: IReactorTime, store: Any, ledger: Any, scheduler: Any,
                 settings: Settings) -> None:
        self._clock = clock
        self._store = store
        self._ledger = ledger
        self._scheduler = scheduler
        self._settings = settings

    async def fire(self, registration: Record, event_data: Any) -> Record:
        """Record a firing of ``registration`` with ``event_data`` and queue its
        deliveries; the firing record ``{"epoch", "id", "registration_id"}``.

        Raises ``errors.StoreUnavailable`` (nothing recorded) when the store or
        the ledger cannot be written.
        """
        now = self._clock.seconds()
        firing = {"epoch": now, "id": new_id(), "registration_id": registration["id"]}
        subscribers = await self._store.subscribers(registration["id"])
        deliveries, entries = self._plan(firing, registration, delivery_body(event_data), subscribers)
        if entries:
            await self._ledger.add(entries, leased_until=now + self._settings.lease_seconds)
        try:
            await self._store.insert_firing(firing, deliveries)
        except BaseException:
            await self._forget(entries)
            raise
        self._scheduler.submit(entries)
        return firing

    def _plan(self, firing: Record, registration: Record, body: str,
              subscribers: list[Record]) -> tuple[list[Record], list[PendingDelivery]]:
        """One delivery record and one ledger entry per subscriber not muted."""
        now = firing["epoch"]
        muted = self._settings.max_failed_count
        deliveries: list[Record] = []
        entries: list[PendingDelivery] = []
        for subscriber in subscribers:
            if (subscriber.get("failed_count") or 0) >= muted:
                continue
            delivery_id = new_id()
            deliveries.append({
                "id": delivery_id,
                "epoch": now,
                "firing_id": firing["id"],
                "registration_id": registration["id"],
                "subscription_id": subscriber["subscription_id"],
                "account_id": subscriber["account_id"],
                "event": registration["event"],
                "endpoint": subscriber["endpoint"],
                "state": "pending",
                "attempts": [],
            })
            entries.append(PendingDelivery(
                id=delivery_id,
                firing_id=firing["id"],
                account_id=subscriber["account_id"],
                endpoint=subscriber["endpoint"],
                secret_key=subscriber["secret_key"],
                event=registration["event"],
                body=body,
                attempt=0,
                due=now,
            ))
        return deliveries, entries

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
