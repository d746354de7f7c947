"""EndpointClient over real loopback HTTP: the echo challenge and key
deliveries, their failure modes, and that no key is ever logged."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

import contextlib
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from pywebhooks.outbound import MAX_BODY, EndpointClient

Answer = Callable[[Request], Any]


class _Endpoint(Resource):
    isLeaf = True

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer
        self.queries: list[dict[str, list[str]]] = []
        self.hung: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        self.queries.append(
            {key.decode(): [v.decode() for v in values] for key, values in request.args.items()}
        )
        return self.answer(request)


@contextlib.asynccontextmanager
async def endpoint(answer: Answer, timeout: float = 5.0) -> AsyncIterator[tuple[EndpointClient, _Endpoint, str]]:
    """A loopback endpoint answering with ``answer``, and a client for it."""
    resource = _Endpoint(answer)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(resource))
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = EndpointClient(HTTPClient(Agent(reactor, pool=pool)), reactor, timeout)
    try:
        yield client, resource, "http://127.0.0.1:%d/hook" % (port.getHost().port,)
    finally:
        for request in resource.hung:
            if not request._disconnected:
                request.finish()
        await port.stopListening()
        await pool.closeCachedConnections()


def echo_back(request: Request) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"echo": request.args[b"echo"][0].decode()}).encode()


def status(code: int, body: bytes = b"{}") -> Answer:
    def answer(request: Request) -> bytes:
        request.setResponseCode(code)
        return body

    return answer


@pytest_twisted.ensureDeferred
async def test_echo_passes_when_the_endpoint_echoes_the_value() -> None:
    """A 200 JSON {"echo": value} passes; the value is 40 hex and fresh each time."""
    async with endpoint(echo_back) as (client, resource, url):
        assert await client.echo(url) is True
        assert await client.echo(url) is True
        values = [query["echo"][0] for query in resource.queries]
        assert len(values) == 2 and values[0] != values[1]
        assert all(len(value) == 40 and int(value, 16) >= 0 for value in values)


@pytest_twisted.ensureDeferred
async def test_echo_keeps_the_endpoints_own_query_string() -> None:
    """The echo parameter is added to the endpoint's existing query."""
    async with endpoint(echo_back) as (client, resource, url):
        assert await client.echo(url + "?token=abc&x=1") is True
        assert resource.queries[0]["token"] == ["abc"] and resource.queries[0]["x"] == ["1"]
        assert "echo" in resource.queries[0]


@pytest.mark.parametrize(
    "answer",
    [
        status(201, b'{"echo": "x"}'),
        status(500),
        status(200, b"not json"),
        status(200, b""),
        status(200, b'{"echo": "wrong"}'),
        status(200, b'["echo"]'),
        status(302),
    ],
    ids=["201", "500", "non-json", "empty", "wrong-value", "array", "redirect"],
)
@pytest_twisted.ensureDeferred
async def test_echo_fails_on_anything_but_the_exact_answer(answer: Answer) -> None:
    """Any other status, a non-JSON body or a wrong value fails the echo."""
    async with endpoint(answer) as (client, _, url):
        assert await client.echo(url) is False


@pytest_twisted.ensureDeferred
async def test_echo_does_not_follow_redirects() -> None:
    """A redirect to an endpoint that would echo correctly still fails, and is not followed."""
    async with endpoint(echo_back) as (_, good, good_url):

        def redirect(request: Request) -> bytes:
            request.redirect(good_url.encode() + b"?" + request.uri.split(b"?", 1)[1])
            return b""

        async with endpoint(redirect) as (client, _, url):
            assert await client.echo(url) is False
        assert good.queries == []


@pytest_twisted.ensureDeferred
async def test_echo_times_out_on_a_silent_endpoint() -> None:
    """An endpoint that never answers fails the echo after the timeout."""
    def hang(request: Request) -> Any:
        resource.hung.append(request)
        return NOT_DONE_YET

    async with endpoint(hang, timeout=0.2) as (client, resource, url):
        started = reactor.seconds()
        assert await client.echo(url) is False
        assert 0.15 < reactor.seconds() - started < 3


@pytest_twisted.ensureDeferred
async def test_echo_times_out_on_a_body_that_never_ends() -> None:
    """Headers in time but a body that stalls still fails within the timeout."""
    def trickle(request: Request) -> Any:
        resource.hung.append(request)
        request.setHeader(b"content-length", b"100")
        request.write(b'{"echo": ')
        return NOT_DONE_YET

    async with endpoint(trickle, timeout=0.2) as (client, resource, url):
        started = reactor.seconds()
        assert await client.echo(url) is False
        assert reactor.seconds() - started < 3


@pytest_twisted.ensureDeferred
async def test_echo_reads_at_most_max_body_bytes() -> None:
    """An answer longer than MAX_BODY fails the echo instead of being buffered."""
    def huge(request: Request) -> bytes:
        value = request.args[b"echo"][0].decode()
        return json.dumps({"echo": value, "pad": "x" * MAX_BODY}).encode()

    async with endpoint(huge) as (client, _, url):
        assert await client.echo(url) is False


@pytest_twisted.ensureDeferred
async def test_echo_to_a_closed_port_fails() -> None:
    """A refused connection is a failed echo, not an exception."""
    async with endpoint(echo_back) as (client, _, url):
        pass
    assert await client.echo(url) is False


@pytest_twisted.ensureDeferred
async def test_send_key_succeeds_on_any_2xx() -> None:
    """A key reset passes on 200, 201 or 204 (any body) and sends ?<param>=<key>."""
    for code in (200, 201, 204):
        async with endpoint(status(code, b"" if code == 204 else b"ok")) as (client, resource, url):
            assert await client.send_key(url + "?a=b", "secret_key", "k" * 40) is True
            assert resource.queries == [{"a": ["b"], "secret_key": ["k" * 40]}]


@pytest_twisted.ensureDeferred
async def test_send_key_fails_on_other_statuses_and_bad_params() -> None:
    """A non-2xx answer (including a redirect) fails; an unknown parameter name is a ValueError."""
    for code in (301, 400, 500):
        async with endpoint(status(code)) as (client, _, url):
            assert await client.send_key(url, "api_key", "k" * 40) is False
    with pytest.raises(ValueError):
        await client.send_key(url, "password", "k")


@pytest_twisted.ensureDeferred
async def test_failures_are_logged_without_the_key() -> None:
    """Failed echoes and key resets are logged, and the log never holds the value sent."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        async with endpoint(status(500)) as (client, resource, url):
            assert await client.send_key(url, "api_key", "feedface" * 5) is False
            assert await client.echo(url) is False
            echoed = resource.queries[1]["echo"][0]
        assert await client.send_key(url, "secret_key", "deadbeef" * 5) is False
    finally:
        globalLogPublisher.removeObserver(events.append)
    # What the client side logs (the test endpoint's own access log, like any
    # web server's, shows the query string it received).
    ours = [
        event for event in events
        if event.get("log_namespace", "").startswith(("pywebhooks", "twisted.web.client", "treq"))
    ]
    text = "\n".join(formatEvent(event) for event in ours) + repr(ours)
    assert "key reset" in text and "echo" in text
    for secret in ("feedface" * 5, "deadbeef" * 5, echoed):
        assert secret not in text
