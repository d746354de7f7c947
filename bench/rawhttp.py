"""A kept-open HTTP/1.1 client connection that costs its process little.

The benchmark process shares the machine's cores with the daemons it
measures.  Firing through treq (``tests.support.daemon.ApiClient``) cost
it about 0.8 ms of CPU a trigger, 9 % of a core while two daemons
delivered (``bench/RESULTS.md``, eleventh pass).  This sends prepared
request bytes on one connection, one request at a time, and reads each
answer by its ``Content-Length`` (the daemon's answers always have one).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure


class KeptOpenConnection(Protocol):
    """One connection; ``request`` sends bytes and answers ``(status, body)``."""

    def __init__(self) -> None:
        self._buffer = b""
        self._waiting: Deferred[tuple[int, bytes]] | None = None

    def request(self, raw: bytes) -> Deferred[tuple[int, bytes]]:
        """Send one whole request; its answer's status and body."""
        if self._waiting is not None:
            raise RuntimeError("one request at a time on a kept-open connection")
        self._waiting = Deferred()
        assert self.transport is not None
        self.transport.write(raw)
        return self._waiting

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buffer[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise ValueError("an answer without Content-Length: %r" % (head[:200],))
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:line_end if line_end >= 0 else len(head)])
        total = end + 4 + length
        if len(self._buffer) < total:
            return
        body, self._buffer = self._buffer[end + 4:total], self._buffer[total:]
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback((int(head[9:12]), body))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(reason)

    def close(self) -> None:
        """Close the connection."""
        if self.transport is not None:
            self.transport.loseConnection()


async def connect(reactor: Any, port: int) -> KeptOpenConnection:
    """A kept-open connection to 127.0.0.1:``port``."""
    connection = KeptOpenConnection()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), connection)
    return connection


def post_request(port: int, path: str, headers: dict[str, str]) -> bytes:
    """The bytes of a body-less POST to ``path`` with ``headers``."""
    lines = ["POST %s HTTP/1.1" % (path,), "Host: 127.0.0.1:%d" % (port,), "Content-Length: 0"]
    lines += ["%s: %s" % (name, value) for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
