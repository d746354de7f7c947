"""What the tests' server processes (redis-server, rethinkdb) have in common."""

from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """A server subprocess that can be stopped cleanly, killed and restarted.

    Subclasses set ``self._process`` in ``start()``.
    """

    _process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it serves."""
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down cleanly (SIGTERM) and wait for it to exit."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """Kill the server (SIGKILL), as a crash would."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop, then start again on the same port with the same data."""
        self.stop()
        self.start()
