"""The one outbound HTTP client of the daemon (deliveries, echo challenges, key resets).

Built once and injected: a persistent connection pool sized for fan-out
(Twisted's default keeps only 2 idle connections per host), an ``Agent``
that verifies TLS certificates against the system's trust roots, no
redirect handling (``Agent`` never follows one; callers also pass
``allow_redirects=False`` to treq), and no cookies: treq's client keeps a
cookie jar by default, which would send a cookie set by one subscriber's
endpoint to every other endpoint on that host.  A ``bytes`` body is
written to the connection at once (``BytesProducer``) instead of through
treq's default ``FileBodyProducer``, which runs a ``Cooperator`` and sends
every body one reactor turn later.  Every Agent of the daemon is built by
``make_agent`` so that a connect-time address policy can be added in one
place: the connect-time target policy of ``guarded_agent``.
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IAgent, IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from pywebhooks import guarded_agent
from pywebhooks.settings import Settings
from pywebhooks.targets import TargetPolicy

#: Seconds an idle persistent connection is kept open.
IDLE_CONNECTION_TIMEOUT = 60.0


def make_connection_pool(reactor: Any, settings: Settings) -> HTTPConnectionPool:
    """A persistent pool keeping up to ``max_in_flight`` idle connections per host.

    Whoever owns it calls ``closeCachedConnections()`` when stopping.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max(2, settings.max_in_flight)
    pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
    return pool


def make_agent(
    reactor: Any,
    settings: Settings,
    pool: HTTPConnectionPool | None = None,
    tls_policy: IPolicyForHTTPS | None = None,
) -> IAgent:
    """The Agent every outbound request goes through: each connection is checked
    against the target policy after DNS resolution, TLS is verified, and
    redirects are never followed."""
    return guarded_agent.make_agent(
        reactor,
        pool if pool is not None else make_connection_pool(reactor, settings),
        TargetPolicy.with_defaults(settings.deny_targets, settings.allow_targets),
        settings.request_timeout,
        tls_policy=tls_policy,
    )


def make_http_client(
    reactor: Any,
    settings: Settings,
    pool: HTTPConnectionPool | None = None,
    tls_policy: IPolicyForHTTPS | None = None,
) -> HTTPClient:
    """A treq ``HTTPClient`` over ``make_agent`` that keeps no cookies; pass
    ``pool`` to close it later."""
    return HTTPClient(make_agent(reactor, settings, pool, tls_policy), cookiejar=no_cookies(),
                      data_to_body_producer=body_producer)


def no_cookies() -> CookieJar:
    """A cookie jar that keeps no cookie and adds none to a request."""
    return NoCookieJar(DefaultCookiePolicy(allowed_domains=[]))


class NoCookieJar(CookieJar):
    """Stores nothing and looks at nothing: treq wraps every request in a
    ``CookieAgent``, and with this jar it costs nothing beyond the wrapping.
    (Its policy also refuses every cookie, should anything call past these.)"""

    def add_cookie_header(self, request: Any) -> None:
        """Add no Cookie header."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        """Keep none of the response's cookies."""

    def set_cookie(self, cookie: Any) -> None:
        """Keep no cookie."""


#: An empty jar to pass as a request's ``cookies``: treq otherwise builds a
#: new (empty) jar for every request.  Nothing is ever added to it.
NO_COOKIES = no_cookies()


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written in one piece."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """Write the whole body; done at once."""
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Nothing to pause: everything was written at the start."""

    def resumeProducing(self) -> None:
        """Nothing to resume."""

    def stopProducing(self) -> None:
        """Nothing to stop."""


def body_producer(data: Any) -> IBodyProducer:
    """treq's ``data_to_body_producer``: ``BytesProducer`` for bytes, treq's
    default adaptation (file-like objects) for anything else."""
    if isinstance(data, bytes):
        return BytesProducer(data)
    return IBodyProducer(data)
