"""``MemoryLedger``: an ``ILedger`` in a dict, for unit tests with a ``Clock``.

It keeps the same rules as the durable ledgers (the same behavioural suite
runs against all of them) but forgets everything with the process.  Every
method completes synchronously, so a test driven by ``Clock.advance`` needs
no running reactor.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Iterable

from zope.interface import implementer

from pywebhooks.errors import StoreUnavailable
from pywebhooks.ledger.interface import ILedger, PendingDelivery


@dataclasses.dataclass
class _Slot:
    payload: str
    due: float
    leased_until: float | None = None

    @property
    def available_at(self) -> float:
        return self.due if self.leased_until is None else self.leased_until


@implementer(ILedger)
class MemoryLedger:
    """Pending deliveries in a dict; ``available`` can simulate an outage."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        #: Set to False to make every call raise ``StoreUnavailable``.
        self.available = True

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable("The ledger is unavailable")

    async def open(self) -> None:
        """Nothing to connect; drop leases like the embedded ledger does."""
        self._check()
        for slot in self._slots.values():
            slot.leased_until = None

    async def close(self) -> None:
        """Nothing to disconnect."""

    async def add(self, entries: Iterable[PendingDelivery], leased_until: float | None = None) -> None:
        """Add (or replace) entries; already leased until ``leased_until`` if given."""
        self._check()
        for entry in entries:
            self._slots[entry.id] = _Slot(entry.to_json(), entry.due, leased_until)

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[PendingDelivery]:
        """Lease up to ``limit`` claimable entries, earliest first."""
        self._check()
        ready = ((slot.available_at, key) for key, slot in self._slots.items() if slot.available_at <= now)
        claimed = []
        for _, key in heapq.nsmallest(limit, ready):
            slot = self._slots[key]
            slot.leased_until = now + lease_seconds
            claimed.append(PendingDelivery.from_json(slot.payload))
        return claimed

    async def reschedule(self, entry: PendingDelivery) -> None:
        """Store the entry's new attempt and due time and drop its lease."""
        self._check()
        if entry.id in self._slots:
            self._slots[entry.id] = _Slot(entry.to_json(), entry.due)

    async def finish(self, delivery_id: str) -> None:
        """Remove the entry."""
        self._check()
        self._slots.pop(delivery_id, None)

    async def release(self, delivery_ids: Iterable[str]) -> None:
        """Drop the leases of these entries."""
        self._check()
        for key in delivery_ids:
            slot = self._slots.get(key)
            if slot is not None:
                slot.leased_until = None

    async def next_due(self) -> float | None:
        """The earliest due time or lease expiry, None when empty."""
        self._check()
        return min((slot.available_at for slot in self._slots.values()), default=None)

    async def count(self) -> int:
        """How many entries are held."""
        self._check()
        return len(self._slots)
