"""Group commit: writes that arrive while one is running go out together next.

Each delivery attempt ends with a few small writes (the store's attempt
record, the ledger's ``finish`` or ``reschedule``).  Under load many end in
the same moment; sending them as one SQLite transaction or one Redis script
call instead of one each keeps the backends off the hot path.  With no load
a write goes out at once, so nothing waits for a batch to fill.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Generic, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Runs ``flush(items)`` for queued items, one batch at a time.

    ``flush`` answers either None (each caller gets None) or one result per
    item, in order (each caller gets its own).  A failed flush fails every
    item of its batch.
    """

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R] | None]]) -> None:
        self._flush = flush
        self._queue: list[tuple[T, Deferred[R | None]]] = []
        self._running = False

    def submit(self, item: T) -> Deferred[R | None]:
        """Queue ``item``; a Deferred of its result once its batch is written
        (or failing with the batch's error)."""
        done: Deferred[R | None] = Deferred()
        self._queue.append((item, done))
        if not self._running:
            self._next()
        return done

    def _next(self) -> None:
        batch, self._queue = self._queue, []
        self._running = True
        written = Deferred.fromCoroutine(self._write([item for item, _ in batch]))
        written.addBoth(self._written, [done for _, done in batch])

    async def _write(self, items: list[T]) -> Sequence[R] | None:
        results = await self._flush(items)
        if results is not None and len(results) != len(items):
            raise RuntimeError("a group commit flush answered %d results for %d items"
                               % (len(results), len(items)))
        return results

    def _written(self, result: Sequence[R] | None | Failure,
                 waiting: list[Deferred[R | None]]) -> None:
        # Still "running" while the callers resume: what they submit next
        # (an attempt record's ledger finish) queues up and goes out as one
        # batch, instead of the first of them going out alone.
        for index, done in enumerate(waiting):
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(None if result is None else result[index])
        self._running = False
        if self._queue:
            self._next()
