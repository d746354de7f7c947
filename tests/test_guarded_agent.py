"""The guarded agent, over real loopback connections: what it connects to and what it refuses.

Every connection these tests make or attempt is to 127.0.0.1, 127.0.0.2 or ::1.
Refused addresses (169.254.169.254, ...) come from a fake resolver and are never
connected to; each test asserts the exact list of connection attempts.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IListeningPort,
    IOpenSSLContextFactory,
)
from twisted.internet.task import deferLater
from twisted.web.client import (
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseNeverReceived,
)
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pywebhooks.guarded_agent import GuardedEndpointFactory, TargetRefused, make_agent
from pywebhooks.targets import TargetPolicy

TIMEOUT = 5.0


class _Answer(Resource):
    """Answers 200 ``ok`` on every path, or 302 on ``/redirect``; counts requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, bytes | None]] = []
        self.redirect_to: bytes = b""

    def render_GET(self, request: Request) -> bytes:
        self.requests.append((request.path, request.getHeader(b"host")))
        if request.path == b"/redirect":
            request.setResponseCode(302)
            request.setHeader(b"location", self.redirect_to)
            return b""
        return b"ok"


class _CountingSite(Site):
    """A Site that counts the TCP connections it accepts."""

    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


class _Server:
    """A real twisted.web server on a loopback address and a free port."""

    def __init__(self, port: IListeningPort, site: _CountingSite, resource: _Answer) -> None:
        self._port = port
        self.site = site
        self.resource = resource

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self._port.getHost().port

    @property
    def requests(self) -> int:
        """How many HTTP requests it answered."""
        return len(self.resource.requests)

    async def stop(self) -> None:
        """Stop listening."""
        await self._port.stopListening()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _serve(endpoint_for: Callable[[Any], Any]) -> _Server:
    resource = _Answer()
    site = _CountingSite(resource)
    port = await endpoint_for(_reactor()).listen(site)
    return _Server(port, site, resource)


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[_Server]:
    """An HTTP server on 127.0.0.1."""
    running = await _serve(lambda reactor: TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    yield running
    await running.stop()


class _RecordingReactor:
    """The real reactor, recording every outgoing TCP connection attempt."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.attempts: list[tuple[str, int]] = []

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None) -> Any:
        self.attempts.append((host, port))
        return self._reactor.connectTCP(host, port, factory, timeout, bindAddress)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        raise NotImplementedError()


@implementer(IHostnameResolver)
class _ScriptedResolver:
    """Answers each name with the next scripted list of addresses (the last one repeats)."""

    def __init__(self, script: dict[str, list[list[str]]]) -> None:
        self._script = script
        self.lookups: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.lookups.append(hostName)
        answers = self._script[hostName]
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        for address in addresses:
            kind = IPv6Address if ":" in address else IPv4Address
            resolutionReceiver.addressResolved(kind("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


class _Client:
    """A treq client on a guarded agent, over a recording reactor, never following redirects."""

    def __init__(self, policy: TargetPolicy, resolver: Any = None, tls_policy: Any = None) -> None:
        self.reactor = _RecordingReactor(_reactor())
        self.pool = HTTPConnectionPool(_reactor(), persistent=False)
        self.agent = make_agent(
            self.reactor, self.pool, policy, TIMEOUT, resolver=resolver, tls_policy=tls_policy
        )
        self.http = HTTPClient(self.agent)

    async def get(self, url: str, allow_redirects: bool = False) -> Any:
        response = await self.http.get(
            url, reactor=_reactor(), timeout=TIMEOUT, allow_redirects=allow_redirects
        )
        await response.content()
        return response

    async def agent_get(self, url: bytes) -> Any:
        """GET with the bare agent (treq cannot parse IPv6-literal URLs)."""
        response = await self.agent.request(b"GET", url)
        await treq.content(response)
        return response


def test_factory_provides_the_agent_endpoint_factory_interface() -> None:
    """The guarded factory is a complete IAgentEndpointFactory."""
    factory = GuardedEndpointFactory(_reactor(), TargetPolicy(), 5.0)
    assert verifyObject(IAgentEndpointFactory, factory)


def test_target_refused_is_a_connect_error_with_the_reason() -> None:
    """A refusal is a connection error whose message is the policy's reason."""
    error = TargetRefused("target 169.254.169.254 is not allowed (link-local)")
    assert isinstance(error, ConnectError)
    assert str(error) == "target 169.254.169.254 is not allowed (link-local)"
    assert error.reason == str(error)


@pytest_twisted.ensureDeferred
async def test_default_policy_reaches_a_loopback_server(server: _Server) -> None:
    """With the default policy, a receiver on 127.0.0.1 is reached (development setups work)."""
    client = _Client(TargetPolicy())
    response = await client.get("http://127.0.0.1:%d/hook" % server.port)
    assert response.code == 200
    assert server.requests == 1
    assert client.reactor.attempts == [("127.0.0.1", server.port)]


@pytest_twisted.ensureDeferred
async def test_denying_private_refuses_loopback_and_sends_nothing(server: _Server) -> None:
    """With 'private' denied, a call to 127.0.0.1 fails with TargetRefused and the server sees nothing."""
    client = _Client(TargetPolicy(deny=["private"]))
    with pytest.raises(TargetRefused, match=r"^target 127\.0\.0\.1 is not allowed \(loopback\)$"):
        await client.get("http://127.0.0.1:%d/hook" % server.port)
    assert client.reactor.attempts == []
    assert server.site.connections == 0
    assert server.requests == 0


@pytest_twisted.ensureDeferred
async def test_denying_a_cidr_refuses_it(server: _Server) -> None:
    """An operator's own CIDR in the deny list refuses addresses inside it."""
    client = _Client(TargetPolicy(deny=["127.0.0.0/8"]))
    with pytest.raises(TargetRefused, match=r"denied by 127\.0\.0\.0/8|loopback"):
        await client.get("http://127.0.0.1:%d/" % server.port)
    assert server.site.connections == 0


@pytest_twisted.ensureDeferred
async def test_allow_lifts_a_private_deny(server: _Server) -> None:
    """Denying 'private' but allowing 127.0.0.1/32 reaches the loopback server."""
    client = _Client(TargetPolicy(deny=["private"], allow=["127.0.0.1/32"]))
    response = await client.get("http://127.0.0.1:%d/" % server.port)
    assert response.code == 200
    assert server.requests == 1


@pytest_twisted.ensureDeferred
async def test_a_host_name_resolving_to_a_refused_address_is_refused(server: _Server) -> None:
    """'localhost' (resolved by the system resolver) is refused when loopback is denied."""
    client = _Client(TargetPolicy(deny=["private"]))
    with pytest.raises(TargetRefused, match=r"is not allowed \(loopback\)"):
        await client.get("http://localhost:%d/" % server.port)
    assert client.reactor.attempts == []
    assert server.site.connections == 0


@pytest_twisted.ensureDeferred
async def test_a_host_name_is_connected_to_by_its_checked_address(server: _Server) -> None:
    """An allowed host name is connected to by IP, and the request still names the host."""
    client = _Client(TargetPolicy())
    response = await client.get("http://localhost:%d/by-name" % server.port)
    assert response.code == 200
    assert client.reactor.attempts == [("127.0.0.1", server.port)]
    assert server.resource.requests == [(b"/by-name", b"localhost:%d" % server.port)]


@pytest_twisted.ensureDeferred
async def test_the_unspecified_address_is_refused_by_default(server: _Server) -> None:
    """0.0.0.0 (which Linux routes to the host itself) is refused by the default policy."""
    client = _Client(TargetPolicy())
    with pytest.raises(TargetRefused, match=r"^target 0\.0\.0\.0 is not allowed \(unspecified\)$"):
        await client.get("http://0.0.0.0:%d/" % server.port)
    assert client.reactor.attempts == []
    assert server.site.connections == 0


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("169.254.169.254", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fe80::1", "link-local"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_name_resolving_to_metadata_is_refused_without_connecting(
    server: _Server, answer: str, label: str
) -> None:
    """A public-looking name that resolves to a metadata address is refused; nothing is dialled."""
    resolver = _ScriptedResolver({"hooks.example.com": [[answer]]})
    client = _Client(TargetPolicy(), resolver=resolver)
    with pytest.raises(TargetRefused, match=r"^target %s is not allowed \(%s\)$" % (answer, label)):
        await client.get("http://hooks.example.com:%d/" % server.port)
    assert resolver.lookups == ["hooks.example.com"]
    assert client.reactor.attempts == []


@pytest_twisted.ensureDeferred
async def test_every_resolved_address_is_checked(server: _Server) -> None:
    """An answer mixing an allowed address with a refused one is refused as a whole."""
    resolver = _ScriptedResolver({"mixed.example.com": [["127.0.0.1", "169.254.169.254"]]})
    client = _Client(TargetPolicy(), resolver=resolver)
    with pytest.raises(TargetRefused, match=r"169\.254\.169\.254 is not allowed"):
        await client.get("http://mixed.example.com:%d/" % server.port)
    assert client.reactor.attempts == []
    assert server.site.connections == 0


@pytest_twisted.ensureDeferred
async def test_dns_rebinding_is_caught_on_the_next_connection(server: _Server) -> None:
    """A name that rebinds to a metadata address after a first good answer is refused on the next attempt."""
    resolver = _ScriptedResolver({"rebind.example.com": [["127.0.0.1"], ["169.254.169.254"]]})
    client = _Client(TargetPolicy(), resolver=resolver)
    url = "http://rebind.example.com:%d/" % server.port
    first = await client.get(url)
    assert first.code == 200
    with pytest.raises(TargetRefused, match=r"169\.254\.169\.254 is not allowed \(link-local\)"):
        await client.get(url)
    assert resolver.lookups == ["rebind.example.com", "rebind.example.com"]
    assert client.reactor.attempts == [("127.0.0.1", server.port)]
    assert server.requests == 1


@pytest_twisted.ensureDeferred
async def test_an_ipv4_mapped_answer_is_dialled_as_ipv4(server: _Server) -> None:
    """An allowed IPv4-mapped answer is connected to as the plain IPv4 address that was checked."""
    resolver = _ScriptedResolver({"mapped.example.com": [["::ffff:127.0.0.1"]]})
    client = _Client(TargetPolicy(), resolver=resolver)
    response = await client.get("http://mapped.example.com:%d/" % server.port)
    assert response.code == 200
    assert client.reactor.attempts == [("127.0.0.1", server.port)]


@pytest_twisted.ensureDeferred
async def test_the_next_address_is_tried_when_one_does_not_answer(server: _Server) -> None:
    """When the first allowed address refuses the connection, the next one is tried."""
    resolver = _ScriptedResolver({"two.example.com": [["127.0.0.2", "127.0.0.1"]]})
    client = _Client(TargetPolicy(), resolver=resolver)
    # The server listens on 127.0.0.1 only, so 127.0.0.2 refuses that port.
    response = await client.get("http://two.example.com:%d/" % server.port)
    assert response.code == 200
    assert client.reactor.attempts == [("127.0.0.2", server.port), ("127.0.0.1", server.port)]


@pytest_twisted.async_yield_fixture
async def v6_server() -> AsyncIterator[_Server]:
    """An HTTP server on ::1 (skips on hosts without IPv6 loopback)."""
    try:
        running = await _serve(lambda reactor: TCP6ServerEndpoint(reactor, 0, interface="::1"))
    except Exception:  # pragma: no cover - hosts without IPv6 loopback
        pytest.skip("no IPv6 loopback here")
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_ipv6_loopback_is_reached_by_default(v6_server: _Server) -> None:
    """A receiver on [::1] is reached with the default policy, by literal and by name."""
    response = await _Client(TargetPolicy()).agent_get(b"http://[::1]:%d/" % v6_server.port)
    assert response.code == 200
    client = _Client(TargetPolicy(), resolver=_ScriptedResolver({"v6.example.com": [["::1"]]}))
    response = await client.get("http://v6.example.com:%d/" % v6_server.port)
    assert response.code == 200
    assert v6_server.requests == 2


@pytest_twisted.ensureDeferred
async def test_ipv6_loopback_is_refused_when_private_is_denied(v6_server: _Server) -> None:
    """With 'private' denied, [::1] is refused and the server sees nothing."""
    client = _Client(TargetPolicy(deny=["private"]))
    with pytest.raises(TargetRefused, match=r"^target ::1 is not allowed \(loopback\)$"):
        await client.agent_get(b"http://[::1]:%d/" % v6_server.port)
    assert v6_server.site.connections == 0


@pytest_twisted.ensureDeferred
async def test_redirects_are_not_followed(server: _Server) -> None:
    """A 302 from the endpoint comes back as 302; its Location is never requested."""
    other = await _serve(lambda reactor: TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    try:
        server.resource.redirect_to = b"http://127.0.0.1:%d/elsewhere" % other.port
        client = _Client(TargetPolicy())
        response = await client.get("http://127.0.0.1:%d/redirect" % server.port)
        assert response.code == 302
        assert other.site.connections == 0
        assert client.reactor.attempts == [("127.0.0.1", server.port)]
    finally:
        await other.stop()


@pytest_twisted.ensureDeferred
async def test_a_followed_redirect_is_still_checked(server: _Server) -> None:
    """Even a caller that follows redirects cannot be redirected to a refused address."""
    other = await _serve(lambda reactor: TCP4ServerEndpoint(reactor, 0, interface="127.0.0.2"))
    try:
        server.resource.redirect_to = b"http://127.0.0.2:%d/elsewhere" % other.port
        client = _Client(TargetPolicy(deny=["127.0.0.2/32"]))
        with pytest.raises(TargetRefused, match=r"127\.0\.0\.2 is not allowed"):
            await client.get("http://127.0.0.1:%d/redirect" % server.port, allow_redirects=True)
        assert server.requests == 1
        assert other.site.connections == 0
        assert client.reactor.attempts == [("127.0.0.1", server.port)]
    finally:
        await other.stop()


def _self_signed(hostname: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh self-signed certificate for ``hostname``, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


@implementer(IOpenSSLContextFactory)
class _ServerTLS:
    """A server TLS context from cryptography objects.

    (Twisted's CertificateOptions passes pyOpenSSL X509 objects, which
    pyOpenSSL now deprecates, and warnings are errors here.)
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self._context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._context.use_certificate(certificate)
        self._context.use_privatekey(key)

    def getContext(self) -> SSL.Context:
        return self._context


@pytest_twisted.async_yield_fixture
async def tls_server() -> AsyncIterator[tuple[_Server, bytes]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for 'localhost'."""
    key, certificate = _self_signed("localhost")
    context = _ServerTLS(key, certificate)
    running = await _serve(lambda reactor: SSL4ServerEndpoint(reactor, 0, context, interface="127.0.0.1"))
    yield running, certificate.public_bytes(serialization.Encoding.PEM)
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_https_with_an_untrusted_certificate_fails(tls_server: tuple[_Server, bytes]) -> None:
    """An HTTPS endpoint with a self-signed certificate fails: certificates are verified."""
    server, _ = tls_server
    client = _Client(TargetPolicy())
    with pytest.raises(ResponseNeverReceived):
        await client.get("https://localhost:%d/" % server.port)
    assert server.requests == 0


@pytest_twisted.ensureDeferred
async def test_https_is_verified_against_the_url_host_name(tls_server: tuple[_Server, bytes]) -> None:
    """HTTPS to a checked IP verifies the certificate for the URL's host name, not the IP."""
    server, cert_pem = tls_server
    trusting = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(cert_pem))
    by_name = _Client(TargetPolicy(), tls_policy=trusting)
    response = await by_name.get("https://localhost:%d/secure" % server.port)
    assert response.code == 200
    assert by_name.reactor.attempts == [("127.0.0.1", server.port)]
    by_ip = _Client(TargetPolicy(), tls_policy=trusting)
    with pytest.raises(ResponseNeverReceived):
        await by_ip.get("https://127.0.0.1:%d/secure" % server.port)
    assert server.requests == 1


@pytest_twisted.ensureDeferred
async def test_https_to_a_refused_address_is_refused_before_tls(tls_server: tuple[_Server, bytes]) -> None:
    """An HTTPS call to a refused address fails with TargetRefused, not a TLS error."""
    server, _ = tls_server
    client = _Client(TargetPolicy(deny=["private"]))
    with pytest.raises(TargetRefused):
        await client.get("https://localhost:%d/" % server.port)
    assert server.site.connections == 0


@implementer(IHostnameResolver)
class _HangingResolver:
    """Never answers until the test says so."""

    def __init__(self) -> None:
        self.receivers: list[Any] = []

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.receivers.append((resolutionReceiver, portNumber))
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        return resolution


@pytest_twisted.ensureDeferred
async def test_a_slow_lookup_times_out_and_a_late_answer_is_ignored(server: _Server) -> None:
    """A lookup slower than the request timeout fails the call; its late answer connects nowhere."""
    resolver = _HangingResolver()
    client = _Client(TargetPolicy(), resolver=resolver)
    with pytest.raises(CancelledError):
        await client.http.get(
            "http://slow.example.com:%d/" % server.port, reactor=_reactor(), timeout=0.05
        )
    [(receiver, port)] = resolver.receivers
    receiver.addressResolved(IPv4Address("TCP", "127.0.0.1", port))
    receiver.resolutionComplete()
    await deferLater(_reactor(), 0.05)
    assert client.reactor.attempts == []
    assert server.site.connections == 0


@pytest_twisted.ensureDeferred
async def test_other_schemes_are_not_supported() -> None:
    """Only http and https URLs can be called."""
    client = _Client(TargetPolicy())
    with pytest.raises(Exception, match="Unsupported scheme"):
        await client.get("ftp://127.0.0.1:21/")
    assert client.reactor.attempts == []

