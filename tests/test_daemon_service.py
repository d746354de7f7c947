"""``PyWebhooksService`` and ``--initdb`` in-process: what is built, start-up failures, the reset."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from pywebhooks.errors import DatabaseMissing
from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.ledger.memory import MemoryLedger
from pywebhooks.ledger.redis import RedisLedger
from pywebhooks.ledger.sqlite import SQLiteLedger
from pywebhooks.service import (
    RETHINKDB_LEDGER_FILE,
    InitializeDatabase,
    PyWebhooksService,
    StartupError,
    Storage,
    build_storage,
)
from pywebhooks.settings import Settings
from pywebhooks.store.memory import MemoryStore
from pywebhooks.store.rethinkdb import RethinkDBStore
from pywebhooks.store.sqlite import SQLiteStore
from tests.support.redis_server import redis_server  # noqa: F401


class SchemaLessStore(MemoryStore):
    """A shared database nobody has initialised yet."""

    async def open(self) -> None:
        raise DatabaseMissing("The RethinkDB database pywebhooks does not exist: run --initdb")


class RecordingLedger(MemoryLedger):
    """A memory ledger that remembers whether it was ever opened."""

    opened = False

    async def open(self) -> None:
        self.opened = True
        await super().open()


def test_sqlite_store_and_embedded_ledger_share_one_database(tmp_path: Path) -> None:
    """With sqlite: and no Redis, the store and the ledger use the same SQLite connection and thread."""
    storage = build_storage(reactor, Settings(database="sqlite:%s" % (tmp_path / "db.sqlite3",)))
    assert isinstance(storage.store, SQLiteStore)
    assert isinstance(storage.ledger, SQLiteLedger)
    assert storage.create_missing_schema
    assert storage.database is not None and storage.database.path == str(tmp_path / "db.sqlite3")
    # the one SQLiteDatabase object is handed to both (private attributes, read only here)
    assert storage.store._database is storage.database  # type: ignore[attr-defined]
    assert storage.ledger._database is storage.database  # type: ignore[attr-defined]


def test_rethinkdb_store_gets_its_ledger_file_or_redis() -> None:
    """With rethinkdb://, pending deliveries go to pywebhooks-ledger.sqlite3, or to Redis when --redis is set."""
    url = "rethinkdb://127.0.0.1:28015/hooks"
    storage = build_storage(reactor, Settings(database=url))
    assert isinstance(storage.store, RethinkDBStore)
    assert isinstance(storage.ledger, SQLiteLedger)
    assert storage.ledger._database.path == RETHINKDB_LEDGER_FILE  # type: ignore[attr-defined]
    assert not storage.create_missing_schema
    with_redis = build_storage(reactor, Settings(database=url, redis="redis://127.0.0.1:6390/0"))
    assert isinstance(with_redis.ledger, RedisLedger)


@pytest_twisted.ensureDeferred
async def test_shared_database_without_schema_is_a_fatal_error_naming_initdb() -> None:
    """A RethinkDB database that was never initialised stops the start with a message saying to run --initdb."""
    ledger = RecordingLedger()
    out = io.StringIO()
    service = PyWebhooksService(reactor, Settings(), out=out, listen=False,
                                storage=Storage(store=SchemaLessStore(), ledger=ledger))
    service.startService()
    with pytest.raises(StartupError) as raised:
        await service.when_started()
    assert "run `twist pywebhooks --initdb --database sqlite:pywebhooks.sqlite3`" in str(raised.value)
    assert not ledger.opened
    assert out.getvalue() == ""
    await service.stopService()
    with pytest.raises(StartupError):
        await service.when_started()  # asked again after the fact: same answer


@pytest_twisted.ensureDeferred
async def test_unopenable_sqlite_file_is_a_fatal_error(tmp_path: Path) -> None:
    """A database file in a directory that does not exist stops the start with a clear reason."""
    settings = Settings(database="sqlite:%s" % (tmp_path / "missing" / "db.sqlite3",))
    service = PyWebhooksService(reactor, settings, out=io.StringIO(), listen=False)
    service.startService()
    with pytest.raises(StartupError, match="cannot open the store"):
        await service.when_started()
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_start_on_empty_store_prints_admin_keys_and_listens(tmp_path: Path) -> None:
    """On an empty store the service prints the admin keys once on its output and listens on --listen."""
    settings = Settings(database="sqlite:%s" % (tmp_path / "db.sqlite3",), listen="tcp:0:interface=127.0.0.1")
    out = io.StringIO()
    service = PyWebhooksService(reactor, settings, out=out)
    service.startService()
    await service.when_started()
    try:
        assert service.port is not None and service.port.getHost().host == "127.0.0.1"
        (line,) = out.getvalue().splitlines()
        assert set(json.loads(line)) == {"api_key", "secret_key"}
        assert await service.store.count_accounts() == 1
    finally:
        await service.stopService()
    assert service.port is None

    again = PyWebhooksService(reactor, settings, out=out, listen=False)
    again.startService()
    await again.when_started()
    await again.stopService()
    assert len(out.getvalue().splitlines()) == 1


@pytest.mark.parametrize("ledger", ["embedded", "redis"])
@pytest_twisted.ensureDeferred
async def test_initdb_empties_store_and_ledger_and_prints_new_admin(
    tmp_path: Path, ledger: str, request: pytest.FixtureRequest,
) -> None:
    """--initdb leaves only a new admin account and no pending delivery, and prints the new keys."""
    redis = request.getfixturevalue("redis_server").url if ledger == "redis" else None
    settings = Settings(database="sqlite:%s" % (tmp_path / "db.sqlite3",), redis=redis)
    first_out = io.StringIO()
    service = PyWebhooksService(reactor, settings, out=first_out, listen=False)
    service.startService()
    await service.when_started()
    await service.ledger.add([
        PendingDelivery(id="d%d" % (n,), firing_id="f", account_id="a", endpoint="http://127.0.0.1:9/",
                        secret_key="s", event="e", body="{}", due=1e12)
        for n in range(3)
    ])
    assert await service.ledger.count() == 3
    await service.stopService()

    out = io.StringIO()
    job = InitializeDatabase(reactor, settings, out=out)
    job.startService()
    await job.done
    (line,) = out.getvalue().splitlines()
    assert json.loads(line) != json.loads(first_out.getvalue())

    storage = build_storage(reactor, settings)
    await storage.store.open()
    await storage.ledger.open()
    try:
        assert await storage.ledger.count() == 0
        page = await storage.store.list_accounts(0, 10)
        assert [account["username"] for account in page.rows] == ["admin"]
    finally:
        await storage.ledger.close()
        await storage.store.close()
