"""Abusive clients against the real daemon: trickling bytes, huge declared
bodies, oversized headers; none of them ties up the service for others."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from tests.support.daemon import Daemon
from tests.support.raw_http import exchange


@pytest.fixture
def guarded_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon that gives clients 1 s to send a request; killed after the test."""
    daemon = Daemon(reactor, tmp_path / "d", "--client-timeout", "1", "--max-body-size", "1000")
    try:
        yield daemon
    finally:
        daemon.kill_now()


def _connect(daemon: Daemon) -> socket.socket:
    return socket.create_connection(("127.0.0.1", daemon.port), timeout=5)


def _trickle_until_dropped(daemon: Daemon) -> float:
    """Send a request one byte every 0.2 s; the seconds until the daemon hangs up."""
    connection = _connect(daemon)
    request = b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    started = time.monotonic()
    try:
        for byte in request:
            connection.sendall(bytes([byte]))
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        return time.monotonic() - started
    finally:
        connection.close()
    raise AssertionError("the daemon never dropped the trickling client")


@pytest_twisted.ensureDeferred
async def test_a_client_trickling_bytes_is_dropped_while_others_are_served(guarded_daemon: Daemon) -> None:
    """A client that sends its request a byte at a time is dropped after the
    client timeout, and a normal request made meanwhile is answered."""
    await guarded_daemon.start()
    slow = deferToThread(_trickle_until_dropped, guarded_daemon)
    await guarded_daemon.sleep(0.3)
    reply = await guarded_daemon.api().call("GET", "/v1/openapi.json")
    assert reply.status == 200
    seconds = await slow
    assert seconds < 5


@pytest_twisted.ensureDeferred
async def test_a_huge_declared_body_is_refused_before_it_is_sent(guarded_daemon: Daemon) -> None:
    """A Content-Length over --max-body-size gets a JSON 413 without the body
    being read."""
    await guarded_daemon.start()

    answer = await deferToThread(
        exchange, guarded_daemon.port,
        b"POST /v1/account HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1073741824\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body) == {"Error": "Request body too large"}


@pytest_twisted.ensureDeferred
async def test_oversized_headers_are_refused(guarded_daemon: Daemon) -> None:
    """Request headers over 16 KiB are refused (a 400, or the connection closed
    before they are all read), and the daemon keeps serving."""
    await guarded_daemon.start()

    answer = await deferToThread(
        exchange, guarded_daemon.port,
        b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    reply = await guarded_daemon.api().call("GET", "/v1/openapi.json")
    assert reply.status == 200
