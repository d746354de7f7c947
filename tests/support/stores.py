"""Every ``IStore`` implementation behind one name, for parametrized fixtures.

``STORES`` maps a name to an async context manager that yields an empty,
open store and closes it afterwards.  A backend that needs a server calls
``pytest.skip`` inside its builder when the server is not available; the
``store`` fixture of ``tests/test_store_behaviour.py`` turns that into a
skip of that parameter only.  The RethinkDB builder lives with its server
harness; registering it is one line::

    from tests.support.rethinkdb_server import rethinkdb_store
    STORES["rethinkdb"] = rethinkdb_store
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import AsyncContextManager, AsyncIterator, Callable, cast

from pywebhooks.ledger.sqlite import SQLiteLedger
from pywebhooks.sqlitedb import SQLiteDatabase
from pywebhooks.store.interface import IStore
from pywebhooks.store.memory import MemoryStore
from pywebhooks.store.sqlite import SQLiteStore
from tests.support.rethinkdb_server import rethinkdb_store


@contextlib.asynccontextmanager
async def memory_store(directory: Path) -> AsyncIterator[IStore]:
    """An empty ``MemoryStore``."""
    store = MemoryStore()
    await store.open()
    try:
        yield cast(IStore, store)
    finally:
        await store.close()


def sqlite_database(path: Path | str) -> SQLiteDatabase:
    """A ``SQLiteDatabase`` on the running (pytest-twisted) reactor."""
    from twisted.internet import reactor

    return SQLiteDatabase(reactor, str(path))


@contextlib.asynccontextmanager
async def sqlite_store(directory: Path) -> AsyncIterator[IStore]:
    """A ``SQLiteStore`` on a fresh file in ``directory``, schema created."""
    store = SQLiteStore(sqlite_database(directory / "store.sqlite3"))
    await store.initialize(drop=True)
    try:
        yield cast(IStore, store)
    finally:
        await store.close()


#: Name -> builder of an empty open store in a scratch directory.
STORES: dict[str, Callable[[Path], AsyncContextManager[IStore]]] = {
    "memory": memory_store,
    "sqlite": sqlite_store,
    "rethinkdb": rethinkdb_store,
}


@contextlib.asynccontextmanager
async def store_and_ledger(database: SQLiteDatabase, ledger_database: SQLiteDatabase | None = None,
                           create: bool = True) -> AsyncIterator[tuple[SQLiteStore, SQLiteLedger]]:
    """An SQLite store on ``database`` with its tables made afresh (``create``)
    or only opened, and a ledger on ``ledger_database`` (default: the same
    database); both closed afterwards."""
    store = SQLiteStore(database)
    if create:
        await store.initialize(drop=True)
    else:
        await store.open()
    try:
        ledger = SQLiteLedger(database if ledger_database is None else ledger_database)
        await ledger.open()
        try:
            yield store, ledger
        finally:
            await ledger.close()
    finally:
        await store.close()
