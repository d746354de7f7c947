"""A fast webhook receiver for the benchmarks: raw HTTP/1.1 on asyncio, one process.

- ``GET ...?echo=X``  -> 200 ``{"echo": "X"}`` (the account echo challenge);
- ``GET /_stats``     -> 200 ``{"posts": N, "first": T, "last": T, "bytes": B}``
  (wall-clock times of the first and the last POST answered);
- ``GET /_reset``     -> zeroes the counters;
- ``POST`` anything   -> ``--status`` (200) with ``{}``, after ``--delay`` seconds.

Keep-alive, pipelining-safe (requests on one connection are answered in
order), no header checks: it costs as little per POST as Python allows, so
the benchmarks measure the sender.  It prints ``listening PORT`` once ready::

    .venv/bin/python bench/receiver.py --port 0 --delay 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import parse_qs, urlsplit

_REASONS = {200: b"OK", 500: b"Internal Server Error", 204: b"No Content"}


class Stats:
    """What the receiver has answered."""

    def __init__(self) -> None:
        self.posts = 0
        self.bytes = 0
        self.first = 0.0
        self.last = 0.0

    def as_json(self) -> bytes:
        """The counters as the body of ``/_stats``."""
        return json.dumps({"posts": self.posts, "bytes": self.bytes,
                           "first": self.first, "last": self.last}).encode()


def response(status: int, body: bytes) -> bytes:
    """A whole keep-alive HTTP/1.1 response."""
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status, _REASONS.get(status, b"Status"), len(body), body)


class ReceiverProtocol(asyncio.Protocol):
    """One connection: parses requests from the buffer and answers them in order."""

    def __init__(self, stats: Stats, status: int, delay: float) -> None:
        self._stats = stats
        self._post_reply = response(status, b"{}")
        self._delay = delay
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_event_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                line_end = lower.find(b"\r\n", at)
                length = int(head[at + 15:line_end if line_end >= 0 else len(head)])
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            self._buffer = self._buffer[total:]
            self._handle(head, length)

    def _handle(self, head: bytes, length: int) -> None:
        request_line = head.split(b"\r\n", 1)[0]
        method, target = request_line.split(b" ")[:2]
        if method == b"POST":
            stats = self._stats
            now = time.time()
            if not stats.posts:
                stats.first = now
            stats.posts += 1
            stats.bytes += length
            if self._delay > 0:
                # Senders wait for an answer before reusing a connection
                # (no pipelining), so a timer per POST keeps answers in order.
                self._loop.call_later(self._delay, self._late)
                return
            stats.last = now
            self._answer(self._post_reply)
            return
        parts = urlsplit(target.decode())
        if parts.path == "/_stats":
            self._answer(response(200, self._stats.as_json()))
            return
        if parts.path == "/_reset":
            self._stats.__init__()  # type: ignore[misc]
            self._answer(response(200, b"{}"))
            return
        query = parse_qs(parts.query)
        if "echo" in query:
            self._answer(response(200, json.dumps({"echo": query["echo"][0]}).encode()))
            return
        self._answer(response(200, b"{}"))

    def _answer(self, reply: bytes) -> None:
        if self._transport is not None:
            self._transport.write(reply)

    def _late(self) -> None:
        self._stats.last = time.time()
        self._answer(self._post_reply)


async def serve(port: int, status: int, delay: float) -> None:
    """Listen on 127.0.0.1:``port`` forever."""
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ReceiverProtocol(stats, status, delay), "127.0.0.1", port,
                                      backlog=4096, reuse_address=True)
    print("listening %d" % (server.sockets[0].getsockname()[1],), flush=True)
    await server.serve_forever()


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--status", type=int, default=200, help="status of every POST answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each POST answer")
    arguments = parser.parse_args()
    try:
        asyncio.run(serve(arguments.port, arguments.status, arguments.delay))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
