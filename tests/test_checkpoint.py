"""WAL checkpoints happen on a connection of their own, never inside the
daemon's commits, and copy the log back into the database file."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest_twisted

from pywebhooks.sqlitedb import SQLiteDatabase
from tests.support.deliveries import running_reactor, sleep


def write_rows(connection: sqlite3.Connection, start: int, count: int) -> None:
    """Insert ``count`` rows of about 1 KB."""
    connection.executemany("INSERT INTO notes (n, text) VALUES (?, ?)",
                           [(n, "x" * 1000) for n in range(start, start + count)])


@pytest_twisted.ensureDeferred
async def test_commits_never_checkpoint_and_a_round_copies_the_log_into_the_file(tmp_path: Path) -> None:
    """The daemon's own connection has automatic checkpoints off; one round of
    the checkpointer puts everything committed into the database file itself
    (a copy of the file alone, without its -wal, has every row)."""
    database = SQLiteDatabase(running_reactor(), str(tmp_path / "db.sqlite3"))
    await database.open()
    try:
        assert await database.run(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
        await database.run(lambda c: c.execute("CREATE TABLE notes (n INTEGER PRIMARY KEY, text TEXT)"))
        for start in range(0, 3000, 100):
            await database.run(lambda c, start=start: write_rows(c, start, 100))
        wal = tmp_path / "db.sqlite3-wal"
        assert wal.stat().st_size > 3_000_000  # nothing was checkpointed inside a commit
        await database.checkpointer.run_once()
        log_pages, copied = database.checkpointer.last or (0, -1)
        assert log_pages > 0 and copied == log_pages
        shutil.copy(tmp_path / "db.sqlite3", tmp_path / "copy.sqlite3")
        copy = sqlite3.connect(tmp_path / "copy.sqlite3")
        try:
            assert copy.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 3000
        finally:
            copy.close()
    finally:
        await database.close()


@pytest_twisted.ensureDeferred
async def test_checkpoints_run_by_themselves_while_the_database_is_open(tmp_path: Path) -> None:
    """Rounds run every second without being asked, and stop when the database closes."""
    database = SQLiteDatabase(running_reactor(), str(tmp_path / "db.sqlite3"))
    await database.open()
    try:
        await database.run(lambda c: c.execute("CREATE TABLE notes (n INTEGER PRIMARY KEY, text TEXT)"))
        await database.run(lambda c: write_rows(c, 0, 10))
        await sleep(1.3)
        assert database.checkpointer.rounds >= 1
    finally:
        await database.close()
    rounds = database.checkpointer.rounds
    await sleep(1.2)
    assert database.checkpointer.rounds == rounds
