"""Group commit: writes that arrive while one is running go out together next.

Each delivery attempt ends with one ledger write (``finish`` or
``reschedule``).  Under load many end in the same moment; sending them as
one SQLite transaction or one Redis script call instead of one each keeps
the ledger off the hot path.  With no load a write goes out at once, so
nothing waits for a batch to fill.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Runs ``flush(items)`` for queued items, one batch at a time."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[object]]) -> None:
        self._flush = flush
        self._queue: list[tuple[T, Deferred[None]]] = []
        self._running = False

    def submit(self, item: T) -> Deferred[None]:
        """Queue ``item``; a Deferred that fires once its batch is written
        (or fails with the batch's error)."""
        done: Deferred[None] = Deferred()
        self._queue.append((item, done))
        if not self._running:
            self._next()
        return done

    def _next(self) -> None:
        batch, self._queue = self._queue, []
        self._running = True
        written = Deferred.fromCoroutine(self._write([item for item, _ in batch]))
        written.addBoth(self._written, [done for _, done in batch])

    async def _write(self, items: list[T]) -> None:
        await self._flush(items)

    def _written(self, result: object, waiting: list[Deferred[None]]) -> None:
        self._running = False
        for done in waiting:
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(None)
        if self._queue:
            self._next()
