"""An HTTP ``Agent`` that only connects to addresses a :class:`TargetPolicy` allows.

Every new connection goes through :class:`GuardedEndpointFactory`:

1. the URL's host is resolved with the injected resolver (by default the
   reactor's ``nameResolver``);
2. EVERY resolved address is checked; if any one is refused the connection
   fails with :class:`TargetRefused` and nothing is connected to at all (an
   answer that mixes a public address with a metadata address is hostile);
3. the connection is made to the checked IP address itself (a TCP4/TCP6
   endpoint, addresses tried in order), so no second resolution can rebind
   the name between the check and the connect;
4. for ``https`` the connection is wrapped in TLS whose certificate is
   verified against the URL's ORIGINAL host name, not the IP.

Because the check runs when connecting, it runs on every attempt (echo,
key reset, each delivery and each retry), and DNS rebinding cannot bypass
it.  ``HTTPConnectionPool`` keys its cached connections by
(scheme, host, port): a reused connection goes to an address that was
checked when the connection was made, which is what we want.

The agent never follows redirects (``Agent`` does not).  treq's
``HTTPClient`` DOES follow them unless told otherwise: callers must pass
``allow_redirects=False`` and treat a 3xx as a failure.  Even a redirect
that is followed is checked, because its connection comes through here too.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, URI
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from pywebhooks.targets import TargetPolicy


class TargetRefused(ConnectError):
    """The target policy refused an address the URL's host resolved to."""

    MESSAGE = "Outbound target refused"

    def __init__(self, reason: str) -> None:
        super().__init__(string=reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@implementer(IResolutionReceiver)
class _AddressCollector:
    """Gathers a resolution's IP addresses into a Deferred list."""

    def __init__(self) -> None:
        self.done: Deferred[list[str]] = Deferred()
        self._addresses: list[str] = []

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if isinstance(host, str) and host not in self._addresses:
            self._addresses.append(host)

    def resolutionComplete(self) -> None:
        # The Deferred may have been cancelled (a request timeout) meanwhile.
        if not self.done.called:
            self.done.callback(self._addresses)


def resolve_addresses(resolver: IHostnameResolver, host: str, port: int) -> Deferred[list[str]]:
    """The distinct IP addresses ``host`` resolves to for a TCP connection."""
    collector = _AddressCollector()
    resolver.resolveHostName(
        collector,
        host,
        portNumber=port,
        addressTypes=[IPv4Address, IPv6Address],
        transportSemantics="TCP",
    )
    return collector.done


@implementer(IStreamClientEndpoint)
class _CheckedTCPEndpoint:
    """Resolves a host, checks every address, then connects to a checked IP."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        resolver: IHostnameResolver,
        policy: TargetPolicy,
        host: str,
        port: int,
        timeout: float,
    ) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._policy = policy
        self._host = host
        self._port = port
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect ``protocolFactory`` to the first allowed address that answers."""
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        addresses = await resolve_addresses(self._resolver, self._host, self._port)
        if not addresses:
            raise DNSLookupError("no address for %s" % (self._host,))
        for address in addresses:
            reason = self._policy.check(address)
            if reason is not None:
                self.log.warn(
                    "refused outbound connection to {host}: {reason}",
                    host=self._host,
                    reason=reason,
                )
                raise TargetRefused(reason)
        failure: ConnectError | None = None
        for address in addresses:
            endpoint = self._ip_endpoint(self._policy.normalise(address))
            try:
                return await endpoint.connect(protocolFactory)
            except ConnectError as error:
                failure = error
        assert failure is not None
        raise failure

    def _ip_endpoint(self, ip: str) -> IStreamClientEndpoint:
        """A plain TCP endpoint to ``ip``, which needs no resolution."""
        endpoint_type = TCP6ClientEndpoint if ":" in ip else TCP4ClientEndpoint
        return endpoint_type(self._reactor, ip, self._port, timeout=self._timeout)


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    """Endpoints for an ``Agent`` that honour a :class:`TargetPolicy`.

    ``resolver`` defaults to ``reactor.nameResolver``; ``tls_policy`` to
    ``BrowserLikePolicyForHTTPS()`` (the system's trust roots).
    """

    def __init__(
        self,
        reactor: Any,
        policy: TargetPolicy,
        connect_timeout: float = 30.0,
        *,
        resolver: IHostnameResolver | None = None,
        tls_policy: IPolicyForHTTPS | None = None,
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._resolver = resolver if resolver is not None else reactor.nameResolver
        self._tls_policy = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        """TCP to a checked address for ``http``, plus TLS for ``https``."""
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported("Unsupported scheme: %r" % (uri.scheme,))
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("the host %r is not ASCII" % (uri.host,)) from None
        endpoint: IStreamClientEndpoint = _CheckedTCPEndpoint(
            self._reactor, self._resolver, self._policy, host, uri.port, self._connect_timeout
        )
        if uri.scheme == b"https":
            creator = self._tls_policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


def make_agent(
    reactor: Any,
    pool: HTTPConnectionPool,
    policy: TargetPolicy,
    connect_timeout: float,
    *,
    resolver: IHostnameResolver | None = None,
    tls_policy: IPolicyForHTTPS | None = None,
) -> Agent:
    """An ``Agent`` on ``pool`` whose every connection is checked by ``policy``."""
    factory = GuardedEndpointFactory(
        reactor, policy, connect_timeout, resolver=resolver, tls_policy=tls_policy
    )
    return Agent.usingEndpointFactory(reactor, factory, pool=pool)
