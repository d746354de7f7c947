"""WAL checkpoints off the database's own thread.

SQLite's automatic checkpoint copies the write-ahead log back into the
database file inside whichever ``COMMIT`` takes the log past 1,000 pages,
and syncs the file to disk there.  With one connection on one thread, every
call queued behind that commit waits for the disk: it was the slowest
request in a hundred at 100 req/s (``bench/RESULTS.md``).  ``Checkpointer``
turns the automatic checkpoint off (``SQLiteDatabase`` does, on its
connection) and runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval``
seconds on a second connection and thread of its own.  A passive
checkpoint never waits for readers or the writer: it copies what it can,
and the next round copies the rest.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from pywebhooks.dbthread import WorkerThread

#: Seconds between two checkpoints.
CHECKPOINT_INTERVAL = 1.0


class Checkpointer:
    """Checkpoints the WAL of one SQLite file every ``interval`` seconds, on a
    connection that ``connect`` opens (``path`` names the file in logs)."""

    log = Logger()

    def __init__(self, reactor: Any, connect: Callable[[], sqlite3.Connection], path: str,
                 interval: float = CHECKPOINT_INTERVAL) -> None:
        self._clock: IReactorTime = reactor
        self._connect_to_file = connect
        self._path = path
        self._interval = interval
        threads: IReactorFromThreads = reactor
        self._thread = WorkerThread(threads, "sqlite-checkpoint:" + path)
        self._connection: sqlite3.Connection | None = None
        self._loop: LoopingCall | None = None
        #: checkpoints that ran, and (log pages, pages copied) of the last one
        self.rounds = 0
        self.last: tuple[int, int] | None = None

    async def start(self) -> None:
        """Open the second connection and start the rounds (the first one at once)."""
        self._thread.start()
        try:
            await self._thread.submit(self._connect)
        except BaseException:
            self._thread.stop()
            raise
        self._loop = LoopingCall(self._round)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    async def stop(self) -> None:
        """Stop the rounds (waiting for one under way), close the connection."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        if self._connection is not None:
            await self._thread.submit(self._disconnect)
        self._thread.stop()

    def run_once(self) -> Deferred[None]:
        """One checkpoint now; failures are logged, never raised."""
        return self._round()

    def _round(self) -> Deferred[None]:
        done: Deferred[None] = self._thread.submit(self._checkpoint)
        done.addErrback(self._failed)
        return done

    def _failed(self, failure: Any) -> None:
        self.log.warn("checkpoint of {path} failed (the next round tries again): {error}",
                      path=self._path, error=str(failure.value))

    def _connect(self) -> None:
        connection = self._connect_to_file()
        connection.execute("PRAGMA busy_timeout=1000")
        self._connection = connection

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _checkpoint(self) -> None:
        if self._connection is None:
            return
        _, log_pages, copied = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.rounds += 1
        self.last = (log_pages, copied)
