"""``ILedger``: where pending deliveries wait for their due time.

Implementations: ``sqlite.SQLiteLedger`` (the embedded default) and
``redis.RedisLedger`` (``--redis``; shared by several daemons).  An entry is
added before the trigger answers 201 and removed only when its delivery has
succeeded or given up, so a crash never loses one.  Entries are *claimed*
with a lease: a claimed entry is not handed to anyone else until the lease
expires, which is how several daemons share one ledger without sending an
attempt twice, and how a killed daemon's work is taken over.

All methods are coroutine functions (or return Deferreds).  A backend that
cannot be reached raises ``errors.StoreUnavailable``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable

from zope.interface import Interface


@dataclasses.dataclass
class PendingDelivery:
    """One delivery waiting for its next attempt.

    Everything needed to make the attempt is captured at trigger time (like
    the original's task arguments), so an attempt needs no store read.
    ``attempt`` counts the attempts already made; ``due`` is the unix time of
    the next one.
    """

    id: str
    firing_id: str
    account_id: str
    endpoint: str
    secret_key: str
    event: str
    body: str
    attempt: int = 0
    due: float = 0.0

    def to_json(self) -> str:
        """Serialise for a ledger backend."""
        return json.dumps(vars(self), sort_keys=True)

    @staticmethod
    def list_to_json(entries: Iterable[PendingDelivery]) -> str:
        """Entries as one JSON array of their ``to_json`` objects, in one
        encoder pass (for backends that take a batch as one array)."""
        return json.dumps([vars(entry) for entry in entries], sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> PendingDelivery:
        """The inverse of ``to_json``."""
        fields: dict[str, Any] = json.loads(text)
        return cls(**fields)


class ILedger(Interface):
    """Pending deliveries by due time, with leases."""

    def open():
        """Connect (and create tables); the SQLite ledger also releases every
        lease left by a crashed run of this same single process."""

    def close():
        """Disconnect."""

    def add(entries, leased_until=None):
        """Durably add ``PendingDelivery`` entries (all or none); with
        ``leased_until``, they are added already leased to the caller until
        that time (the dispatcher sends them itself without a claim)."""

    def claim(now, limit, lease_seconds):
        """Atomically lease up to ``limit`` entries whose ``due <= now`` or whose
        lease has expired, earliest first, until ``now + lease_seconds``; return
        them as ``PendingDelivery`` objects."""

    def reschedule(entry):
        """Store ``entry`` (its new ``attempt`` and ``due``) and drop its lease.
        A ledger that daemons share does nothing when another one has taken
        the entry over since."""

    def finish(delivery_id):
        """Remove the entry for good (delivered, or given up)."""

    def release(delivery_ids):
        """Drop the leases of these entries so they are due again at once
        (used when shutting down with attempts not yet made).  A ledger that
        daemons share leaves alone the leases another one has taken since."""

    def next_due():
        """The earliest time at which something becomes claimable (a due time
        or a lease expiry), or None when the ledger is empty."""

    def count():
        """How many entries the ledger holds (pending and leased)."""
