"""A real RethinkDB server for tests: free loopback ports, a tmp directory.

The binary is ``$PYWEBHOOKS_RETHINKDB``, else ``rethinkdb`` on the PATH, else
``/opt/rethinkdb/bin/rethinkdb``; without one, ``require_rethinkdb()`` skips
the test with ``SKIP_REASON``.

    server = RethinkDBServer(tmp_path)
    server.start()
    url = server.url("pywebhooks")     # rethinkdb://127.0.0.1:PORT/pywebhooks
    server.stop(); server.start()      # a restart on the same ports, same data
    server.pause(); server.resume()    # a hung server (SIGSTOP), then running again
    server.stop()

The ``rethinkdb_server`` fixture wraps one server per test.  ``shared_server()``
is one server for the whole test process (started on first use, stopped at
exit), and ``rethinkdb_store`` is the ``tests.support.stores.STORES`` builder
built on it: one database per process, initialised once, emptied between
tests (creating tables and indexes takes seconds; emptying them does not).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from pywebhooks.errors import DatabaseMissing
from pywebhooks.store.interface import IStore
from pywebhooks.store.rethinkdb import ALL_TABLES, SEQUENCES, RethinkDBStore
from tests.support.processes import ServerProcess, free_port

SKIP_REASON = (
    "RethinkDB tests need a rethinkdb server binary: "
    "set PYWEBHOOKS_RETHINKDB or put rethinkdb on PATH"
)
BUILT_HERE = "/opt/rethinkdb/bin/rethinkdb"


def rethinkdb_executable() -> str | None:
    """The rethinkdb binary to run, or None when there is none."""
    configured = os.environ.get("PYWEBHOOKS_RETHINKDB")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("rethinkdb")
    if found:
        return found
    return BUILT_HERE if os.access(BUILT_HERE, os.X_OK) else None


def require_rethinkdb() -> str:
    """The binary, or skip the calling test with ``SKIP_REASON``."""
    executable = rethinkdb_executable()
    if executable is None:
        pytest.skip(SKIP_REASON)
    return executable


class RethinkDBServer(ServerProcess):
    """One rethinkdb process on loopback that can be stopped, killed and restarted.

    ``password`` sets the ``admin`` password when the data directory is
    created (``--initial-password``).
    """

    def __init__(self, directory: Path, executable: str | None = None,
                 password: str | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.executable = executable or require_rethinkdb()
        self.password = password
        self.driver_port = free_port()
        self.cluster_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, database: str, user: str | None = None) -> str:
        """The ``--database`` URL of ``database`` on this server."""
        credentials = ""
        if user is not None:
            credentials = "%s:%s@" % (user, self.password or "")
        return "rethinkdb://%s127.0.0.1:%d/%s" % (credentials, self.driver_port, database)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self.directory / "rethinkdb.log"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until its driver port accepts connections."""
        if self.running:
            return
        command = [
            self.executable,
            "--directory", str(self.directory / "data"),
            "--bind", "127.0.0.1",
            "--driver-port", str(self.driver_port),
            "--cluster-port", str(self.cluster_port),
            "--no-http-admin",
            "--no-update-check",
            "--server-name", "pywebhooks_test",
            "--cache-size", "128",
            "--cores", "1",
            "--log-file", str(self.log_path),
        ]
        if self.password is not None:
            command += ["--initial-password", self.password]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError("rethinkdb exited with %s; see %s"
                                   % (self._process.returncode, self.log_path))
            if self._accepts():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("rethinkdb did not start within %ss; see %s"
                           % (timeout, self.log_path))

    def _accepts(self) -> bool:
        # The server answers the V1_0 magic number with a JSON line once it serves.
        try:
            with socket.create_connection(("127.0.0.1", self.driver_port), timeout=0.5) as link:
                link.sendall(b"\xc3\xbd\xc2\x34")
                return link.recv(1).startswith(b"{")
        except OSError:
            return False

    def pause(self, timeout: float = 10.0) -> None:
        """Freeze the server (SIGSTOP), as a hung machine would, and wait until every
        thread has stopped: until then it may still answer queries."""
        if self._process is None:
            raise RuntimeError("rethinkdb is not running")
        pid = self._process.pid
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not all(_thread_stopped(task) for task in Path("/proc/%d/task" % pid).iterdir()):
            if time.monotonic() > deadline:
                raise RuntimeError("rethinkdb did not stop within %ss" % (timeout,))
            time.sleep(0.005)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)


def _thread_stopped(task: Path) -> bool:
    try:
        # The state follows the command name, which is in parentheses.
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return True  # the thread is gone


@pytest.fixture
def rethinkdb_server(tmp_path: Path) -> Iterator[RethinkDBServer]:
    """A running ``RethinkDBServer`` in ``tmp_path``, stopped after the test."""
    server = RethinkDBServer(tmp_path / "rethinkdb")
    server.start()
    try:
        yield server
    finally:
        server.stop()


_shared: RethinkDBServer | None = None


def shared_server() -> RethinkDBServer:
    """One server for the whole test process, started on first use."""
    global _shared
    if _shared is None or not _shared.running:
        executable = require_rethinkdb()
        directory = Path(tempfile.mkdtemp(prefix="pywebhooks-rethinkdb-"))
        server = RethinkDBServer(directory, executable)
        server.start()

        def stop() -> None:
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)

        atexit.register(stop)
        _shared = server
    return _shared


SHARED_DATABASE = "pywebhooks_suite"
_initialised: set[str] = set()  # URLs whose schema this process has (re)created


async def empty_tables(store: RethinkDBStore) -> None:
    """Delete every row of the store's tables (not its counters), keeping the schema."""
    r = store.r
    database = r.db(store.address.database)
    await store._run(r.expr([
        database.table(table).delete() for table in ALL_TABLES if table != SEQUENCES]))


@contextlib.asynccontextmanager
async def rethinkdb_store(directory: Path) -> AsyncIterator[IStore]:
    """An empty, open ``RethinkDBStore`` on the shared server."""
    from twisted.internet import reactor

    server = shared_server()
    url = server.url(SHARED_DATABASE)
    store = RethinkDBStore(url, clock=reactor, timeout=30.0)
    if url not in _initialised:
        await store.initialize(drop=True)  # the schema of this checkout
        _initialised.add(url)
    else:
        try:
            await store.open()
        except DatabaseMissing:  # a test dropped part of it
            await store.initialize(drop=True)
        await empty_tables(store)
    try:
        yield store
    finally:
        await store.close()
