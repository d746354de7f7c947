"""Reads on the caller's thread: answered at once from the last commit, never
written through, and sent to the database thread when the file is locked."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from pywebhooks.errors import StoreUnavailable
from pywebhooks.sqlitedb import SQLiteDatabase
from tests.support.deliveries import running_reactor


@pytest_twisted.async_yield_fixture
async def database(tmp_path: Path) -> AsyncIterator[SQLiteDatabase]:
    """An open database with a ``notes`` table holding one row."""
    opened = SQLiteDatabase(running_reactor(), str(tmp_path / "db.sqlite3"))
    await opened.open()
    await opened.run(lambda c: c.execute("CREATE TABLE notes (n INTEGER PRIMARY KEY, text TEXT)"))
    await opened.run(lambda c: c.execute("INSERT INTO notes VALUES (1, 'one')"))
    try:
        yield opened
    finally:
        await opened.close()


def notes(connection: sqlite3.Connection) -> list[tuple[int, str]]:
    """Every row of ``notes``."""
    return list(connection.execute("SELECT n, text FROM notes ORDER BY n"))


@pytest_twisted.ensureDeferred
async def test_a_read_runs_at_once_on_the_calling_thread(database: SQLiteDatabase) -> None:
    """The read's function runs on this thread and its result is there before
    the reactor turns; a write committed just before is in it."""
    await database.run(lambda c: c.execute("INSERT INTO notes VALUES (2, 'two')"))
    threads: list[int] = []

    def read(connection: sqlite3.Connection) -> list[tuple[int, str]]:
        threads.append(threading.get_ident())
        return notes(connection)

    answered = Deferred.fromCoroutine(database.read(read))
    assert answered.called
    assert await answered == [(1, "one"), (2, "two")]
    assert threads == [threading.get_ident()]


@pytest_twisted.ensureDeferred
async def test_a_read_cannot_write(database: SQLiteDatabase) -> None:
    """The reading connection is read-only: a write through it fails and changes nothing."""
    with pytest.raises(StoreUnavailable):
        await database.read(lambda c: c.execute("DELETE FROM notes"))
    assert await database.read(notes) == [(1, "one")]


@pytest_twisted.ensureDeferred
async def test_a_read_that_finds_the_file_locked_is_retried_on_the_database_thread(
        database: SQLiteDatabase) -> None:
    """A read that finds the file locked (another process holding it) neither
    fails nor waits on this thread: it runs again on the database thread, whose
    connection waits for the lock."""
    threads: list[int] = []

    def read(connection: sqlite3.Connection) -> list[tuple[int, str]]:
        threads.append(threading.get_ident())
        if len(threads) == 1:
            raise sqlite3.OperationalError("database is locked")
        return notes(connection)

    assert await database.read(read) == [(1, "one")]
    assert threads[0] == threading.get_ident() and threads[1] != threading.get_ident()


@pytest_twisted.ensureDeferred
async def test_reads_of_a_closed_database_are_unavailable(tmp_path: Path) -> None:
    """After the last close, a read is a StoreUnavailable, not a crash."""
    database = SQLiteDatabase(running_reactor(), str(tmp_path / "db.sqlite3"))
    await database.open()
    await database.close()
    with pytest.raises(StoreUnavailable):
        await database.read(notes)
