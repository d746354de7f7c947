"""One worker thread for a blocking driver, with cheap hand-offs both ways.

Twisted's ``ThreadPool`` is general (many threads, context propagation, a
coordinator) and pays for it on every call: under load its hand-off, not
the SQL, was most of the time an SQLite call took (measured in
``bench/RESULTS.md``).  A database connection needs one thread running
calls in order, so this is only that: a ``SimpleQueue`` in, and the results
of every call that was waiting back to the reactor in one
``callFromThread``.  When calls pile up the thread runs them back to back
and the reactor is woken once for the lot.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

T = TypeVar("T")

#: At most this many results go back to the reactor in one wake-up, so that
#: the first of a long burst does not wait for the last.
MAX_RESULTS_PER_WAKEUP = 64

_Job = tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]
_Done = tuple[Deferred[Any], bool, Any]


class WorkerThread:
    """Runs submitted functions one at a time, in submission order, on one thread."""

    def __init__(self, reactor: IReactorFromThreads, name: str) -> None:
        self._reactor = reactor
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True between ``start`` and ``stop``."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (again, after a ``stop``)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the thread finish what was submitted, then end it (blocks until it has)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._jobs.put(None)
        thread.join()

    def submit(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``function(*args)`` on the thread; a Deferred of its result or failure."""
        if self._thread is None:
            raise RuntimeError("the %s thread is not running" % (self._name,))
        done: Deferred[T] = Deferred()
        self._jobs.put((done, function, args))
        return done

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            finished: list[_Done] = []
            while job is not None:
                finished.append(self._run(job))
                if len(finished) >= MAX_RESULTS_PER_WAKEUP:
                    self._reactor.callFromThread(_deliver, finished)
                    finished = []
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
            if finished:
                self._reactor.callFromThread(_deliver, finished)
            if job is None:
                return

    @staticmethod
    def _run(job: _Job) -> _Done:
        done, function, args = job
        try:
            return (done, True, function(*args))
        except BaseException:
            return (done, False, Failure())


def _deliver(finished: list[_Done]) -> None:
    """On the reactor thread: fire each call's Deferred, in order."""
    for done, ok, value in finished:
        if ok:
            done.callback(value)
        else:
            done.errback(value)
