"""What only the RethinkDB store does: a real server, its schema, outages, several daemons.

The behaviour every store shares is in ``test_store_behaviour.py``; these tests
start their own ``rethinkdb`` (see ``tests.support.rethinkdb_server``) and are
skipped when there is no binary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList
from zope.interface.verify import verifyObject

from pywebhooks import records
from pywebhooks.errors import DatabaseMissing, DuplicateUsername, StoreUnavailable
from pywebhooks.records import WriteResult
from pywebhooks.store.interface import IStore
from pywebhooks.store.rethinkdb import (
    INDEXES,
    SEQUENCES,
    USERNAMES,
    RethinkDBStore,
    parse_url,
)
from tests.support.rethinkdb_server import (  # noqa: F401
    RethinkDBServer,
    free_port,
    require_rethinkdb,
    rethinkdb_server,
    rethinkdb_store,
    shared_server,
)
from tests.test_store_behaviour import account, registration, subscription

# The driver's Twisted loop still uses ``returnValue`` (deprecated since Twisted
# 24.7); setup.cfg's ignore predates that message.
pytestmark = pytest.mark.filterwarnings(
    "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning:rethinkdb")


def _store(url: str, **options: Any) -> RethinkDBStore:
    from twisted.internet import reactor

    options.setdefault("timeout", 5.0)
    return RethinkDBStore(url, clock=reactor, **options)


@pytest.fixture
def binary() -> str:
    """The rethinkdb binary; skips here, before any async fixture starts, without one."""
    return require_rethinkdb()


@pytest_twisted.async_yield_fixture
async def store(binary: str, tmp_path: Path) -> AsyncIterator[RethinkDBStore]:
    """An empty, open store on the server shared by the test process."""
    async with rethinkdb_store(tmp_path) as opened:
        assert isinstance(opened, RethinkDBStore)
        yield opened


@pytest_twisted.async_yield_fixture
async def own_store(rethinkdb_server: RethinkDBServer) -> AsyncIterator[RethinkDBStore]:
    """An initialised store on a server of its own, for tests that stop the server."""
    opened = _store(rethinkdb_server.url("hooks"))
    await opened.initialize(drop=True)
    try:
        yield opened
    finally:
        await opened.close()


def _url(store: RethinkDBStore, database: str | None = None) -> str:
    """The URL of ``database`` (default: the store's) on the store's server."""
    return "rethinkdb://%s:%d/%s" % (
        store.address.host, store.address.port, database or store.address.database)


async def _sleep(seconds: float) -> None:
    from twisted.internet import reactor

    done: Deferred[None] = Deferred()
    reactor.callLater(seconds, done.callback, None)
    await done


async def _eventually(call: Callable[[], Awaitable[Any]], seconds: float = 15.0) -> Any:
    """``call()``'s answer, retried while it is StoreUnavailable: after a restart
    each table takes a moment to be ready."""
    for _ in range(int(seconds / 0.1)):
        try:
            return await call()
        except StoreUnavailable:
            await _sleep(0.1)
    pytest.fail("the store did not recover within %ss" % (seconds,))


def test_implements_istore() -> None:
    """The RethinkDB store provides the whole IStore interface (no server needed)."""
    assert verifyObject(IStore, RethinkDBStore("rethinkdb://127.0.0.1:1/hooks"))


def test_parse_url() -> None:
    """The --database URL gives host, port, database and credentials, with defaults."""
    full = parse_url("rethinkdb://hooks:p%40ss@db.example:29015/webhooks")
    assert (full.host, full.port, full.database, full.user, full.password) == (
        "db.example", 29015, "webhooks", "hooks", "p@ss")
    assert str(full) == "db.example:29015/webhooks"  # never the password
    short = parse_url("rethinkdb://127.0.0.1")
    assert (short.port, short.database, short.user, short.password) == (
        28015, "pywebhooks", "admin", "")
    for bad in ("redis://127.0.0.1:1/0", "rethinkdb:///x", "rethinkdb://h:1/bad.name",
                "rethinkdb://h:port/x"):
        with pytest.raises(ValueError):
            parse_url(bad)


# -- schema ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_open_without_database(store: RethinkDBStore) -> None:
    """Opening a database that was never initialised fails with DatabaseMissing, calls
    then answer StoreUnavailable, and initialize creates it."""
    fresh = _store(_url(store, "never_made"))
    with pytest.raises(DatabaseMissing, match="never_made does not exist"):
        await fresh.open()
    with pytest.raises(StoreUnavailable):
        await fresh.count_accounts()
    await fresh.initialize(drop=False)
    try:
        assert await fresh.count_accounts() == 0
        again = _store(_url(store, "never_made"))
        await again.open()
        await again.close()
    finally:
        await fresh._run(fresh.r.db_drop("never_made"))
        await fresh.close()


@pytest_twisted.ensureDeferred
async def test_open_without_a_table(store: RethinkDBStore) -> None:
    """A database that lacks some of the store's tables is reported as missing, by name."""
    r = store.r
    await store._run(r.db_create("partial"))
    try:
        await store._run(r.db("partial").table_create("accounts"))
        with pytest.raises(DatabaseMissing, match="no deliveries, registrations"):
            await _store(_url(store, "partial")).open()
    finally:
        await store._run(r.db_drop("partial"))


@pytest_twisted.ensureDeferred
async def test_open_without_an_index(store: RethinkDBStore) -> None:
    """A database that lacks one of the store's indexes is reported, by name, and
    initialize(drop=False) adds it back without touching the records."""
    await store.insert_account(account("alice"))
    table = store.r.db(store.address.database).table("subscriptions")
    await store._run(table.index_drop("visible_seq"))
    with pytest.raises(DatabaseMissing, match="lacks the index subscriptions.visible_seq"):
        await _store(_url(store)).open()
    await store.initialize(drop=False)
    assert "visible_seq" in await store._run(table.index_list())
    assert await store.count_accounts() == 1
    await _store(_url(store)).open()


@pytest_twisted.ensureDeferred
async def test_schema_has_every_index(store: RethinkDBStore) -> None:
    """initialize creates every table and every secondary index the queries read."""
    database = store.r.db(store.address.database)
    assert set(await store._run(database.table_list())) == set(INDEXES)
    for table, indexes in INDEXES.items():
        status = await store._run(database.table(table).index_status())
        assert {index["index"] for index in status} == set(indexes)
        assert all(index["ready"] for index in status)
    assert {row["id"] for row in await store._run(database.table(SEQUENCES))} == {
        "accounts", "registrations", "subscriptions", "triggered_webhooks", "deliveries"}


@pytest_twisted.ensureDeferred
async def test_initialize_keeps_other_tables(store: RethinkDBStore) -> None:
    """initialize(drop=True) drops only the store's tables in the database."""
    database = store.r.db(store.address.database)
    await store._run(database.table_create("someone_elses"))
    try:
        await store.insert_account(account("alice"))
        await store.initialize(drop=True)
        assert await store.count_accounts() == 0
        assert "someone_elses" in await store._run(database.table_list())
    finally:
        await store._run(database.table_drop("someone_elses"))


@pytest_twisted.ensureDeferred
async def test_rows_carry_no_extra_fields(store: RethinkDBStore) -> None:
    """The store's own columns (seq, owner_id) never reach a record."""
    alice = account("alice")
    await store.insert_account(alice)
    hook = registration(alice["id"])
    await store.insert_registration(hook)
    sub = subscription(alice["id"], hook["id"])
    await store.insert_subscription(sub)
    assert (await store.list_subscriptions(0, 5, visible_to=alice["id"])).rows == [sub]
    raw = await store._run(store.r.db(store.address.database).table("subscriptions")
                           .get(sub["id"]))
    assert raw["owner_id"] == alice["id"] and isinstance(raw["seq"], int)


# -- several daemons ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_usernames_unique_across_daemons(store: RethinkDBStore) -> None:
    """Two daemons signing up the same username at once: exactly one account is made."""
    other = _store(_url(store))
    await other.open()
    try:
        for round_ in range(5):
            name = "bob%d" % (round_,)
            results = await DeferredList([
                Deferred.fromCoroutine(each.insert_account(account(name)))
                for each in (store, other, store, other)
            ], consumeErrors=True)
            failures = [result for ok, result in results if not ok]
            assert len(failures) == 3
            assert all(failure.check(DuplicateUsername) for failure in failures)
        assert await other.count_accounts() == 5
    finally:
        await other.close()


@pytest_twisted.ensureDeferred
async def test_stale_username_claim_is_taken_over(store: RethinkDBStore) -> None:
    """A username claimed by a writer that died before writing its account is free
    again once the claim is older than the grace period, and not before."""
    r = store.r
    await store._run(r.db(store.address.database).table(USERNAMES).insert(
        {"id": "carol", "account_id": records.new_id(), "claimed": r.now()}))
    with pytest.raises(DuplicateUsername):
        await store.insert_account(account("carol"))  # grace: 60 s
    eager = _store(_url(store), claim_grace=0.2)
    await eager.open()
    try:
        await _sleep(0.3)
        carol = account("carol")
        await eager.insert_account(carol)
    finally:
        await eager.close()
    assert await store.get_account_by_username("carol") == carol
    with pytest.raises(DuplicateUsername):
        await store.insert_account(account("carol"))


@pytest_twisted.ensureDeferred
async def test_renamed_username_is_released(store: RethinkDBStore) -> None:
    """After a rename the old username is free and the new one is taken."""
    alice = account("alice")
    await store.insert_account(alice)
    assert await store.update_account(alice["id"], {"username": "alicia"}) == WriteResult(
        replaced=1)
    assert await store.get_account_by_username("alice") is None
    with pytest.raises(DuplicateUsername):
        await store.insert_account(account("alicia"))
    await store.insert_account(account("alice"))
    assert await store.count_accounts() == 2


@pytest_twisted.ensureDeferred
async def test_pages_stay_exact_when_another_daemon_deletes(store: RethinkDBStore) -> None:
    """Deep pages remembered by one daemon are not trusted after another daemon deletes."""
    alice = account("alice")
    await store.insert_account(alice)
    hook = registration(alice["id"])
    await store.insert_registration(hook)
    subs = [subscription(alice["id"], hook["id"]) for _ in range(20)]
    for record in subs:
        await store.insert_subscription(record)
    for start in range(0, 20, 4):  # remembers positions 4, 8, 12, 16, 20
        await store.list_subscriptions(start, 4)
    other = _store(_url(store))
    await other.open()
    try:
        for gone in (subs[1], subs[9]):
            await other.delete_subscription(gone["id"])
            subs.remove(gone)
    finally:
        await other.close()
    page = await store.list_subscriptions(12, 4)
    assert [row["id"] for row in page.rows] == [row["id"] for row in subs[12:16]]
    assert page.more is True


@pytest_twisted.ensureDeferred
async def test_walking_pages_reads_from_remembered_positions(store: RethinkDBStore) -> None:
    """Each next page of a walk starts at the remembered position, skipping nothing."""
    alice = account("alice")
    await store.insert_account(alice)
    for _ in range(12):
        await store.insert_registration(registration(alice["id"]))
    skips: list[int] = []
    read_page = store._read_page

    async def spy(listing: Any, after: int, skip: int, limit: int) -> Any:
        skips.append(skip)
        return await read_page(listing, after, skip, limit)

    store._read_page = spy  # type: ignore[method-assign]
    for start in (0, 3, 6, 9):
        await store.list_registrations(start, 3, account_id=alice["id"])
    assert skips == [0, 0, 0, 0]
    await store.list_registrations(7, 3, account_id=alice["id"])
    assert skips[-1] == 1  # from the nearest remembered position (6)


# -- authentication ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_password_in_url(tmp_path: Path) -> None:
    """A user and password in the URL authenticate; a wrong or missing password is
    unavailable."""
    server = RethinkDBServer(tmp_path / "rethinkdb", password="s3cret")
    server.start()
    try:
        good = _store(server.url("hooks", user="admin"))
        await good.initialize(drop=False)
        await good.close()
        bad = _store(server.url("hooks", user="admin").replace("s3cret", "wrong"))
        with pytest.raises(StoreUnavailable):
            await bad.open()
        anonymous = _store(server.url("hooks"))
        with pytest.raises(StoreUnavailable):
            await anonymous.open()
    finally:
        server.stop()


# -- outages ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_server() -> None:
    """With nothing listening, open and initialize answer StoreUnavailable."""
    require_rethinkdb()
    url = "rethinkdb://127.0.0.1:%d/hooks" % (free_port(),)
    with pytest.raises(StoreUnavailable):
        await _store(url).open()
    with pytest.raises(StoreUnavailable):
        await _store(url).initialize(drop=False)


@pytest_twisted.ensureDeferred
async def test_outage_then_recovery(own_store: RethinkDBStore,
                                    rethinkdb_server: RethinkDBServer) -> None:
    """While the server is down every call answers StoreUnavailable; once it is back
    the next call reconnects by itself and finds every acknowledged write."""
    alice = account("alice")
    await own_store.insert_account(alice)
    rethinkdb_server.kill()
    with pytest.raises(StoreUnavailable):
        await own_store.get_account(alice["id"])
    with pytest.raises(StoreUnavailable):
        await own_store.insert_account(account("bob"))
    rethinkdb_server.start()
    assert await _eventually(lambda: own_store.get_account(alice["id"])) == alice
    await _eventually(lambda: own_store.insert_account(account("bob")))
    assert await own_store.count_accounts() == 2


@pytest_twisted.ensureDeferred
async def test_query_in_flight_when_server_dies(own_store: RethinkDBStore,
                                                rethinkdb_server: RethinkDBServer) -> None:
    """A query waiting for an answer when the connection drops fails at once with
    StoreUnavailable instead of waiting forever."""
    await own_store.insert_account(account("alice"))
    rethinkdb_server.pause()
    try:
        waiting = Deferred.fromCoroutine(own_store.count_accounts())
        await _sleep(0.2)
        assert not waiting.called
    finally:
        rethinkdb_server.kill()  # SIGKILL ends a stopped process too
    ((ok, failure),) = await DeferredList([waiting], consumeErrors=True)
    assert not ok and failure.check(StoreUnavailable)


@pytest_twisted.ensureDeferred
async def test_hung_server_times_out(store: RethinkDBStore) -> None:
    """A server that stops answering makes calls fail with StoreUnavailable after the
    timeout; when it answers again the store carries on."""
    alice = account("alice")
    await store.insert_account(alice)
    server = shared_server()
    impatient = _store(_url(store), timeout=0.5)
    await impatient.open()
    server.pause()
    try:
        with pytest.raises(StoreUnavailable):
            await impatient.get_account(alice["id"])
    finally:
        server.resume()
    try:
        assert await impatient.get_account(alice["id"]) == alice
    finally:
        await impatient.close()
