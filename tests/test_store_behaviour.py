"""The behaviour of every ``IStore``: one suite, run against each implementation.

The ``store`` fixture is parametrized over ``tests.support.stores.STORES``;
the SQLite-only tests at the end cover what only a file on disk can do.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults
from zope.interface.verify import verifyObject

from pywebhooks import records
from pywebhooks.errors import DatabaseMissing, DuplicateUsername, StoreError, StoreUnavailable
from pywebhooks.records import Page, WriteResult
from pywebhooks.store.interface import IStore
from pywebhooks.store import attempt_log, sqlite as sqlite_store
from pywebhooks.store.sqlite import PageCursors, SQLiteStore
from tests.support.stores import STORES, sqlite_database

# -- records as the API builds them ---------------------------------------------

_clock = iter(range(1_000_000))


def _epoch() -> float:
    # Decreasing epochs: a store that sorted by epoch instead of creation fails.
    return 2_000_000_000.0 - next(_clock)


def account(username: str, is_admin: bool = False) -> dict[str, Any]:
    """A new account record."""
    return {
        "id": records.new_id(), "username": username,
        "endpoint": "http://127.0.0.1:9090/" + username,
        "api_key": "pbkdf2:sha256:1$salt$" + username, "secret_key": "s" * 40,
        "is_admin": is_admin, "failed_count": 0, "epoch": _epoch(),
    }


def registration(account_id: str, event: str = "push") -> dict[str, Any]:
    """A new registration record."""
    return {
        "id": records.new_id(), "account_id": account_id, "event": event,
        "description": "a hook", "event_data": {"message": "hello", "items": [1, {"é": None}]},
        "epoch": _epoch(),
    }


def subscription(account_id: str, registration_id: str) -> dict[str, Any]:
    """A new subscription record."""
    return {
        "id": records.new_id(), "account_id": account_id,
        "registration_id": registration_id, "epoch": _epoch(),
    }


def firing(registration_id: str) -> dict[str, Any]:
    """A new firing record."""
    return {"id": records.new_id(), "registration_id": registration_id, "epoch": _epoch()}


def delivery(fired: dict[str, Any], subscribed: dict[str, Any]) -> dict[str, Any]:
    """A new pending delivery of ``fired`` to the subscriber of ``subscribed``."""
    return {
        "id": records.new_id(), "firing_id": fired["id"],
        "registration_id": fired["registration_id"], "subscription_id": subscribed["id"],
        "account_id": subscribed["account_id"], "event": "push",
        "endpoint": "http://127.0.0.1:9090/x", "state": "pending", "attempts": [],
        "epoch": _epoch(),
    }


def attempt(number: int, ok: bool) -> dict[str, Any]:
    """An attempt log entry."""
    return {
        "attempt": number, "at": 1700000000.5 + number, "ok": ok,
        "status_code": 200 if ok else 500, "error": None if ok else "HTTP 500",
        "duration": 0.25,
    }


# -- fixtures -------------------------------------------------------------------


@pytest_twisted.async_yield_fixture(params=list(STORES))
async def opened_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[IStore | BaseException]:
    """An empty, open store of each implementation, or why it could not be built.

    pytest-twisted leaves a parametrized async fixture broken for the next
    parameter when its set-up raises (a skip included), so the failure is
    handed to ``store`` to raise instead.
    """
    async with contextlib.AsyncExitStack() as stack:
        built: IStore | BaseException
        try:
            built = await stack.enter_async_context(STORES[request.param](tmp_path))
        except (Exception, pytest.skip.Exception) as error:
            built = error
        yield built


@pytest.fixture
def store(opened_store: IStore | BaseException) -> IStore:
    """An empty, open store of each implementation (skipped when one is unavailable)."""
    if isinstance(opened_store, BaseException):
        raise opened_store
    return opened_store


async def _users(store: IStore, *names: str) -> list[dict[str, Any]]:
    made = [account(name) for name in names]
    for record in made:
        await store.insert_account(record)
    return made


async def _all(list_page: Any, limit: int = 3, **filters: Any) -> list[dict[str, Any]]:
    """Every row of a list, walking pages with ``next_start`` like a client."""
    rows: list[dict[str, Any]] = []
    start = 0
    while True:
        page = await list_page(start, limit, **filters)
        rows.extend(page.rows)
        if not page.more:
            return rows
        start += limit


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


async def _cascade_setup(store: IStore) -> dict[str, Any]:
    """john and jane own a registration each; four accounts subscribe to
    john's, leah also to jane's (the original's cascade scenario)."""
    admin = account("admin", is_admin=True)
    await store.insert_account(admin)
    john, jane, leah, mary = await _users(store, "john", "jane", "leah", "mary")
    johns, janes = registration(john["id"]), registration(jane["id"])
    await store.insert_registration(johns)
    await store.insert_registration(janes)
    to_john = [subscription(who["id"], johns["id"]) for who in (john, jane, leah, mary)]
    to_jane = subscription(leah["id"], janes["id"])
    for record in [*to_john, to_jane]:
        await store.insert_subscription(record)
    return dict(admin=admin, john=john, jane=jane, leah=leah, mary=mary,
                johns=johns, janes=janes, to_john=to_john, to_jane=to_jane)


# -- interface ------------------------------------------------------------------


def test_implements_istore(store: IStore) -> None:
    """Every store provides the whole IStore interface."""
    assert verifyObject(IStore, store)


# -- accounts -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_account_round_trip(store: IStore) -> None:
    """An inserted account reads back with exactly the same keys and values, by id and name."""
    record = account("alice", is_admin=True)
    await store.insert_account(record)
    assert await store.get_account(record["id"]) == record
    assert await store.get_account_by_username("alice") == record
    got = await store.get_account(record["id"])
    assert type(got["is_admin"]) is bool and type(got["failed_count"]) is int


@pytest_twisted.ensureDeferred
async def test_unknown_ids_read_as_none(store: IStore) -> None:
    """Reading an id or a username that does not exist answers None."""
    await _users(store, "alice")
    unknown = records.new_id()
    assert await store.get_account(unknown) is None
    assert await store.get_account_by_username("ALICE") is None
    assert await store.get_registration(unknown) is None
    assert await store.get_subscription(unknown) is None
    assert await store.get_deliveries(unknown) == []


@pytest_twisted.ensureDeferred
async def test_records_are_copies(store: IStore) -> None:
    """Changing a dict given to or returned by the store never changes what it holds."""
    (alice,) = await _users(store, "alice")
    expected = dict(alice)
    alice["username"] = "mallory"
    got = await store.get_account(expected["id"])
    got["endpoint"] = "http://evil"
    (await store.list_accounts(0, 10)).rows[0]["failed_count"] = 99
    assert await store.get_account(expected["id"]) == expected

    hook = registration(expected["id"])
    await store.insert_registration(hook)
    hook["event_data"]["message"] = "changed"
    (await store.get_registration(hook["id"]))["event_data"]["items"].append(3)
    assert (await store.get_registration(hook["id"]))["event_data"] == {
        "message": "hello", "items": [1, {"é": None}]}


@pytest_twisted.ensureDeferred
async def test_duplicate_username_rejected(store: IStore) -> None:
    """A second account with a taken username fails with DuplicateUsername and is not stored."""
    await _users(store, "alice")
    with pytest.raises(DuplicateUsername):
        await store.insert_account(account("alice"))
    assert await store.count_accounts() == 1
    await store.insert_account(account("Alice"))
    assert await store.count_accounts() == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_duplicate_usernames(store: IStore) -> None:
    """Of two simultaneous sign-ups with the same username exactly one wins."""
    first, second = account("bob"), account("bob")
    results = await DeferredList(
        [Deferred.fromCoroutine(store.insert_account(r)) for r in (first, second)],
        consumeErrors=True,
    )
    failures = [result for ok, result in results if not ok]
    assert len(failures) == 1 and failures[0].check(DuplicateUsername)
    assert await store.count_accounts() == 1
    winner = await store.get_account_by_username("bob")
    assert winner in (first, second)


@pytest_twisted.ensureDeferred
async def test_malformed_records_rejected(store: IStore) -> None:
    """A record with a missing or an unknown field is refused, not half-stored."""
    incomplete = account("alice")
    del incomplete["failed_count"]
    with pytest.raises(ValueError):
        await store.insert_account(incomplete)
    extra = dict(account("alice"), colour="red")
    with pytest.raises(ValueError):
        await store.insert_account(extra)
    assert await store.count_accounts() == 0


@pytest_twisted.ensureDeferred
async def test_update_account_results(store: IStore) -> None:
    """An update answers replaced when it changes the row, unchanged when not, skipped
    when there is no such row."""
    (alice,) = await _users(store, "alice")
    changes = {"endpoint": "http://127.0.0.1:9090/new", "failed_count": 0}
    assert await store.update_account(alice["id"], changes) == WriteResult(replaced=1)
    assert await store.update_account(alice["id"], changes) == WriteResult(unchanged=1)
    assert await store.update_account(alice["id"], {}) == WriteResult(unchanged=1)
    assert await store.update_account(records.new_id(), changes) == WriteResult(skipped=1)
    assert await store.get_account(alice["id"]) == dict(alice, **changes)


@pytest_twisted.ensureDeferred
async def test_update_account_keeps_usernames_unique(store: IStore) -> None:
    """Renaming an account to a taken username fails; unknown fields are refused."""
    alice, bob = await _users(store, "alice", "bob")
    with pytest.raises(DuplicateUsername):
        await store.update_account(bob["id"], {"username": "alice"})
    assert await store.update_account(alice["id"], {"username": "alice"}) == WriteResult(
        unchanged=1)
    with pytest.raises(ValueError):
        await store.update_account(bob["id"], {"colour": "red"})
    with pytest.raises(ValueError):
        await store.update_account(bob["id"], {"id": records.new_id()})
    assert await store.get_account(bob["id"]) == bob


@pytest_twisted.ensureDeferred
async def test_update_registration(store: IStore) -> None:
    """A registration's description and payload can be changed; the same values are unchanged."""
    (alice,) = await _users(store, "alice")
    hook = registration(alice["id"])
    await store.insert_registration(hook)
    assert await store.get_registration(hook["id"]) == hook
    changes = {"description": "new text", "event_data": {"a": [1, 2.5, None, True]}}
    assert await store.update_registration(hook["id"], changes) == WriteResult(replaced=1)
    assert await store.update_registration(hook["id"], changes) == WriteResult(unchanged=1)
    assert await store.update_registration(records.new_id(), changes) == WriteResult(skipped=1)
    assert await store.get_registration(hook["id"]) == dict(hook, **changes)


@pytest_twisted.ensureDeferred
async def test_count_methods(store: IStore) -> None:
    """Counts follow inserts and deletes, per account where the method takes one."""
    assert await store.count_accounts() == 0
    alice, bob = await _users(store, "alice", "bob")
    hooks = [registration(alice["id"]) for _ in range(3)]
    for hook in hooks:
        await store.insert_registration(hook)
    subs = [subscription(bob["id"], hooks[0]["id"]) for _ in range(2)]
    for record in subs:
        await store.insert_subscription(record)
    assert await store.count_accounts() == 2
    assert await store.count_registrations(alice["id"]) == 3
    assert await store.count_registrations(bob["id"]) == 0
    assert await store.count_subscriptions(bob["id"]) == 2
    assert await store.count_subscriptions(alice["id"]) == 0
    await store.delete_subscription(subs[0]["id"])
    await store.delete_registration(hooks[1]["id"])
    assert await store.count_subscriptions(bob["id"]) == 1
    assert await store.count_registrations(alice["id"]) == 2


# -- deletes and cascades ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_account_cascades(store: IStore) -> None:
    """Deleting john's account removes his subscriptions, his registration and every
    subscription to it; jane's registration and leah's subscription to it survive."""
    s = await _cascade_setup(store)
    fired = firing(s["johns"]["id"])
    await store.insert_firing(fired, [])
    assert await store.delete_account(s["john"]["id"]) == WriteResult(deleted=1)
    assert await store.get_account(s["john"]["id"]) is None
    assert _ids(await _all(store.list_registrations)) == [s["janes"]["id"]]
    assert _ids(await _all(store.list_subscriptions)) == [s["to_jane"]["id"]]
    assert _ids(await _all(store.list_firings)) == [fired["id"]]
    assert await store.count_accounts() == 4
    assert await store.delete_account(s["john"]["id"]) == WriteResult(skipped=1)


@pytest_twisted.ensureDeferred
async def test_delete_registration_cascades(store: IStore) -> None:
    """Deleting john's registration removes every subscription to it and nothing else."""
    s = await _cascade_setup(store)
    fired = firing(s["johns"]["id"])
    await store.insert_firing(fired, [])
    assert await store.delete_registration(s["johns"]["id"]) == WriteResult(deleted=1)
    assert _ids(await _all(store.list_registrations)) == [s["janes"]["id"]]
    assert _ids(await _all(store.list_subscriptions)) == [s["to_jane"]["id"]]
    assert _ids(await _all(store.list_firings)) == [fired["id"]]
    assert await store.count_accounts() == 5
    assert await store.delete_registration(s["johns"]["id"]) == WriteResult(skipped=1)


@pytest_twisted.ensureDeferred
async def test_delete_subscription(store: IStore) -> None:
    """Deleting one subscription answers deleted 1, then skipped 1; its duplicates stay."""
    s = await _cascade_setup(store)
    twin = subscription(s["leah"]["id"], s["janes"]["id"])
    await store.insert_subscription(twin)
    assert await store.delete_subscription(s["to_jane"]["id"]) == WriteResult(deleted=1)
    assert await store.delete_subscription(s["to_jane"]["id"]) == WriteResult(skipped=1)
    assert await store.get_subscription(s["to_jane"]["id"]) is None
    assert await store.get_subscription(twin["id"]) == twin


@pytest_twisted.ensureDeferred
async def test_bulk_deletes_do_not_cascade(store: IStore) -> None:
    """Admin bulk deletes remove only their own table and count what they removed."""
    s = await _cascade_setup(store)
    assert await store.delete_non_admin_accounts() == WriteResult(deleted=4)
    assert _ids(await _all(store.list_accounts)) == [s["admin"]["id"]]
    assert await store.count_registrations(s["john"]["id"]) == 1
    assert len(await _all(store.list_subscriptions)) == 5

    assert await store.delete_all_registrations() == WriteResult(deleted=2)
    assert await _all(store.list_registrations) == []
    assert len(await _all(store.list_subscriptions)) == 5

    assert await store.delete_all_subscriptions() == WriteResult(deleted=5)
    assert await _all(store.list_subscriptions) == []
    assert await store.count_accounts() == 1


@pytest_twisted.ensureDeferred
async def test_bulk_deletes_on_empty_tables(store: IStore) -> None:
    """Bulk deletes with nothing to delete answer all zeros."""
    await store.insert_account(account("admin", is_admin=True))
    assert await store.delete_non_admin_accounts() == WriteResult()
    assert await store.delete_all_registrations() == WriteResult()
    assert await store.delete_all_subscriptions() == WriteResult()


@pytest_twisted.ensureDeferred
async def test_initialize_drop(store: IStore) -> None:
    """initialize(drop=False) keeps the records; initialize(drop=True) empties the store."""
    await _cascade_setup(store)
    await store.initialize(drop=False)
    assert await store.count_accounts() == 5
    await store.initialize(drop=True)
    assert await store.count_accounts() == 0
    assert await _all(store.list_subscriptions) == []
    await _users(store, "john")
    assert await store.count_accounts() == 1


# -- pagination -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pages_in_creation_order(store: IStore) -> None:
    """Pages list rows in creation order and say exactly whether one more row follows."""
    made = await _users(store, *("user%d" % i for i in range(7)))
    ids = _ids(made)
    pages = [await store.list_accounts(start, 3) for start in (0, 3, 6, 7, 100)]
    assert [_ids(p.rows) for p in pages] == [ids[0:3], ids[3:6], ids[6:7], [], []]
    assert [p.more for p in pages] == [True, True, False, False, False]
    assert pages[0].rows == made[0:3]
    assert isinstance(pages[0], Page)
    # Page boundaries exactly at the end of the list.
    assert (await store.list_accounts(4, 3)).more is False
    assert (await store.list_accounts(3, 3)).more is True
    assert (await store.list_accounts(0, 7)).more is False
    assert (await store.list_accounts(0, 6)).more is True
    # Jumps to arbitrary positions.
    assert _ids((await store.list_accounts(5, 1)).rows) == [ids[5]]
    assert _ids((await store.list_accounts(2, 4)).rows) == ids[2:6]


@pytest_twisted.ensureDeferred
async def test_pages_reject_bad_bounds(store: IStore) -> None:
    """A negative start or a limit below 1 is a programming error (ValueError)."""
    with pytest.raises(ValueError):
        await store.list_accounts(-1, 10)
    with pytest.raises(ValueError):
        await store.list_registrations(0, 0)


@pytest_twisted.ensureDeferred
async def test_deep_pages_after_changes(store: IStore) -> None:
    """Walking pages stays exact after rows are deleted or added between the walks."""
    (alice,) = await _users(store, "alice")
    hook = registration(alice["id"])
    await store.insert_registration(hook)
    subs = [subscription(alice["id"], hook["id"]) for _ in range(25)]
    for record in subs:
        await store.insert_subscription(record)
    assert await _all(store.list_subscriptions, limit=4) == subs
    assert _ids((await store.list_subscriptions(12, 4)).rows) == _ids(subs[12:16])

    for gone in (subs[0], subs[5], subs[13], subs[24]):
        await store.delete_subscription(gone["id"])
        subs.remove(gone)
    # Straight to positions a client walked to before the deletes.
    assert _ids((await store.list_subscriptions(12, 4)).rows) == _ids(subs[12:16])
    assert _ids((await store.list_subscriptions(8, 4)).rows) == _ids(subs[8:12])
    assert (await store.list_subscriptions(20, 4)) == Page(rows=[subs[20]], more=False)
    assert await _all(store.list_subscriptions, limit=4) == subs

    more = [subscription(alice["id"], hook["id"]) for _ in range(3)]
    for record in more:
        await store.insert_subscription(record)
    subs.extend(more)
    assert await _all(store.list_subscriptions, limit=4) == subs
    assert _ids((await store.list_subscriptions(20, 4)).rows) == _ids(subs[20:24])
    page = await store.list_subscriptions(20, 4)
    assert page.more is False and len(subs) == 24

    assert await store.delete_all_subscriptions() == WriteResult(deleted=24)
    assert (await store.list_subscriptions(20, 4)) == Page(rows=[], more=False)
    assert (await store.list_subscriptions(0, 4)) == Page(rows=[], more=False)


@pytest_twisted.ensureDeferred
async def test_filtered_pages_after_cascade(store: IStore) -> None:
    """A filtered list walked before and after a cascade delete shows exactly what is left."""
    alice, bob = await _users(store, "alice", "bob")
    hooks = [registration(who["id"]) for who in (alice, bob) * 5]
    for hook in hooks:
        await store.insert_registration(hook)
    mine = [h for h in hooks if h["account_id"] == alice["id"]]
    assert await _all(store.list_registrations, limit=2, account_id=alice["id"]) == mine
    assert (await store.list_registrations(4, 2, account_id=alice["id"])).rows == mine[4:]
    await store.delete_registration(mine[1]["id"])
    mine.pop(1)
    assert (await store.list_registrations(2, 2, account_id=alice["id"])) == Page(
        rows=mine[2:4], more=False)
    assert await _all(store.list_registrations, limit=2, account_id=alice["id"]) == mine


# -- list filters -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_registrations_filter(store: IStore) -> None:
    """Registrations list all, or only the given owner's."""
    s = await _cascade_setup(store)
    assert _ids(await _all(store.list_registrations)) == [s["johns"]["id"], s["janes"]["id"]]
    assert _ids(await _all(store.list_registrations, account_id=s["jane"]["id"])) == [
        s["janes"]["id"]]
    assert await _all(store.list_registrations, account_id=s["mary"]["id"]) == []


@pytest_twisted.ensureDeferred
async def test_list_subscriptions_filters(store: IStore) -> None:
    """Subscriptions list by subscriber, or those visible to an account: its own and
    those to registrations it owns."""
    s = await _cascade_setup(store)
    to_john, to_jane = s["to_john"], s["to_jane"]
    leah, jane, john = s["leah"]["id"], s["jane"]["id"], s["john"]["id"]
    assert _ids(await _all(store.list_subscriptions)) == _ids([*to_john, to_jane])
    assert _ids(await _all(store.list_subscriptions, account_id=leah)) == _ids(
        [to_john[2], to_jane])
    assert _ids(await _all(store.list_subscriptions, visible_to=john)) == _ids(to_john)
    assert _ids(await _all(store.list_subscriptions, visible_to=jane)) == _ids(
        [to_john[1], to_jane])
    assert _ids(await _all(store.list_subscriptions, visible_to=s["admin"]["id"])) == []
    assert _ids(await _all(store.list_subscriptions, account_id=leah, visible_to=jane)) == _ids(
        [to_jane])


@pytest_twisted.ensureDeferred
async def test_list_firings_filter(store: IStore) -> None:
    """Firings list all, or only those of registrations the given account owns."""
    s = await _cascade_setup(store)
    fired = [firing(h["id"]) for h in (s["johns"], s["janes"], s["johns"])]
    for record in fired:
        await store.insert_firing(record, [])
    assert await _all(store.list_firings, limit=2) == fired
    assert await _all(store.list_firings, owner_id=s["john"]["id"]) == [fired[0], fired[2]]
    assert await _all(store.list_firings, owner_id=s["jane"]["id"]) == [fired[1]]
    assert await _all(store.list_firings, owner_id=s["leah"]["id"]) == []


@pytest_twisted.ensureDeferred
async def test_subscribers_skip_orphans(store: IStore) -> None:
    """The fan-out lists live subscribers in subscription order (duplicates included)
    and skips subscriptions whose account is gone."""
    s = await _cascade_setup(store)
    again = subscription(s["leah"]["id"], s["johns"]["id"])
    await store.insert_subscription(again)
    await store.update_account(s["leah"]["id"], {"failed_count": 3})
    fan_out = await store.subscribers(s["johns"]["id"])
    expected_ids = _ids([*s["to_john"], again])
    assert [f["subscription_id"] for f in fan_out] == expected_ids
    leah = s["leah"]
    assert fan_out[2] == {
        "subscription_id": s["to_john"][2]["id"], "account_id": leah["id"],
        "endpoint": leah["endpoint"], "secret_key": leah["secret_key"], "failed_count": 3,
    }
    await store.delete_non_admin_accounts()
    assert await store.subscribers(s["johns"]["id"]) == []
    await store.insert_account(s["jane"])
    assert [f["account_id"] for f in await store.subscribers(s["johns"]["id"])] == [
        s["jane"]["id"]]
    assert await store.subscribers(records.new_id()) == []


# -- firings, deliveries, attempts ---------------------------------------------------


async def _fired(store: IStore) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    s = await _cascade_setup(store)
    fired = firing(s["johns"]["id"])
    deliveries = [delivery(fired, sub) for sub in s["to_john"]]
    await store.insert_firing(fired, deliveries)
    return fired, deliveries, s


@pytest_twisted.ensureDeferred
async def test_insert_firing_and_deliveries(store: IStore) -> None:
    """A firing and its deliveries are stored together and read back in creation order."""
    fired, deliveries, _ = await _fired(store)
    assert (await store.list_firings(0, 10)).rows == [fired]
    assert await store.get_deliveries(fired["id"]) == deliveries
    other = firing(fired["registration_id"])
    await store.insert_firing(other, [])
    assert await store.get_deliveries(other["id"]) == []


@pytest_twisted.ensureDeferred
async def test_deliveries_of_one_firing_may_differ_in_any_field(store: IStore) -> None:
    """Deliveries written together come back field for field, whether a field
    is the same in all of them or not (a JSON log, an exact epoch, a state)."""
    s = await _cascade_setup(store)
    fired = firing(s["johns"]["id"])
    plain, logged, other = (delivery(fired, sub) for sub in s["to_john"][:3])
    logged.update(attempts=[attempt(1, False)], state="failed", epoch=1733512345.123457, event="")
    other.update(endpoint="http://127.0.0.1:9091/y", epoch=plain["epoch"] + 1)
    await store.insert_firing(fired, [plain, logged, other])
    assert await store.get_deliveries(fired["id"]) == [plain, logged, other]


@pytest_twisted.ensureDeferred
async def test_insert_firing_is_all_or_nothing(store: IStore) -> None:
    """When one delivery cannot be stored (its id repeats one of its firing's),
    neither the firing nor any delivery is."""
    fired, deliveries, s = await _fired(store)
    again = firing(fired["registration_id"])
    first = delivery(again, s["to_john"][0])
    clash = [first, dict(delivery(again, s["to_john"][1]), id=first["id"])]
    with pytest.raises(StoreError):
        await store.insert_firing(again, clash)
    assert _ids(await _all(store.list_firings)) == [fired["id"]]
    assert await store.get_deliveries(again["id"]) == []
    broken = delivery(again, s["to_john"][0])
    del broken["state"]
    with pytest.raises(ValueError):
        await store.insert_firing(again, [broken])
    assert _ids(await _all(store.list_firings)) == [fired["id"]]


@pytest_twisted.ensureDeferred
async def test_record_attempt_counts_failures(store: IStore) -> None:
    """Each failed attempt adds 1 to the subscriber's failed_count and a success resets it
    to 0, while the delivery logs every attempt and moves pending -> failed/delivered."""
    fired, deliveries, s = await _fired(store)
    first, second = deliveries[0], deliveries[1]
    john = first["account_id"]
    assert await store.record_attempt(fired["id"], first["id"], john, attempt(1, False), False) == 1
    assert await store.record_attempt(fired["id"], first["id"], john, attempt(2, False), False) == 2
    assert (await store.get_account(john))["failed_count"] == 2
    now = {d["id"]: d for d in await store.get_deliveries(fired["id"])}
    assert now[first["id"]]["state"] == "pending"
    assert now[first["id"]]["attempts"] == [attempt(1, False), attempt(2, False)]

    assert await store.record_attempt(fired["id"], first["id"], john, attempt(3, False), True) == 3
    now = {d["id"]: d for d in await store.get_deliveries(fired["id"])}
    assert now[first["id"]]["state"] == "failed"
    assert len(now[first["id"]]["attempts"]) == 3

    jane = second["account_id"]
    await store.record_attempt(fired["id"], second["id"], jane, attempt(1, False), False)
    assert await store.record_attempt(fired["id"], second["id"], jane, attempt(2, True), False) == 0
    now = {d["id"]: d for d in await store.get_deliveries(fired["id"])}
    assert now[second["id"]]["state"] == "delivered"
    assert now[second["id"]]["attempts"] == [attempt(1, False), attempt(2, True)]
    assert now[deliveries[2]["id"]] == deliveries[2]
    assert (await store.get_account(john))["failed_count"] == 3


@pytest_twisted.ensureDeferred
async def test_record_attempt_without_account(store: IStore) -> None:
    """An attempt for an account that is gone is still logged and answers None."""
    fired, deliveries, s = await _fired(store)
    target = deliveries[3]
    await store.delete_non_admin_accounts()
    assert await store.record_attempt(fired["id"], target["id"], target["account_id"],
                                      attempt(1, False), True) is None
    (logged,) = [d for d in await store.get_deliveries(fired["id"]) if d["id"] == target["id"]]
    assert logged["state"] == "failed" and logged["attempts"] == [attempt(1, False)]


@pytest_twisted.ensureDeferred
async def test_record_attempt_names_a_delivery_by_its_firing_and_id(store: IStore) -> None:
    """An attempt names its delivery within its firing: named with another
    firing, it is logged on no delivery of either."""
    fired, deliveries, s = await _fired(store)
    other = firing(fired["registration_id"])
    await store.insert_firing(other, [])
    target = deliveries[0]
    await store.record_attempt(other["id"], target["id"], target["account_id"], attempt(1, True), False)
    assert await store.get_deliveries(fired["id"]) == deliveries
    await store.record_attempt(fired["id"], target["id"], target["account_id"], attempt(2, True), False)
    (logged, *_) = await store.get_deliveries(fired["id"])
    assert (logged["state"], logged["attempts"]) == ("delivered", [attempt(2, True)])


@pytest_twisted.ensureDeferred
async def test_record_attempt_is_atomic(store: IStore) -> None:
    """Many simultaneous failed attempts each count once and each get logged."""
    fired, deliveries, s = await _fired(store)
    target = deliveries[0]
    counts = await gatherResults([
        ensureDeferred(store.record_attempt(
            fired["id"], d["id"], target["account_id"], attempt(n, False), False))
        for n in range(40) for d in (target, deliveries[1])
    ])
    assert sorted(counts) == list(range(1, 81))
    assert (await store.get_account(target["account_id"]))["failed_count"] == 80
    logged = {d["id"]: d for d in await store.get_deliveries(fired["id"])}
    assert sorted(a["attempt"] for a in logged[target["id"]]["attempts"]) == list(range(40))


# -- SQLite only ----------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the SQLite-only tests keep their file."""
    return tmp_path / "pywebhooks.sqlite3"


async def _sqlite(path: Path | str, initialize: bool = True) -> SQLiteStore:
    store = SQLiteStore(sqlite_database(path))
    if initialize:
        await store.initialize(drop=True)
    else:
        await store.open()
    return store


@pytest_twisted.ensureDeferred
async def test_sqlite_logs_attempts_in_a_database_made_before_deliveries_lookup(db_path: Path) -> None:
    """A database from before the ``deliveries_lookup`` index (delivery ids
    had a unique index of their own) still logs attempts, each found by that
    index rather than by a walk through its firing's deliveries."""
    store = await _sqlite(db_path)
    await store.close()
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        connection.execute("DROP INDEX deliveries_lookup")
        connection.execute("CREATE UNIQUE INDEX earlier_ids ON deliveries (id)")
        connection.commit()
    store = await _sqlite(db_path, initialize=False)
    try:
        fired, deliveries, _ = await _fired(store)
        target = deliveries[1]
        await store.record_attempt(fired["id"], target["id"], target["account_id"], attempt(1, True), False)
        logged = {d["id"]: d for d in await store.get_deliveries(fired["id"])}
        assert logged[target["id"]]["attempts"] == [attempt(1, True)]
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(db_path)) as connection:
        plan = " ".join(row[3] for row in connection.execute(
            "EXPLAIN QUERY PLAN " + attempt_log._LOG_ATTEMPTS, ("[]",)))
    assert "SEARCH deliveries USING INDEX earlier_ids" in plan, plan


@pytest_twisted.ensureDeferred
async def test_sqlite_survives_reopen(db_path: Path) -> None:
    """Everything written is still there after the store is closed and opened again."""
    store = await _sqlite(db_path)
    s = await _cascade_setup(store)
    fired = firing(s["johns"]["id"])
    await store.insert_firing(fired, [delivery(fired, s["to_john"][0])])
    await store.close()

    again = await _sqlite(db_path, initialize=False)
    try:
        assert await again.get_account(s["leah"]["id"]) == s["leah"]
        assert await again.get_registration(s["johns"]["id"]) == s["johns"]
        assert len(await again.get_deliveries(fired["id"])) == 1
        assert len(await _all(again.list_subscriptions)) == 5
    finally:
        await again.close()
    # The same store object can be opened again too.
    await store.open()
    try:
        assert await store.count_accounts() == 5
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_open_without_schema(db_path: Path) -> None:
    """Opening a database that was never initialised fails with DatabaseMissing."""
    store = SQLiteStore(sqlite_database(db_path))
    with pytest.raises(DatabaseMissing):
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.count_accounts()
    await store.initialize(drop=False)
    try:
        assert await store.count_accounts() == 0
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_initialize_keeps_other_tables(db_path: Path) -> None:
    """initialize(drop=True) drops only the store's tables, not the ledger's."""
    store = await _sqlite(db_path)
    try:
        await store._database.run(lambda c: c.execute(
            "CREATE TABLE pending_deliveries (id TEXT PRIMARY KEY)"))
        await store._database.run(lambda c: c.execute(
            "INSERT INTO pending_deliveries VALUES ('x')"))
        await _users(store, "alice")
        await store.initialize(drop=True)
        assert await store.count_accounts() == 0
        left = await store._database.run(lambda c: c.execute(
            "SELECT count(*) FROM pending_deliveries").fetchone()[0])
        assert left == 1
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_does_not_block_the_reactor(db_path: Path) -> None:
    """While the database thread is busy in a write, writes wait without blocking
    the reactor, and reads are answered at once from the last commit."""
    from twisted.internet import reactor

    store = await _sqlite(db_path)
    try:
        (alice,) = await _users(store, "alice")
        busy, release = threading.Event(), threading.Event()

        def hold(connection: sqlite3.Connection) -> None:
            connection.execute("UPDATE accounts SET endpoint = 'http://uncommitted/' WHERE id = ?",
                               (alice["id"],))
            busy.set()
            assert release.wait(10)

        held = Deferred.fromCoroutine(store._database.run(hold))
        try:
            assert busy.wait(10)
            write = Deferred.fromCoroutine(store.insert_account(account("bob")))
            read = Deferred.fromCoroutine(store.get_account(alice["id"]))
            assert read.called and read.result == alice  # not the uncommitted endpoint
            ticked: Deferred[None] = Deferred()
            reactor.callLater(0.05, ticked.callback, None)
            await ticked  # the reactor keeps turning while the database is held
            assert not write.called
        finally:
            release.set()
        await held
        await write
        assert (await store.get_account(alice["id"]))["endpoint"] == "http://uncommitted/"
        assert await store.count_accounts() == 2
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_read_only_file(db_path: Path) -> None:
    """A database opened read-only serves reads and answers StoreUnavailable to writes."""
    store = await _sqlite(db_path)
    await _users(store, "alice")
    await store.close()
    read_only = await _sqlite("file:%s?mode=ro" % (db_path,), initialize=False)
    try:
        assert await read_only.count_accounts() == 1
        with pytest.raises(StoreUnavailable, match="readonly"):
            await read_only.insert_account(account("bob"))
        with pytest.raises(StoreUnavailable, match="readonly"):
            await read_only.delete_non_admin_accounts()
        assert await read_only.count_accounts() == 1
    finally:
        await read_only.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_full_disk(db_path: Path) -> None:
    """When the file cannot grow, writes answer StoreUnavailable and the store recovers
    once there is room again."""
    store = await _sqlite(db_path)
    try:
        (alice,) = await _users(store, "alice")
        hook = registration(alice["id"])
        await store.insert_registration(hook)
        pages = await store._database.run(
            lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await store._database.run(lambda c: c.execute("PRAGMA max_page_count = %d" % pages))
        with pytest.raises(StoreUnavailable, match="full"):
            for _ in range(200):
                big = registration(alice["id"])
                big["event_data"] = {"blob": "x" * 4000}
                await store.insert_registration(big)
        stored = await store.count_registrations(alice["id"])
        await store._database.run(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        await store.insert_registration(registration(alice["id"]))
        assert await store.count_registrations(alice["id"]) == stored + 1
        assert await store.get_registration(hook["id"]) == hook
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_unreachable_directory(tmp_path: Path) -> None:
    """A database file in a directory that no longer exists answers StoreUnavailable."""
    gone = tmp_path / "gone"
    gone.mkdir()
    os.rmdir(gone)
    store = SQLiteStore(sqlite_database(gone / "db.sqlite3"))
    with pytest.raises(StoreUnavailable, match="unable to open"):
        await store.open()
    with pytest.raises(StoreUnavailable, match="unable to open"):
        await store.initialize(drop=True)


@pytest_twisted.ensureDeferred
async def test_sqlite_queries_use_indexes(db_path: Path) -> None:
    """Every lookup, filtered list, fan-out and cascade reads through an index, never a
    scan of a whole table."""
    store = await _sqlite(db_path)
    statements: list[str] = []
    try:
        s = await _cascade_setup(store)
        fired = firing(s["johns"]["id"])
        deliveries = [delivery(fired, sub) for sub in s["to_john"]]
        await store.insert_firing(fired, deliveries)
        await store._database.trace(statements.append)
        john = s["john"]["id"]
        await store.get_account(john)
        await store.get_account_by_username("john")
        await store.update_account(john, {"endpoint": "http://127.0.0.1:1/"})
        await store.count_registrations(john)
        await store.count_subscriptions(john)
        await store.list_registrations(1, 2, account_id=john)
        await store.list_subscriptions(1, 2, account_id=john)
        await store.list_subscriptions(1, 2, visible_to=john)
        await store.list_firings(1, 2, owner_id=john)
        await store.list_accounts(2, 2)
        await store.list_accounts(4, 2)
        await store.subscribers(s["johns"]["id"])
        await store.get_deliveries(fired["id"])
        await store.record_attempt(fired["id"], deliveries[0]["id"], john, attempt(1, False), False)
        await store.delete_subscription(s["to_jane"]["id"])
        await store.delete_registration(s["janes"]["id"])
        await store.delete_account(john)
        await store._database.trace(None)

        def plans(connection: sqlite3.Connection) -> list[tuple[str, str]]:
            found = []
            for statement in statements:
                if statement.split()[0].upper() not in ("SELECT", "UPDATE", "DELETE"):
                    continue
                for row in connection.execute("EXPLAIN QUERY PLAN " + statement):
                    found.append((statement, row[3]))
            return found

        found = await store._database.run(plans)
        assert len(found) > 20
        scans = [(sql, plan) for sql, plan in found
                 if plan.startswith("SCAN") and "INDEX" not in plan]
        assert scans == []
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_deep_pages_are_walked_off_the_reactor(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page that has to skip more than LONG_SKIP rows to find its start is
    read on the database thread (the walk does not stop the reactor); nearer
    pages are read at once on the calling thread.  Both give the right rows."""
    monkeypatch.setattr(sqlite_store, "LONG_SKIP", 20)
    store = await _sqlite(db_path)
    try:
        names = ["user%02d" % (n,) for n in range(30)]
        await _users(store, *names)
        offset_walks: list[int] = []

        def trace(statement: str) -> None:
            if "OFFSET" in statement:
                offset_walks.append(threading.get_ident())

        await store._database.trace(trace)
        deep = await store.list_accounts(25, 3)
        near = await store.list_accounts(10, 3)
        await store._database.trace(None)
        assert [row["username"] for row in deep.rows] == names[25:28]
        assert [row["username"] for row in near.rows] == names[10:13]
        here = threading.get_ident()
        assert len(offset_walks) == 2
        assert offset_walks[0] != here and offset_walks[1] == here
    finally:
        await store.close()


def test_page_cursors_remember_and_forget() -> None:
    """The cursor cache finds the nearest known position and forgets a table's positions
    after a delete, within its size bounds."""
    cursors = PageCursors(queries_per_table=2, positions_per_query=3)
    query = ("subscriptions", "")
    assert cursors.nearest(query, 50) == (0, 0)
    for position, seq in ((10, 100), (20, 200), (30, 300)):
        cursors.remember(query, position, seq)
    assert cursors.nearest(query, 25) == (20, 200)
    assert cursors.nearest(query, 30) == (30, 300)
    assert cursors.nearest(query, 5) == (0, 0)
    cursors.remember(query, 40, 400)  # evicts the least recently used position (10)
    assert cursors.nearest(query, 15) == (0, 0)
    other = ("registrations", "account_id = ?", "a")
    cursors.remember(other, 10, 7)
    before = cursors.generation
    cursors.forget("subscriptions")
    assert cursors.generation > before  # a page read across this forget keeps nothing
    assert cursors.nearest(query, 40) == (0, 0)
    assert cursors.nearest(other, 10) == (10, 7)
    for n in range(3):
        cursors.remember(("registrations", "account_id = ?", n), 5, n)
    assert cursors.nearest(other, 10) == (0, 0)
