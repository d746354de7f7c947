"""The behaviour of every ``ILedger``: one suite, run against each implementation.

Times are passed explicitly (``claim(now, ...)``), so lease expiry is tested
without waiting.  ``ledgers`` opens new instances over the same data: a
restarted daemon, or a second daemon sharing the backend.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults
from zope.interface.verify import verifyObject

from pywebhooks import records
from pywebhooks.ledger.interface import ILedger, PendingDelivery
from tests.support.ledgers import LEDGERS, LedgerFactory

T = 1_800_000_000.0
LEASE = 60.0


def entry(due: float = T, body: str = '{"message": "hello"}', attempt: int = 0) -> PendingDelivery:
    """A pending delivery due at ``due``."""
    return PendingDelivery(
        id=records.new_id(), firing_id=records.new_id(), account_id=records.new_id(),
        endpoint="http://127.0.0.1:9090/account/endpoint", secret_key="k" * 40,
        event="push", body=body, attempt=attempt, due=due,
    )


def ids(entries: list[PendingDelivery]) -> list[str]:
    """The ids, in order."""
    return [item.id for item in entries]


@pytest_twisted.async_yield_fixture(params=list(LEDGERS))
async def ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerFactory]:
    """A factory of ledger instances over one empty backend of each kind."""
    async with LEDGERS[request.param](tmp_path) as factory:
        yield factory


@pytest_twisted.ensureDeferred
async def test_implements_the_interface(ledgers: LedgerFactory) -> None:
    """Every ledger provides ILedger."""
    ledger = await ledgers.open_ledger()
    assert verifyObject(ILedger, ledger)


@pytest_twisted.ensureDeferred
async def test_empty_ledger(ledgers: LedgerFactory) -> None:
    """An empty ledger has nothing due, nothing to claim and counts 0."""
    ledger = await ledgers.open_ledger()
    assert await ledger.count() == 0
    assert await ledger.next_due() is None
    assert await ledger.claim(T + 1e6, 10, LEASE) == []


@pytest_twisted.ensureDeferred
async def test_a_fan_out_comes_back_whole(ledgers: LedgerFactory) -> None:
    """The entries of one firing (the same firing, body and due time to the
    last digit, a different subscriber each) come back from a claim exactly
    as added, leased or not."""
    ledger = await ledgers.open_ledger()
    shared = entry(T + 0.123456789012, body='{"quote": "\\"", "é": "\u2603", "n": null}')
    fan_out = [dataclasses.replace(shared, id=records.new_id(), account_id=records.new_id(),
                                   endpoint="http://127.0.0.1:9090/s/%d?q=\"%d\"" % (number, number),
                                   secret_key="ü%039d" % (number,))
               for number in range(30)]
    await ledger.add(fan_out[:20])
    await ledger.add(fan_out[20:], leased_until=T + LEASE)
    claimed = await ledger.claim(T + 1, 100, LEASE)
    assert sorted(claimed, key=lambda item: item.id) == sorted(fan_out[:20], key=lambda item: item.id)
    assert [item.due for item in claimed] == [shared.due] * 20
    again = await ledger.claim(T + LEASE + 0.5, 100, LEASE)
    assert sorted(ids(again)) == sorted(ids(fan_out[20:]))


@pytest_twisted.ensureDeferred
async def test_thousands_added_and_finished_at_once(ledgers: LedgerFactory) -> None:
    """A fan-out of thousands, leased or not, and thousands of finishes
    settled together (past any chunk a backend splits a batch into) leave
    exactly the entries not finished."""
    ledger = await ledgers.open_ledger()
    due = [entry(T + number / 1000) for number in range(2500)]
    leased = [entry(T) for _ in range(1500)]
    await ledger.add(due)
    await ledger.add(leased, leased_until=T + LEASE)
    assert await ledger.count() == 4000
    finished = due[:1200] + leased[:900]
    await gatherResults([ensureDeferred(ledger.finish(item.id)) for item in finished])
    assert await ledger.count() == 1900
    claimed = await ledger.claim(T + 10, 5000, LEASE)
    assert ids(claimed) == ids(due[1200:])
    lapsed = await ledger.claim(T + LEASE + 0.5, 5000, LEASE)
    assert sorted(ids(lapsed)) == sorted(ids(leased[900:]))


@pytest_twisted.ensureDeferred
async def test_claim_returns_due_entries_earliest_first_whole(ledgers: LedgerFactory) -> None:
    """A claim hands back only due entries, earliest first, exactly as added."""
    ledger = await ledgers.open_ledger()
    later, first, second, future = entry(T + 2, body='{"é": "ü \\u2603"}'), entry(T), entry(T + 1), entry(T + 50)
    await ledger.add([later, first, second, future])
    assert await ledger.count() == 4
    assert await ledger.next_due() == T
    claimed = await ledger.claim(T + 10, 10, LEASE)
    assert claimed == [first, second, later]


@pytest_twisted.ensureDeferred
async def test_claim_respects_the_limit(ledgers: LedgerFactory) -> None:
    """A claim leases at most ``limit`` entries; the rest stay claimable."""
    ledger = await ledgers.open_ledger()
    added = [entry(T + index) for index in range(5)]
    await ledger.add(added)
    assert ids(await ledger.claim(T + 10, 2, LEASE)) == ids(added[:2])
    assert ids(await ledger.claim(T + 10, 10, LEASE)) == ids(added[2:])
    assert await ledger.claim(T + 10, 10, LEASE) == []


@pytest_twisted.ensureDeferred
async def test_claimed_entries_are_leased_until_expiry(ledgers: LedgerFactory) -> None:
    """A leased entry is not handed out again before its lease expires, and is after."""
    first = await ledgers.open_ledger()
    other = await ledgers.open_ledger()  # another daemon on the same backend
    pending = entry(T)
    await first.add([pending])
    assert ids(await first.claim(T, 10, 30.0)) == [pending.id]
    assert await other.claim(T + 29, 10, LEASE) == []
    assert await other.next_due() == T + 30.0
    taken_over = await other.claim(T + 30.5, 10, LEASE)
    assert taken_over == [pending]
    assert await first.claim(T + 31, 10, LEASE) == []
    assert await other.count() == 1


@pytest_twisted.ensureDeferred
async def test_reschedule_stores_the_next_attempt(ledgers: LedgerFactory) -> None:
    """A rescheduled entry comes back at its new due time with its new attempt number."""
    ledger = await ledgers.open_ledger()
    pending = entry(T)
    await ledger.add([pending])
    [claimed] = await ledger.claim(T, 10, LEASE)
    claimed.attempt, claimed.due = 1, T + 120
    await ledger.reschedule(claimed)
    assert await ledger.next_due() == T + 120
    assert await ledger.claim(T + 119, 10, LEASE) == []
    [again] = await ledger.claim(T + 120, 10, LEASE)
    assert (again.id, again.attempt, again.due, again.body) == (pending.id, 1, T + 120, pending.body)
    assert await ledger.count() == 1


@pytest_twisted.ensureDeferred
async def test_finish_removes_for_good(ledgers: LedgerFactory) -> None:
    """A finished entry is gone; finishing or rescheduling it again changes nothing."""
    ledger = await ledgers.open_ledger()
    done, kept = entry(T), entry(T)
    await ledger.add([done, kept])
    await ledger.claim(T, 10, LEASE)
    await ledger.finish(done.id)
    await ledger.finish(done.id)
    await ledger.reschedule(PendingDelivery(**{**done.__dict__, "attempt": 1, "due": T}))
    assert await ledger.count() == 1
    assert ids(await ledger.claim(T + LEASE, 10, LEASE)) == [kept.id]


@pytest_twisted.ensureDeferred
async def test_release_makes_leased_entries_due_at_once(ledgers: LedgerFactory) -> None:
    """Released entries are claimable again at once; releasing an unleased one changes nothing."""
    ledger = await ledgers.open_ledger()
    leased, waiting = entry(T), entry(T + 100)
    await ledger.add([leased, waiting])
    await ledger.claim(T, 10, LEASE)
    await ledger.release([leased.id, waiting.id, records.new_id()])
    assert await ledger.next_due() == T
    assert ids(await ledger.claim(T + 1, 10, LEASE)) == [leased.id]
    assert await ledger.claim(T + 50, 10, LEASE) == []


@pytest_twisted.ensureDeferred
async def test_add_already_leased(ledgers: LedgerFactory) -> None:
    """Entries added leased are held for their adder until released or the lease lapses."""
    ledger = await ledgers.open_ledger()
    held, released = entry(T), entry(T)
    await ledger.add([held, released], leased_until=T + 10)
    assert await ledger.claim(T + 5, 10, LEASE) == []
    assert await ledger.next_due() == T + 10
    await ledger.release([released.id])
    assert ids(await ledger.claim(T + 5, 10, LEASE)) == [released.id]
    assert ids(await ledger.claim(T + 10, 10, LEASE)) == [held.id]


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_get_disjoint_entries(ledgers: LedgerFactory) -> None:
    """Claims racing from two daemons never hand the same entry to both, and miss none."""
    first = await ledgers.open_ledger()
    second = await ledgers.open_ledger()
    added = [entry(T + index / 1000) for index in range(300)]
    await first.add(added)
    claims = [
        ensureDeferred((first if index % 2 else second).claim(T + 1, 25, LEASE)) for index in range(16)
    ]
    results = await gatherResults(claims)
    claimed = [item.id for batch in results for item in batch]
    assert len(claimed) == len(set(claimed)) == 300
    assert set(claimed) == set(ids(added))


@pytest_twisted.ensureDeferred
async def test_entries_survive_close_and_reopen(ledgers: LedgerFactory) -> None:
    """What was added is still there after the ledger is closed and opened again."""
    ledger = await ledgers.open_ledger()
    leased, waiting = entry(T), entry(T + 500)
    await ledger.add([leased, waiting])
    await ledger.claim(T, 10, LEASE)
    await ledgers.close_all()
    reopened = await ledgers.open_ledger()
    assert await reopened.count() == 2
    if ledgers.releases_leases_on_open:
        # one process per embedded file: a lease left behind is a crashed run's
        assert await reopened.claim(T + 1, 10, LEASE) == [leased]
    else:
        # shared: the lease may belong to another daemon, it must lapse first
        assert await reopened.claim(T + 1, 10, LEASE) == []
        assert await reopened.claim(T + LEASE, 10, LEASE) == [leased]
    await reopened.finish(leased.id)
    assert await reopened.claim(T + 500, 10, LEASE) == [waiting]


@pytest_twisted.ensureDeferred
async def test_large_batches(ledgers: LedgerFactory) -> None:
    """Thousands of entries go in with one add and come out in claim-sized pieces."""
    ledger = await ledgers.open_ledger()
    added = [entry(T + index) for index in range(5000)]
    await ledger.add(added)
    assert await ledger.count() == 5000
    first = await ledger.claim(T + 10_000, 1000, LEASE)
    assert ids(first) == ids(added[:1000])
    assert await ledger.next_due() == T + 1000


def test_a_list_of_entries_serialises_as_each_entry_does() -> None:
    """``list_to_json`` is the array of the entries' ``to_json`` objects, and
    each comes back whole."""
    entries = [entry(T), entry(T + 0.123456789012, body='{"é": "\\u2603"}', attempt=2)]
    listed = json.loads(PendingDelivery.list_to_json(entries))
    assert listed == [json.loads(item.to_json()) for item in entries]
    assert [PendingDelivery(**fields) for fields in listed] == entries
