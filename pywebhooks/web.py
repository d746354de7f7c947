"""The HTTP server side: a ``Site`` that defends itself against abusive clients.

- A client must send each whole request (headers and body) within
  ``client_timeout`` seconds of its first byte; a client that trickles bytes
  to hold a connection open is dropped when the time is up, and idle
  keep-alive connections are closed after the same time.
- A declared ``Content-Length`` over ``max_body_size`` is answered 413 (JSON)
  at once, before the body is read; bodies without a declared length are
  still capped by the API (``api.http``).
- Twisted's own limits stay in force: at most 500 headers and 16 KiB for
  the request line and headers together (a 400 beyond them).

Each request gets one line of access log in the combined log format: in
the daemon's own log (``-``, the default), in a file of its own (written
straight to it, which costs a request less CPU than an event through the
log observers), or nowhere (``off``).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Site

#: ``--access-log`` values that are not a file path.
ACCESS_LOG_IN_DAEMON_LOG = "-"
ACCESS_LOG_OFF = "off"

#: The 413 body, the same message the API gives for an oversize body.
TOO_LARGE_BODY = json.dumps({"Error": "Request body too large"}).encode()


class GuardedChannel(HTTPChannel):
    """An ``HTTPChannel`` with a deadline per request and an early 413."""

    request_deadline: float = 30.0
    max_body_size: int = 1024 * 1024

    _deadline_call: IDelayedCall | None = None
    _awaiting_request: bool = True

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_request and self._deadline_call is None:
            self._deadline_call = self.callLater(self.request_deadline, self._deadline_passed)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > self.max_body_size:
            self._cancel_deadline()
            self.transport.write(
                b"HTTP/1.1 413 Request Entity Too Large\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(TOO_LARGE_BODY), TOO_LARGE_BODY)
            )
            self.loseConnection()
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._awaiting_request = False
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._awaiting_request = True
        super().requestDone(request)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_deadline()
        super().connectionLost(reason)

    def _deadline_passed(self) -> None:
        self._deadline_call = None
        self._log.info(
            "dropping client {peer}: no complete request within {seconds}s",
            peer=str(self.transport.getPeer()), seconds=self.request_deadline,
        )
        self.transport.abortConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline_call is not None:
            if self._deadline_call.active():
                self._deadline_call.cancel()
            self._deadline_call = None


def access_log_path(access_log: str) -> str | None:
    """The file an ``--access-log`` value names, or None."""
    return None if access_log in (ACCESS_LOG_IN_DAEMON_LOG, ACCESS_LOG_OFF) else access_log


class GuardedSite(Site):
    """A ``Site`` whose connections are ``GuardedChannel``s, logging each
    request where ``access_log`` says (see the module's docstring)."""

    def __init__(self, resource: IResource, client_timeout: float, max_body_size: int,
                 reactor: Any = None, access_log: str = ACCESS_LOG_IN_DAEMON_LOG) -> None:
        super().__init__(resource, logPath=access_log_path(access_log), timeout=client_timeout,
                         reactor=reactor)
        self._client_timeout = client_timeout
        self._max_body_size = max_body_size
        self._access_log_off = access_log == ACCESS_LOG_OFF

    def log(self, request: Any) -> None:
        """One access log line for ``request`` (none with ``off``)."""
        if not self._access_log_off:
            super().log(request)

    def protocol(self) -> GuardedChannel:  # type: ignore[override]
        """A new connection's channel (the base classes attach it to this site)."""
        channel = GuardedChannel()
        channel.request_deadline = self._client_timeout
        channel.max_body_size = self._max_body_size
        return channel
