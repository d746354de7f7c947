"""The database worker thread: calls in order, failures as failures, results
handed back to the reactor together when calls pile up."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import pytest
import pytest_twisted

from pywebhooks.dbthread import MAX_RESULTS_PER_WAKEUP, WorkerThread
from tests.support.deliveries import running_reactor


class RecordingReactor:
    """``callFromThread`` that only records (the test runs the calls itself)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.lock = threading.Lock()

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.calls.append((function, args))

    def run_calls(self) -> int:
        """Run what the thread handed back; how many hand-offs there were."""
        with self.lock:
            calls, self.calls = self.calls, []
        for function, args in calls:
            function(*args)
        return len(calls)


@pytest.fixture
def recording() -> Iterator[tuple[RecordingReactor, WorkerThread]]:
    """A started worker thread on a RecordingReactor; stopped afterwards."""
    reactor = RecordingReactor()
    worker = WorkerThread(reactor, "test")
    worker.start()
    try:
        yield reactor, worker
    finally:
        worker.stop()


def drain(worker: WorkerThread) -> None:
    """Wait until the thread has run everything submitted so far."""
    idle = threading.Event()
    worker.submit(idle.set)
    assert idle.wait(10)


def test_results_come_back_in_submission_order(recording: tuple[RecordingReactor, WorkerThread]) -> None:
    """Each call's Deferred fires with its own result, in the order submitted."""
    reactor, worker = recording
    order: list[int] = []
    results = [worker.submit(lambda n=n: order.append(n) or n * 10) for n in range(20)]
    drain(worker)
    reactor.run_calls()
    assert order == list(range(20))
    assert [result.result for result in results] == [n * 10 for n in range(20)]


def test_an_exception_fails_only_its_own_call(recording: tuple[RecordingReactor, WorkerThread]) -> None:
    """A call that raises fails its Deferred with that exception; the next call still runs."""
    reactor, worker = recording
    failed = worker.submit(lambda: 1 / 0)
    fine = worker.submit(lambda: "ok")
    drain(worker)
    reactor.run_calls()
    with pytest.raises(ZeroDivisionError):
        failed.result.raiseException()
    failed.addErrback(lambda _: None)
    assert fine.result == "ok"


def test_calls_that_pile_up_come_back_in_one_wakeup(recording: tuple[RecordingReactor, WorkerThread]) -> None:
    """Calls queued while the thread is busy are answered with one callFromThread."""
    reactor, worker = recording
    blocker = threading.Event()
    started = threading.Event()
    first = worker.submit(lambda: (started.set(), blocker.wait(10)))
    assert started.wait(10)
    queued = [worker.submit(lambda n=n: n) for n in range(10)]
    blocker.set()
    drain(worker)
    # the first call alone, then the ten queued ones (and the drain marker) together
    assert reactor.run_calls() <= 3
    assert first.called and [d.result for d in queued] == list(range(10))


def test_a_long_burst_is_handed_back_in_bounded_chunks(recording: tuple[RecordingReactor, WorkerThread]) -> None:
    """No more than MAX_RESULTS_PER_WAKEUP results wait for one hand-off."""
    reactor, worker = recording
    blocker = threading.Event()
    worker.submit(blocker.wait, 10)
    results = [worker.submit(lambda n=n: n) for n in range(3 * MAX_RESULTS_PER_WAKEUP)]
    blocker.set()
    drain(worker)
    with reactor.lock:
        sizes = [len(args[0]) for _, args in reactor.calls]
    assert max(sizes) == MAX_RESULTS_PER_WAKEUP
    reactor.run_calls()
    assert [d.result for d in results] == list(range(3 * MAX_RESULTS_PER_WAKEUP))


def test_stop_finishes_queued_calls_and_the_thread_can_start_again() -> None:
    """``stop`` runs what was already submitted; a stopped thread refuses calls
    until it is started again."""
    reactor = RecordingReactor()
    worker = WorkerThread(reactor, "test")
    worker.start()
    ran: list[int] = []
    for n in range(5):
        worker.submit(ran.append, n)
    worker.stop()
    assert ran == [0, 1, 2, 3, 4] and not worker.running
    with pytest.raises(RuntimeError):
        worker.submit(ran.append, 5)
    worker.start()
    try:
        again = worker.submit(lambda: threading.current_thread().name)
        drain(worker)
        reactor.run_calls()
        assert again.result == "test"
    finally:
        worker.stop()


@pytest_twisted.ensureDeferred
async def test_on_the_running_reactor_results_arrive_as_awaited_values() -> None:
    """On the real reactor, awaiting a submitted call gives its value, computed off the reactor thread."""
    worker = WorkerThread(running_reactor(), "test")
    worker.start()
    try:
        names = await worker.submit(lambda: threading.current_thread().name)
        assert names == "test"
        assert threading.current_thread().name != "test"
        with pytest.raises(KeyError):
            await worker.submit({}.__getitem__, "missing")
    finally:
        worker.stop()
