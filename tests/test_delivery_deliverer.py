"""One delivery attempt against real servers on 127.0.0.1: what counts as a success."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol

from pywebhooks.delivery.deliverer import HTTPDeliverer
from pywebhooks.httpclient import make_connection_pool, make_http_client
from pywebhooks.ledger.interface import PendingDelivery
from pywebhooks.settings import Settings
from tests.support.deliveries import logged_errors, running_reactor
from tests.support.receiver import Receiver

pytestmark = pytest.mark.usefixtures("logged_errors")

TIMEOUT = 0.5


reactor = running_reactor


class _Scripted(Protocol):
    """Answers every request with a fixed byte string, then keeps the connection open."""

    answer = b""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data and self.answer:
            self.transport.write(self.answer)  # type: ignore[union-attr]
            self.answer = b""


@pytest_twisted.async_yield_fixture
async def deliverer() -> AsyncIterator[HTTPDeliverer]:
    """A deliverer with a real pooled client and a 0.5 s timeout."""
    settings = Settings(request_timeout=TIMEOUT)
    pool = make_connection_pool(reactor(), settings)
    client = make_http_client(reactor(), settings, pool)
    yield HTTPDeliverer(client, reactor(), TIMEOUT, max_response_bytes=1024)
    await pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture
async def scripted() -> AsyncIterator[Any]:
    """Starts servers that send a scripted answer; stopped afterwards."""
    ports: list[IListeningPort] = []

    async def serve(answer: bytes) -> str:
        factory = Factory.forProtocol(type("Answer", (_Scripted,), {"answer": answer}))
        port = await TCP4ServerEndpoint(reactor(), 0, interface="127.0.0.1").listen(factory)
        ports.append(port)
        return "http://127.0.0.1:%d/hook" % (port.getHost().port,)

    yield serve
    for port in ports:
        await port.stopListening()


def entry(endpoint: str) -> PendingDelivery:
    """A delivery to ``endpoint``."""
    return PendingDelivery("delivery-id", "firing-id", "account-id", endpoint, "k" * 40, "push", '{"a": 1}')


@pytest_twisted.ensureDeferred
async def test_a_2xx_whose_body_never_ends_is_still_a_success(
        deliverer: HTTPDeliverer, scripted: Any) -> None:
    """A receiver that answers 200 in time but never finishes its body has been delivered to."""
    url = await scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nstarted")
    outcome = await deliverer.attempt(entry(url))
    assert (outcome.ok, outcome.status_code, outcome.error) == (True, 200, None)
    assert TIMEOUT - 0.01 <= outcome.duration < TIMEOUT + 0.4


@pytest_twisted.ensureDeferred
async def test_a_huge_answer_is_not_read_to_the_end(deliverer: HTTPDeliverer) -> None:
    """A receiver answering megabytes costs only the capped read; the attempt still succeeds."""
    receiver = Receiver(reactor())
    await receiver.start()
    try:
        receiver.behave("/big", status=202, body=b"x" * (8 * 1024 * 1024))
        started = time.monotonic()
        outcome = await deliverer.attempt(entry(receiver.url("/big")))
        assert (outcome.ok, outcome.status_code) == (True, 202)
        assert time.monotonic() - started < TIMEOUT
    finally:
        await receiver.stop()


@pytest_twisted.ensureDeferred
async def test_a_cancelled_attempt_is_not_a_failed_one(deliverer: HTTPDeliverer, scripted: Any) -> None:
    """Cancelling an attempt (shutdown) raises CancelledError instead of reporting a failure."""
    url = await scripted(b"")
    attempt = deliverer.attempt(entry(url))
    reactor().callLater(0.1, attempt.cancel)
    with pytest.raises(CancelledError):
        await attempt


@pytest_twisted.ensureDeferred
async def test_a_malformed_endpoint_is_a_failed_attempt(deliverer: HTTPDeliverer) -> None:
    """An endpoint that is not an http(s) URL fails the attempt without raising."""
    for endpoint, error in (("ftp://127.0.0.1/x", "unsupported URL scheme"), ("", "ValueError")):
        outcome = await deliverer.attempt(entry(endpoint))
        assert (outcome.ok, outcome.status_code) == (False, None)
        assert error in (outcome.error or "")


@pytest_twisted.ensureDeferred
async def test_a_garbled_answer_is_a_failed_attempt(deliverer: HTTPDeliverer, scripted: Any) -> None:
    """A receiver that does not speak HTTP fails the attempt, with the reason recorded."""
    url = await scripted(b"SSH-2.0-OpenSSH\r\n\r\n")
    outcome = await deliverer.attempt(entry(url))
    assert (outcome.ok, outcome.status_code) == (False, None)
    assert outcome.error


class _Recording(Protocol):
    """Keeps the bytes of the request it is sent and answers 204."""

    received: list[bytes]

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if b"\r\n\r\n" in b"".join(self.received):
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_a_delivery_carries_one_host_header_naming_the_endpoint(deliverer: HTTPDeliverer) -> None:
    """The request a receiver gets has exactly one Host header: the endpoint's host and port."""
    received: list[bytes] = []
    factory = Factory.forProtocol(type("Recording", (_Recording,), {"received": received}))
    port = await TCP4ServerEndpoint(reactor(), 0, interface="127.0.0.1").listen(factory)
    try:
        number = port.getHost().port
        outcome = await deliverer.attempt(entry("http://127.0.0.1:%d/hook" % (number,)))
    finally:
        await port.stopListening()
    assert (outcome.ok, outcome.status_code) == (True, 204)
    head = b"".join(received).split(b"\r\n\r\n")[0].decode()
    hosts = [line for line in head.split("\r\n")[1:] if line.lower().startswith("host:")]
    assert hosts == ["Host: 127.0.0.1:%d" % (number,)]


@pytest.mark.parametrize("endpoint", [
    "http://127.0.0.1:8080/hook",
    "http://127.0.0.1:80/hook",
    "https://Receiver.Example/a",
    "https://receiver.example:443/a",
    "https://receiver.example:8443/a",
    "http://bücher.example/ünïcode path/?q=ä",
])
def test_the_host_header_is_the_one_twisted_would_add(endpoint: str) -> None:
    """``URIForm.host_header`` follows the rule of Twisted's ``Agent``
    (default ports left out), on the URI treq sends."""
    from twisted.web.client import URI, Agent

    from pywebhooks.delivery.deliverer import parsed_url

    uri = URI.fromBytes(parsed_url(endpoint).to_text().encode("ascii"))
    expected = Agent(reactor())._computeHostValue(uri.scheme, uri.host, uri.port).decode("ascii")
    assert parsed_url(endpoint).host_header() == expected


@pytest.mark.parametrize("endpoint", [
    "http://127.0.0.1:8080/hook",
    "https://receiver.example/a%20b/c?x=1&y=%C3%A9",
    "http://bücher.example/ünïcode path/?q=ä#frag",
    "http://user@host.example:81/",
])
def test_an_endpoint_is_sent_exactly_as_treq_would_send_its_string(endpoint: str) -> None:
    """The pre-converted endpoint gives treq the same request URI as the plain string would."""
    from hyperlink import EncodedURL

    from pywebhooks.delivery.deliverer import parsed_url

    as_treq_would = EncodedURL.from_text(endpoint).to_uri().to_text()
    prepared = parsed_url(endpoint)
    assert prepared.to_uri().to_text() == as_treq_would
    assert prepared.to_uri().to_text() == as_treq_would  # cached, unchanged
    assert prepared.host == EncodedURL.from_text(as_treq_would).host
