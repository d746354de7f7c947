"""One delivery attempt: a signed POST and its outcome.

Success is any 2xx within the request timeout.  A non-2xx answer (a
redirect included: it is never followed), a timeout, a refused connection, a
DNS or TLS failure all make a failed attempt; the deliverer never raises for
them, it describes them in an ``AttemptOutcome``.  Only a cancellation from
outside (the scheduler shutting down) propagates, as ``CancelledError``, and
only before the answer's status arrived: after it, the status stands.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from hyperlink import EncodedURL
from twisted.internet import error as net_error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeoutError, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported

from pywebhooks.delivery.signing import signature_headers
from pywebhooks.guarded_agent import TargetRefused
from pywebhooks.httpclient import NO_COOKIES
from pywebhooks.ledger.interface import PendingDelivery

#: How much of a receiver's answer is read (and thrown away) before the
#: connection is dropped instead of being returned to the pool.
MAX_RESPONSE_BYTES = 64 * 1024

#: Longest error description kept in an attempt record.
MAX_ERROR_LENGTH = 300

#: Tolerance when telling our own timeout from a cancellation by the caller.
_TIMER_SLACK = 0.001


@dataclasses.dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt did: ``ok`` (a 2xx in time), the status code or an error."""

    ok: bool
    status_code: int | None
    error: str | None
    duration: float
    at: float

    def record(self, attempt: int) -> dict[str, Any]:
        """The attempt record the store keeps (``IStore.record_attempt``)."""
        return {
            "attempt": attempt,
            "at": self.at,
            "ok": self.ok,
            "status_code": self.status_code,
            "error": self.error,
            "duration": self.duration,
        }


class _DiscardBody(Protocol):
    """Reads a response body into nowhere, dropping the connection past a cap."""

    def __init__(self, limit: int) -> None:
        self.finished: Deferred[None] = Deferred(self._cancel)
        self._remaining = limit

    def dataReceived(self, data: bytes) -> None:
        self._remaining -= len(data)
        if self._remaining < 0 and self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.finished.called:
            self.finished.callback(None)

    def _cancel(self, _: Deferred[None]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


#: Where the exceptions of a failed TLS handshake or certificate check come from.
_TLS_MODULES = frozenset({"OpenSSL", "service_identity"})

#: Agent errors that wrap the failures that caused them (in ``.reasons``).
_WRAPPERS = (RequestGenerationFailed, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived)


def _reasons(failure_value: BaseException) -> list[BaseException]:
    """The underlying exceptions of an Agent error (itself if it wraps none)."""
    if isinstance(failure_value, _WRAPPERS):
        found: list[BaseException] = []
        for reason in failure_value.reasons:
            found.extend(_reasons(reason.value))
        return found or [failure_value]
    return [failure_value]


def describe_error(exception: BaseException, timeout: float) -> str:
    """A short, secret-free description of why an attempt failed."""
    for reason in _reasons(exception):
        if isinstance(reason, TargetRefused):
            return str(reason)[:MAX_ERROR_LENGTH]
        if isinstance(reason, (DeferredTimeoutError, net_error.TimeoutError, CancelledError,
                               net_error.ConnectingCancelledError)):
            return "timeout after %gs" % (timeout,)
        if isinstance(reason, net_error.ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, net_error.DNSLookupError):
            return "DNS lookup failed"
        if isinstance(reason, SchemeNotSupported):
            return "unsupported URL scheme"
        if type(reason).__module__.split(".")[0] in _TLS_MODULES or "certificate" in str(reason).lower():
            return ("TLS error: %s" % (reason,))[:MAX_ERROR_LENGTH]
        if isinstance(reason, (net_error.ConnectionLost, net_error.ConnectionDone)):
            return "connection closed before the response"
    first = _reasons(exception)[0]
    return ("%s: %s" % (type(first).__name__, first))[:MAX_ERROR_LENGTH]


class URIForm(EncodedURL):
    """An endpoint URL already in the URI form that treq sends, made once.

    On every request treq converts the URL it is given to its URI form and
    then to text (``url.to_uri().to_text()``): for deliveries that was a
    tenth of the daemon's CPU, mostly hyperlink and an IDNA pass over the
    host.  An instance is built from that URI text, so both steps are
    already done: ``to_uri`` is the instance itself and ``to_text`` its
    cached text.
    """

    def to_uri(self) -> URIForm:
        """Already a URI."""
        return self

    def to_text(self, with_password: bool = False) -> str:
        """The URI text, computed once."""
        if with_password:
            return str(super().to_text(with_password))
        text = self.__dict__.get("_uri_text")
        if text is None:
            text = self.__dict__["_uri_text"] = super().to_text()
        return str(text)

    def host_header(self) -> str:
        """The ``Host`` header Twisted's ``Agent`` would add, computed once.

        Sent with every delivery, so that the Agent finds one and does not
        copy the request's headers (sanitising each value again) to add it.
        Same rule as ``Agent``: the port only when it is not the scheme's
        default, an IPv6 address in brackets.
        """
        value = self.__dict__.get("_host_header")
        if value is None:
            uri = URI.fromBytes(self.to_text().encode("ascii"))
            host = uri.host.decode("ascii")
            if isIPv6Address(host):
                host = "[%s]" % (host,)
            default_port = (uri.scheme, uri.port) in ((b"http", 80), (b"https", 443))
            value = self.__dict__["_host_header"] = host if default_port else "%s:%d" % (host, uri.port)
        return str(value)


@functools.lru_cache(maxsize=4096)
def parsed_url(endpoint: str) -> URIForm:
    """``endpoint`` as treq would send it, converted once per endpoint."""
    return URIForm.from_text(EncodedURL.from_text(endpoint).to_uri().to_text())


class HTTPDeliverer:
    """Makes delivery attempts with a shared treq client."""

    def __init__(self, http_client: Any, clock: IReactorTime, timeout: float,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._client = http_client
        self._clock = clock
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes

    def attempt(self, entry: PendingDelivery) -> Deferred[AttemptOutcome]:
        """POST ``entry`` to its endpoint once; the outcome, never a failure
        (except ``CancelledError`` when the caller cancels before the answer).

        A chain of callbacks, not a coroutine: this runs once per delivery,
        and a coroutine's trampoline cost a noticeable share of an attempt
        (``bench/RESULTS.md``, tenth pass)."""
        started = self._clock.seconds()
        statuses: list[int] = []
        try:
            exchange = self._send(entry, started)
        except Exception:
            exchange = fail()
        exchange.addCallback(self._drain, statuses)
        exchange.addTimeout(self._timeout, self._clock)
        return exchange.addCallbacks(self._answered, self._unanswered,
                                     callbackArgs=(started, statuses), errbackArgs=(started, statuses))

    def _cancelled_from_outside(self, started: float, failure: BaseException) -> bool:
        """True when ``failure`` is a cancellation that no timeout of ours made."""
        if self._clock.seconds() - started >= self._timeout - _TIMER_SLACK:
            return False
        return any(isinstance(reason, CancelledError) for reason in _reasons(failure))

    def _send(self, entry: PendingDelivery, started: float) -> Deferred[Any]:
        """Send the signed request; its response (not its body yet)."""
        url = parsed_url(entry.endpoint)
        headers = signature_headers(entry.secret_key, entry.id, int(started), entry.body, entry.event)
        headers["Host"] = url.host_header()
        # No ``timeout`` here: ``attempt``'s own timeout cancels the whole
        # exchange.  The empty jar spares treq a new one per request.
        return self._client.post(
            url,
            data=entry.body.encode("utf-8"),
            headers=headers,
            allow_redirects=False,
            unbuffered=True,
            cookies=NO_COOKIES,
        )

    def _drain(self, response: Any, statuses: list[int]) -> Deferred[None]:
        """Note the answer's status code, then read its body into nowhere."""
        statuses.append(int(response.code))
        body = _DiscardBody(self._max_response_bytes)
        response.deliverBody(body)
        return body.finished

    def _answered(self, _: None, started: float, statuses: list[int]) -> AttemptOutcome:
        status = statuses[0]
        return AttemptOutcome(200 <= status < 300, status, None, self._clock.seconds() - started, started)

    def _unanswered(self, failure: Failure, started: float, statuses: list[int]) -> AttemptOutcome | Failure:
        if statuses:
            # The answer came; only draining its body did not finish (in
            # time, or before a shutdown cancelled it): the status stands.
            return self._answered(None, started, statuses)
        if self._cancelled_from_outside(started, failure.value):
            return Failure(CancelledError())
        error = describe_error(failure.value, self._timeout)
        return AttemptOutcome(False, None, error, self._clock.seconds() - started, started)
