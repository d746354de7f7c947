"""The fan-out of one firing: a delivery per subscription row, recorded before the 201.

1. the live subscribers are read and the firing, its delivery records and
   their ledger entries written down through an ``IFiringRecorder``
   (``delivery.recording``; one transaction in the embedded default): the entries
   *already leased to this daemon*, so nobody (not even another daemon on a
   shared Redis) attempts them before this one does; nothing is half
   recorded, and a failure goes to the caller (503 for ``StoreUnavailable``);
2. the entries go to the local scheduler, which starts what fits under its
   in-flight cap at once, keeps some more waiting for a slot, and releases
   the rest to be claimed in turn.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pywebhooks.delivery.recording import IFiringRecorder, recorder_for
from pywebhooks.delivery.signing import delivery_body
from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.records import Record, new_id, new_ids
from pywebhooks.settings import Settings


class Dispatcher:
    """Turns a trigger into durable pending deliveries."""

    log = Logger()

    def __init__(self, clock: IReactorTime, store: Any, ledger: Any, scheduler: Any,
                 settings: Settings, recorder: IFiringRecorder | None = None) -> None:
        self._clock = clock
        self._recorder = recorder if recorder is not None else recorder_for(store, ledger)
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
        body = delivery_body(event_data)
        leased_until = now + self._settings.lease_seconds
        entries = await self._recorder.fire(
            firing, registration["id"],
            lambda subscribers: self._plan(firing, registration, body, subscribers), leased_until)
        self._scheduler.submit(entries, leased_until)
        return firing

    def _plan(self, firing: Record, registration: Record, body: str,
              subscribers: list[Record]) -> tuple[list[Record], list[PendingDelivery]]:
        """One delivery record and one ledger entry per subscriber not muted."""
        now = firing["epoch"]
        muted = self._settings.max_failed_count
        deliveries: list[Record] = []
        entries: list[PendingDelivery] = []
        heard = [subscriber for subscriber in subscribers if (subscriber.get("failed_count") or 0) < muted]
        for subscriber, delivery_id in zip(heard, new_ids(len(heard))):
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
