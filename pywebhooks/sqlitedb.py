"""One SQLite connection on one dedicated thread, so the reactor never blocks on disk.

The store and the embedded ledger both run their statements through a
``SQLiteDatabase``: every call is a plain function that receives the
``sqlite3.Connection`` and runs on the database's own thread, one at a time,
inside a transaction that commits when the function returns and rolls back
when it raises.  The hot-path writers group their calls themselves
(``batching.GroupCommit``) and hand a whole batch over as one function.

Reads (``read``) do not cross threads: they run at once on the caller's
thread, on a second, read-only connection.  The store reads this way only
indexed lookups and pages near a known position (``SQLiteStore`` sends a
deep page's walk to the thread), which SQLite answers in tens of
microseconds, while handing a call to the thread and its result back cost
milliseconds under load, waiting for the GIL twice (``bench/RESULTS.md``).
In WAL mode a reader never waits for the writer: it sees the last commit.
A read that does find the file locked (another process holding it
exclusively) is run on the database thread instead, like a write.

Disk I/O errors (read-only file, full disk, locked database, a file that
cannot be opened) come back as ``errors.StoreUnavailable``.  A path
starting with ``file:`` is an SQLite URI (e.g.
``file:/var/lib/x.sqlite3?mode=ro``).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence, TypeVar

from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from pywebhooks.checkpoint import Checkpointer
from pywebhooks.dbthread import WorkerThread
from pywebhooks.errors import StoreUnavailable

T = TypeVar("T")


def sqlite_path(database_url: str) -> str:
    """The file path of a ``sqlite:PATH`` database URL (``sqlite:///abs`` works too)."""
    if not database_url.startswith("sqlite:"):
        raise ValueError("not a sqlite: URL: %r" % (database_url,))
    path = database_url[len("sqlite:"):]
    if path.startswith("//"):
        path = path[2:]
    if not path:
        raise ValueError("sqlite: URL without a path")
    return path


def open_connection(path: str) -> sqlite3.Connection:
    """A connection to ``path`` in autocommit mode (transactions are explicit),
    usable from the thread that owns it; ``file:`` paths are SQLite URIs."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           uri=path.startswith("file:"))


def in_sequence(*statements: Callable[[sqlite3.Connection], Any]) -> Callable[[sqlite3.Connection], None]:
    """One function of the connection that runs ``statements`` in order (to
    put the statements of several writers in one transaction)."""

    def run_all(connection: sqlite3.Connection) -> None:
        for statement in statements:
            statement(connection)

    return run_all


def split_columns(rows: Sequence[Mapping[str, Any]],
                  fields: Sequence[str]) -> tuple[dict[str, Any], list[str], list[list[Any]]]:
    """``rows`` column by column, for an INSERT of many rows at once: the
    fields with one value in every row (and that value, bound once), the
    other fields, and each row's values of those (one small JSON array per
    row instead of a whole object).  A fan-out's rows differ in a few
    fields only."""
    if not rows:
        return {}, list(fields), []
    first = rows[0]
    shared = {field: first[field] for field in fields if _same(first[field], (row[field] for row in rows))}
    varying = [field for field in fields if field not in shared]
    return shared, varying, [[row[field] for field in varying] for row in rows]


def _same(value: Any, values: Iterable[Any]) -> bool:
    """True when every one of ``values`` is ``value``'s type and equal to it."""
    kind = type(value)
    return all(type(other) is kind and other == value for other in values)


def _busy(error: sqlite3.DatabaseError) -> bool:
    """True if ``error`` says another connection holds a lock we need."""
    text = str(error)
    return isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _outage(error: sqlite3.DatabaseError) -> bool:
    """False for a constraint (the caller maps it) or a bug in a statement:
    those are not the database failing."""
    return not isinstance(error, (sqlite3.IntegrityError, sqlite3.ProgrammingError))


class SQLiteDatabase:
    """One writing SQLite connection owned by a worker thread, and one
    read-only connection used on the caller's (the reactor's) thread."""

    log = Logger()

    def __init__(self, reactor: IReactorFromThreads, path: str) -> None:
        self.path = path
        self._thread = WorkerThread(reactor, "sqlite:" + path)
        self._checkpointer = Checkpointer(reactor, lambda: open_connection(path), path)
        self._connection: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._users = 0

    async def open(self) -> None:
        """Start the thread and open the connection (shared: counted per user).

        A database that was closed by its last user can be opened again.
        """
        self._users += 1
        if self._users > 1:
            return
        self._thread.start()
        try:
            await self._unavailable_on_error(self.run_raw(self._connect))
        except BaseException:
            self._users -= 1
            self._thread.stop()
            raise
        self._open_reader()
        await self._start_checkpoints()

    async def close(self) -> None:
        """Close the connection and stop the thread when the last user closes."""
        self._users -= 1
        if self._users > 0:
            return
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        try:
            await self._checkpointer.stop()
            await self.run_raw(self._disconnect)
        finally:
            self._thread.stop()

    def _open_reader(self) -> None:
        """Open the read-only connection (after the writer has set WAL mode);
        without it, reads go to the database thread."""
        reader: sqlite3.Connection | None = None
        try:
            reader = open_connection(self.path)
            reader.execute("PRAGMA query_only=ON")
            # Never wait on the reactor: a locked file sends the read to the thread.
            reader.execute("PRAGMA busy_timeout=0")
        except sqlite3.Error as error:
            if reader is not None:
                reader.close()
            self.log.warn("sqlite {path}: reads go through the database thread ({error})",
                          path=self.path, error=str(error))
            return
        self._reader = reader

    async def _start_checkpoints(self) -> None:
        """Checkpoint on a connection of its own (see ``checkpoint``); if that
        cannot be opened, let SQLite checkpoint inside commits as usual."""
        try:
            await self._checkpointer.start()
        except Exception as error:
            self.log.warn("sqlite {path}: checkpoints stay in the commits ({error})",
                          path=self.path, error=str(error))
            await self.run_raw(self._checkpoint_in_commits)

    def _checkpoint_in_commits(self) -> None:
        if self._connection is not None:
            self._connection.execute("PRAGMA wal_autocheckpoint=1000")

    @property
    def checkpointer(self) -> Checkpointer:
        """What copies this database's write-ahead log back into its file."""
        return self._checkpointer

    def _connect(self) -> None:
        connection = open_connection(self.path)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a killed process (every commit is in the WAL
            # before the call returns); only an OS crash may lose the last commits.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=OFF")
            connection.execute("PRAGMA busy_timeout=5000")
            # The Checkpointer copies the log back on its own connection.
            connection.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def trace(self, callback: Callable[[str], None] | None) -> None:
        """Pass every statement either connection runs to ``callback`` (None: stop)."""
        if self._reader is not None:
            self._reader.set_trace_callback(callback)

        def trace_writer() -> None:
            if self._connection is not None:
                self._connection.set_trace_callback(callback)

        await self.run_raw(trace_writer)

    def run_raw(self, function: Callable[..., T], *args: Any) -> Any:
        """Run ``function(*args)`` on the database thread; a Deferred of its result."""
        return self._thread.submit(function, *args)

    async def run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``function(connection)`` in one transaction on the database thread."""
        if self._users <= 0:
            raise StoreUnavailable("The database is closed")
        return await self._unavailable_on_error(self.run_raw(self._transaction, function))

    async def read(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run the read-only ``function(connection)`` in one read transaction,
        at once on the calling thread (see the module's docstring)."""
        if self._users <= 0:
            raise StoreUnavailable("The database is closed")
        reader = self._reader
        if reader is None:
            return await self.run(function)
        try:
            return self._read_transaction(reader, function)
        except sqlite3.DatabaseError as error:
            if not _outage(error):
                raise
            if not _busy(error):
                raise self._unavailable(error) from error
            # Another process holds the file: wait for it on the database thread.
        return await self.run(function)

    @staticmethod
    def _read_transaction(reader: sqlite3.Connection, function: Callable[[sqlite3.Connection], T]) -> T:
        reader.execute("BEGIN")
        try:
            return function(reader)
        finally:
            if reader.in_transaction:
                reader.execute("ROLLBACK")

    async def _unavailable_on_error(self, result: Awaitable[T]) -> T:
        """Await ``result``, turning SQLite failures into ``StoreUnavailable``."""
        try:
            return await result
        except sqlite3.DatabaseError as error:
            if not _outage(error):
                raise
            raise self._unavailable(error) from error

    def _unavailable(self, error: sqlite3.DatabaseError) -> StoreUnavailable:
        """Log an SQLite failure; the ``StoreUnavailable`` to raise for it."""
        self.log.error("sqlite {path} failed: {error}", path=self.path, error=str(error))
        return StoreUnavailable("The database is unavailable: %s" % (error,))

    def _transaction(self, function: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection
        if connection is None:
            raise sqlite3.OperationalError("database is closed")
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = function(connection)
            connection.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back by itself after some errors
            # (e.g. a full disk): a second ROLLBACK would hide the real error.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return result
