"""Outbound calls to an account's endpoint: the echo challenge and key resets.

Both are ``GET <endpoint>?<name>=<value>`` (the parameter is added to any
query string the endpoint already has).  Redirects are not followed, the
whole exchange (headers and body) must finish within ``timeout`` seconds,
and at most ``MAX_BODY`` bytes of an answer are read.  Every failure is
``False`` to the caller and a log line that never includes the value sent.
"""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from pywebhooks.guarded_agent import TargetRefused
from pywebhooks.keys import generate_key

#: The most bytes read from an endpoint's answer.
MAX_BODY = 64 * 1024

#: The query parameters a key reset may use.
KEY_PARAMS = ("api_key", "secret_key")


class BodyTooLarge(Exception):
    """The endpoint's answer is longer than ``MAX_BODY``."""


class _CappedBody(Protocol):
    """Collect a response body up to a limit; abort the connection beyond it."""

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._finished.errback(BodyTooLarge())
            self.abort()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(reason)

    def abort(self) -> None:
        """Stop reading: drop the connection."""
        if self.transport is not None:
            self.transport.stopProducing()


def read_capped(response: Any, limit: int = MAX_BODY) -> Deferred[bytes]:
    """The body of ``response``, failing with ``BodyTooLarge`` beyond ``limit`` bytes."""
    protocol: _CappedBody
    finished: Deferred[bytes] = Deferred(lambda _: protocol.abort())
    protocol = _CappedBody(finished, limit)
    response.deliverBody(protocol)
    return finished


def _echoes(body: bytes | None, value: str) -> bool:
    """Whether ``body`` is the JSON object ``{"echo": value, ...}``."""
    if body is None:
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("echo") == value


class EndpointClient:
    """Echo challenges and key deliveries to account endpoints."""

    log = Logger()

    def __init__(self, http_client: HTTPClient, clock: IReactorTime, timeout: float) -> None:
        self._http = http_client
        self._clock = clock
        self._timeout = timeout

    async def echo(self, endpoint: str) -> bool:
        """True when ``endpoint`` answers ``?echo=X`` with 200 and JSON ``{"echo": X}``."""
        value = generate_key()
        outcome = await self._get(endpoint, "echo", value, "echo")
        if outcome is None:
            return False
        status, body = outcome
        if status != 200:
            self.log.info("echo to {endpoint} answered {status}", endpoint=endpoint, status=status)
            return False
        if not _echoes(body, value):
            self.log.info("echo to {endpoint} answered a wrong body", endpoint=endpoint)
            return False
        return True

    async def send_key(self, endpoint: str, param: str, key: str) -> bool:
        """True when ``endpoint`` answers ``?<param>=<key>`` with any 2xx."""
        if param not in KEY_PARAMS:
            raise ValueError("unknown key parameter %r" % (param,))
        outcome = await self._get(endpoint, param, key, "key reset")
        if outcome is None:
            return False
        status, _ = outcome
        if not 200 <= status < 300:
            self.log.info(
                "key reset to {endpoint} answered {status}", endpoint=endpoint, status=status
            )
            return False
        return True

    async def _get(
        self, endpoint: str, param: str, value: str, purpose: str
    ) -> tuple[int, bytes | None] | None:
        """``(status, body)`` of the GET (body None if too long), or None
        (logged) if the exchange failed."""
        exchange = Deferred.fromCoroutine(self._exchange(endpoint, param, value))
        exchange.addTimeout(self._timeout, self._clock)
        try:
            return await exchange
        except TargetRefused:
            raise
        except Exception as error:  # every other failure is "the endpoint failed"
            self.log.info(
                "{purpose} to {endpoint} failed: {error}",
                purpose=purpose,
                endpoint=endpoint,
                error=type(error).__name__,
            )
            return None

    async def _exchange(
        self, endpoint: str, param: str, value: str
    ) -> tuple[int, bytes | None]:
        response = await self._http.get(
            endpoint,
            params={param: value},
            allow_redirects=False,
            unbuffered=True,
            reactor=self._clock,
            timeout=self._timeout,
        )
        try:
            body: bytes | None = await read_capped(response)
        except BodyTooLarge:
            body = None
        return response.code, body
