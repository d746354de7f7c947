"""Every ``ILedger`` implementation behind one name, for parametrized fixtures.

``LEDGERS`` maps a name to an async context manager that yields a
``LedgerFactory`` over one empty backend (a dict, a SQLite file, a real
redis-server).  ``await factory.open_ledger()`` opens a new ledger instance
over the same data, the way a restarted daemon (or a second daemon) would;
everything opened is closed afterwards.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncContextManager, AsyncIterator, Callable, Self

from pywebhooks.ledger.interface import ILedger
from pywebhooks.ledger.memory import MemoryLedger
from pywebhooks.ledger.redis import RedisLedger
from pywebhooks.ledger.sqlite import SQLiteLedger
from pywebhooks.sqlitedb import SQLiteDatabase
from tests.support.redis_server import RedisServer


def running_reactor() -> Any:
    """The pytest-twisted reactor."""
    from twisted.internet import reactor

    return reactor


class LedgerFactory:
    """Opens ledger instances over one backend and closes them all at the end."""

    #: whether ``open()`` drops every lease (the single-process embedded ledger)
    releases_leases_on_open = False
    #: whether two instances are independent clients of the backend
    shared = True

    def __init__(self) -> None:
        self.opened: list[Any] = []

    def _new(self) -> Any:
        raise NotImplementedError

    async def open_ledger(self) -> ILedger:
        """A new, open ledger instance over this backend's data."""
        ledger = self._new()
        await ledger.open()
        self.opened.append(ledger)
        return ledger

    async def close_all(self) -> None:
        """Close every instance opened so far."""
        while self.opened:
            await self.opened.pop().close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_all()


class MemoryLedgerFactory(LedgerFactory):
    """One ``MemoryLedger``, handed out again on each open (it has no other copy)."""

    releases_leases_on_open = True
    shared = False

    def __init__(self) -> None:
        super().__init__()
        self.ledger = MemoryLedger()

    def _new(self) -> Any:
        return self.ledger


class SQLiteLedgerFactory(LedgerFactory):
    """``SQLiteLedger``s on one file, each with its own connection."""

    releases_leases_on_open = True

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _new(self) -> Any:
        return SQLiteLedger(SQLiteDatabase(running_reactor(), str(self.path)))


class RedisLedgerFactory(LedgerFactory):
    """``RedisLedger``s on a real redis-server, each with its own connections."""

    def __init__(self, server: RedisServer, key_prefix: str = "test:") -> None:
        super().__init__()
        self.server = server
        self.key_prefix = key_prefix

    def _new(self) -> Any:
        return RedisLedger(self.server.url, self.key_prefix, clock=running_reactor(), timeout=2.0)


def memory_ledgers(directory: Path) -> LedgerFactory:
    """Ledgers in memory (the factory is its own context manager)."""
    return MemoryLedgerFactory()


def sqlite_ledgers(directory: Path) -> LedgerFactory:
    """Ledgers on a fresh SQLite file in ``directory``."""
    return SQLiteLedgerFactory(directory / "ledger.sqlite3")


@contextlib.asynccontextmanager
async def redis_ledgers(directory: Path) -> AsyncIterator[RedisLedgerFactory]:
    """Ledgers on a redis-server of their own in ``directory``."""
    server = RedisServer(directory / "redis")
    server.start()
    try:
        async with RedisLedgerFactory(server) as factory:
            yield factory
    finally:
        server.stop()


#: Name -> builder of a ledger factory over an empty backend.
LEDGERS: dict[str, Callable[[Path], AsyncContextManager[Any]]] = {
    "memory": memory_ledgers,
    "sqlite": sqlite_ledgers,
    "redis": redis_ledgers,
}
