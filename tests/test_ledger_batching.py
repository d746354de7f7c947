"""Group commit of ledger writes: batches form only while a write is running."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from pywebhooks.errors import StoreUnavailable
from pywebhooks.batching import GroupCommit


class Writer:
    """A flush whose completion the test controls."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.pending: list[Deferred[None]] = []

    async def flush(self, items: list[int]) -> None:
        self.batches.append(items)
        running: Deferred[None] = Deferred()
        self.pending.append(running)
        await running


def test_writes_arriving_during_a_write_go_out_together() -> None:
    """The first write goes out alone at once; those queued meanwhile go out as one batch."""
    writer = Writer()
    commit: GroupCommit[int, None] = GroupCommit(writer.flush)
    done = [commit.submit(number) for number in range(5)]
    assert writer.batches == [[0]]
    writer.pending[0].callback(None)
    assert done[0].called and not done[1].called
    assert writer.batches == [[0], [1, 2, 3, 4]]
    writer.pending[1].callback(None)
    assert all(d.called for d in done)
    commit.submit(5)
    assert writer.batches[-1] == [5]
    writer.pending[2].callback(None)


def test_a_failed_batch_fails_each_of_its_writes() -> None:
    """Every write of a failed batch gets the error; later writes are not affected."""
    writer = Writer()
    commit: GroupCommit[int, None] = GroupCommit(writer.flush)
    first = commit.submit(1)
    failing = [commit.submit(2), commit.submit(3)]
    writer.pending[0].callback(None)
    writer.pending[1].errback(StoreUnavailable("down"))
    for write in failing:
        with pytest.raises(StoreUnavailable):
            write.result.raiseException()
        write.addErrback(lambda _: None)
    assert first.called
    later = commit.submit(4)
    writer.pending[2].callback(None)
    assert later.called and later.result is None


def test_each_write_of_a_batch_gets_its_own_result() -> None:
    """A flush that answers one result per item hands each caller its own, in order."""
    batches: list[list[int]] = []
    running: list[Deferred[list[int]]] = []

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        running.append(Deferred())
        return await running[-1]

    commit: GroupCommit[int, int] = GroupCommit(flush)
    done = [commit.submit(number) for number in range(4)]
    running[0].callback([0])
    running[1].callback([10, 20, 30])
    assert batches == [[0], [1, 2, 3]]
    assert [d.result for d in done] == [0, 10, 20, 30]


def test_writes_made_by_resumed_callers_go_out_together() -> None:
    """Writes that the callers of a finished batch make at once go out as one next batch."""
    writer = Writer()
    commit: GroupCommit[int, None] = GroupCommit(writer.flush)
    commit.submit(0)
    followers: list[Deferred[None | int]] = []
    for number in (1, 2):
        commit.submit(number).addCallback(
            lambda _, number=number: followers.append(commit.submit(10 + number)))
    writer.pending[0].callback(None)
    writer.pending[1].callback(None)
    assert writer.batches == [[0], [1, 2], [11, 12]]
    writer.pending[2].callback(None)
    assert len(followers) == 2 and all(done.called for done in followers)
