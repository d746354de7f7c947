"""Misbehaving webhook receivers, each run as its own PROCESS.

``python -m tests.support.fault_receivers --mode hang|huge|reset [--port N]``
answers the echo challenge (and key resets) normally on ``GET``; on ``POST``:

- ``hang``:  reads the request and never answers (holds the connection until
  the client gives up);
- ``huge``:  answers 200 with a 1 GiB body, generated lazily chunk by chunk,
  until the client stops reading;
- ``reset``: reads the request and closes the connection with an RST
  (``SO_LINGER`` 0), no answer at all.

It prints one JSON line per event on its standard output (flushed):
``{"event": "listening", "port": N}`` first, then ``{"event": "post", "path",
"webhook_id"}`` per POST and ``{"event": "closed", "path", "webhook_id",
"sent"}`` when a POST's connection ends (``sent``: body bytes written).

In tests, ``FaultReceiver`` starts it and reads those lines::

    receiver = FaultReceiver(tmp_path / "hang", "hang")
    await receiver.start(reactor)
    url = receiver.url("/subscriber")
    ...
    receiver.stop()
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import deferLater

from tests.support.daemon import REPO_ROOT

#: The modes a receiver can misbehave in.
MODES = ("hang", "huge", "reset")

#: Size of the body the ``huge`` mode promises.
HUGE_BODY = 1024 ** 3

#: One chunk of that body, written again and again.
CHUNK = b"x" * 65536

_print_lock = threading.Lock()


def _say(**fields: Any) -> None:
    with _print_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


class _Handler(socketserver.StreamRequestHandler):
    """One connection: a request (line, headers, Content-Length body), then the mode."""

    server: _Server

    def handle(self) -> None:
        while True:
            request = self._read_request()
            if request is None:
                return
            method, target, headers = request
            if method != "POST":
                self._answer_get(target)
                continue
            path = urlsplit(target).path
            webhook_id = headers.get("webhook-id", "")
            _say(event="post", path=path, webhook_id=webhook_id)
            sent = getattr(self, "_" + self.server.mode)()
            _say(event="closed", path=path, webhook_id=webhook_id, sent=sent)
            return

    def _read_request(self) -> tuple[str, str, dict[str, str]] | None:
        line = self.rfile.readline()
        if not line:
            return None
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            header = self.rfile.readline().decode("latin-1").strip()
            if not header:
                break
            name, _, value = header.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.rfile.read(int(headers.get("content-length", "0")))
        return method, target, headers

    def _answer_get(self, target: str) -> None:
        query = {name: values[0] for name, values in parse_qs(urlsplit(target).query).items()}
        body = json.dumps({"echo": query["echo"]} if "echo" in query else {}).encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.wfile.flush()

    def _hang(self) -> int:
        """Never answer; wait until the client closes (or resets)."""
        try:
            while self.connection.recv(65536):
                pass
        except OSError:
            pass
        return 0

    def _huge(self) -> int:
        """200 and a lazily generated 1 GiB body, until the client stops reading."""
        sent = 0
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % (HUGE_BODY,))
            while sent < HUGE_BODY:
                self.wfile.write(CHUNK)
                sent += len(CHUNK)
            self.wfile.flush()
        except OSError:
            pass
        return sent

    def _reset(self) -> int:
        """Close at once with an RST."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        return 0

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, mode: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.mode = mode


def main() -> None:
    """Run a misbehaving receiver until killed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args()
    server = _Server(arguments.port, arguments.mode)
    _say(event="listening", port=server.server_address[1])
    server.serve_forever()


class FaultReceiver:
    """A misbehaving receiver process, seen from a test."""

    def __init__(self, directory: Path, mode: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.output = self.directory / "receiver.stdout"
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self, reactor: Any, timeout: float = 10.0) -> None:
        """Start the process and wait until it listens."""
        with open(self.output, "wb") as stdout, open(self.directory / "receiver.stderr", "wb") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.fault_receivers", "--mode", self.mode],
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            )
        deadline = reactor.seconds() + timeout
        while not self.events("listening"):
            assert self._process.poll() is None, "the fault receiver exited"
            assert reactor.seconds() < deadline, "the fault receiver did not listen"
            await deferLater(reactor, 0.02, lambda: None)
        self.port = int(self.events("listening")[0]["port"])

    def url(self, path: str) -> str:
        """The endpoint URL for ``path``."""
        assert self.port is not None, "fault receiver not started"
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def events(self, kind: str) -> list[dict[str, Any]]:
        """The events of ``kind`` it has printed so far."""
        if not self.output.exists():
            return []
        found = []
        for line in self.output.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if event.get("event") == kind:
                found.append(event)
        return found

    async def wait_for(self, reactor: Any, kind: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The events of ``kind`` once there are at least ``count`` of them."""
        deadline = reactor.seconds() + timeout
        while len(self.events(kind)) < count:
            assert reactor.seconds() < deadline, "no %d %r events: %r" % (
                count, kind, self.output.read_text())
            await deferLater(reactor, 0.02, lambda: None)
        return self.events(kind)

    def stop(self) -> None:
        """Kill the process."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        if self._process is not None:
            self._process.wait()


if __name__ == "__main__":
    main()
