"""A small in-memory sliding-window rate limiter (used for API-key resets)."""

from __future__ import annotations

import collections
import math

from twisted.internet.interfaces import IReactorTime


class RateLimiter:
    """At most ``limit`` attempts per key within any ``window`` seconds.

    Every allowed attempt is counted, whatever its outcome; a refused
    attempt is not (so refusals do not push the window further out).
    State lives in this process only: a restart forgets it.
    """

    #: Stale keys are swept once this many keys are tracked (then the
    #: threshold doubles with the live population).
    SWEEP_AT = 1024

    def __init__(self, clock: IReactorTime, limit: int, window: float) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self._clock = clock
        self._limit = limit
        self._window = window
        self._hits: dict[str, collections.deque[float]] = {}
        self._sweep_at = self.SWEEP_AT

    def attempt(self, key: str) -> int | None:
        """Count an attempt for ``key``: None if allowed, else whole seconds to wait."""
        now = self._clock.seconds()
        hits = self._hits.get(key)
        if hits is None:
            self._maybe_sweep(now)
            hits = self._hits[key] = collections.deque()
        self._expire(hits, now)
        if len(hits) >= self._limit:
            return max(1, math.ceil(hits[0] + self._window - now))
        hits.append(now)
        return None

    def _expire(self, hits: collections.deque[float], now: float) -> None:
        while hits and hits[0] <= now - self._window:
            hits.popleft()

    def _maybe_sweep(self, now: float) -> None:
        if len(self._hits) < self._sweep_at:
            return
        for key in list(self._hits):
            hits = self._hits[key]
            self._expire(hits, now)
            if not hits:
                del self._hits[key]
        self._sweep_at = max(self.SWEEP_AT, 2 * len(self._hits))
