"""Raw HTTP over a plain socket, for tests that look at the bytes on the wire.

Blocking: run these in a thread (``deferToThread``) while the reactor serves.
"""

from __future__ import annotations

import socket


def read_all(connection: socket.socket) -> bytes:
    """Everything received until the peer closes, resets or goes quiet (the
    socket's timeout)."""
    chunks = []
    while True:
        try:
            chunk = connection.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on a fresh connection to 127.0.0.1:``port``; every
    byte answered before the server closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        return read_all(connection)
