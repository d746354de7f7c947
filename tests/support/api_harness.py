"""A ``PyWebhooksAPI`` on a real loopback port, for the ``test_api_*`` tests.

``running_api()`` starts a ``Site`` (optionally with the API mounted below
another resource), a real ``Receiver`` as the accounts' endpoint, a
``MemoryStore`` (wrapped so that a test can make a method fail) and a
``RecordingDispatcher``; ``ApiHarness.call`` makes a request with treq and
answers a ``Reply``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json as jsonlib
from typing import Any, AsyncIterator, Callable, Mapping

import treq
from treq.client import HTTPClient
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from pywebhooks import records
from pywebhooks.accounts import create_admin
from pywebhooks.api import PyWebhooksAPI
from pywebhooks.outbound import EndpointClient
from pywebhooks.records import Record
from pywebhooks.settings import Settings
from pywebhooks.store.memory import MemoryStore
from tests.support.receiver import Receiver

#: Builds a dispatcher from the harness's store and clock.
DispatcherFactory = Callable[[Any, IReactorTime], Any]

#: ``call(json=...)`` default: send no body at all.
NO_BODY: Any = object()


@dataclasses.dataclass
class Reply:
    """One answer of the API."""

    status: int
    headers: Headers
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return jsonlib.loads(self.body)

    def header(self, name: str) -> str | None:
        """The first value of header ``name``."""
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def error(self) -> str:
        """The ``Error`` message of a JSON error body."""
        body = self.json()
        assert set(body) == {"Error"}, body
        return body["Error"]


class FaultyStore:
    """A store proxy whose methods named in ``faults`` raise the given exception."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.faults: dict[str, Exception] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        fault = self.faults.get(name)
        if fault is None:
            return method

        async def failing(*args: Any, **kwargs: Any) -> Any:
            raise fault

        return failing


class RecordingDispatcher:
    """A stand-in for ``delivery.dispatch.Dispatcher``: records each firing
    in the store (without deliveries) and remembers the call."""

    def __init__(self, store: Any, clock: IReactorTime) -> None:
        self._store = store
        self._clock = clock
        self.calls: list[tuple[Record, Any]] = []
        self.fault: Exception | None = None
        #: when set, each firing waits for this Deferred first
        self.hold: Deferred[None] | None = None

    async def fire(self, registration: Record, event_data: Any) -> Record:
        """Record the firing; raise ``fault`` if set."""
        if self.hold is not None:
            await self.hold
        if self.fault is not None:
            raise self.fault
        firing = {
            "id": records.new_id(),
            "epoch": self._clock.seconds(),
            "registration_id": registration["id"],
        }
        await self._store.insert_firing(firing, [])
        self.calls.append((registration, event_data))
        return firing


class ApiHarness:
    """The API under test and the parts around it."""

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        mount: bytes | None,
        dispatcher: DispatcherFactory | None,
    ) -> None:
        self.reactor: Any = global_reactor
        self.settings = settings
        self.clock = clock
        self.store = FaultyStore(MemoryStore())
        self.receiver = Receiver(self.reactor)
        self.dispatcher = (dispatcher or RecordingDispatcher)(self.store, clock)
        self._mount = mount
        self._pools: list[HTTPConnectionPool] = []
        self.endpoints = EndpointClient(self._client(), self.reactor, settings.request_timeout)
        self.api = PyWebhooksAPI(self.store, self.endpoints, self.dispatcher, settings, clock)
        self.http = self._client()
        self._port: IListeningPort | None = None
        self.admin: Record = {}

    def _client(self) -> HTTPClient:
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        self._pools.append(pool)
        return HTTPClient(Agent(self.reactor, pool=pool))

    async def start(self) -> None:
        """Listen on a free loopback port; create the admin account."""
        await self.receiver.start()
        resource = self.api.resource()
        if self._mount is not None:
            root = Resource()
            root.putChild(self._mount, resource)
            resource = root
        site = Site(resource)
        site.displayTracebacks = False
        self._port = await serverFromString(self.reactor, "tcp:0:interface=127.0.0.1").listen(site)
        api_key, secret_key = await create_admin(self.store, self.clock)
        self.admin = dict(
            await self.store.get_account_by_username("admin"),
            api_key=api_key,
            secret_key=secret_key,
        )

    async def stop(self) -> None:
        """Stop listening and close connections."""
        if self._port is not None:
            await self._port.stopListening()
        await self.receiver.stop()
        for pool in self._pools:
            await pool.closeCachedConnections()

    @property
    def base_url(self) -> str:
        """The URL the API answers at (including the mount point)."""
        assert self._port is not None
        prefix = "" if self._mount is None else "/" + self._mount.decode()
        return "http://127.0.0.1:%d%s" % (self._port.getHost().port, prefix)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = NO_BODY,
        data: bytes | None = None,
        account: Mapping[str, Any] | None = None,
        headers: Mapping[str, str | bytes] | None = None,
        content_type: str | None = "application/json",
        timeout: float = 10,
    ) -> Reply:
        """``method path`` as ``account`` (its username and api key headers).

        ``json`` is serialised as the body; ``data`` is sent as is.
        """
        sent: dict[str, list[str | bytes]] = {}
        if content_type is not None:
            sent["Content-Type"] = [content_type]
        if account is not None:
            sent["username"] = [account["username"]]
            sent["api-key"] = [account["api_key"]]
        for name, value in (headers or {}).items():
            sent[name] = [value]
        if json is not NO_BODY:
            data = jsonlib.dumps(json).encode()
        response = await self.http.request(
            method,
            self.base_url + path,
            headers=sent,
            data=data,
            allow_redirects=False,
            reactor=self.reactor,
            timeout=timeout,
        )
        body = await treq.content(response)
        return Reply(response.code, response.headers, body)

    async def new_account(self, username: str, path: str = "/account/endpoint") -> Record:
        """Create an account through the API; its record with the plaintext api key."""
        reply = await self.call(
            "POST", "/v1/account", json={"username": username, "endpoint": self.receiver.url(path)}
        )
        assert reply.status == 201, (reply.status, reply.body)
        return reply.json()

    async def new_registration(self, account: Record, event: str = "order.paid") -> Record:
        """Create a registration owned by ``account``."""
        reply = await self.call(
            "POST",
            "/v1/webhook/registration",
            account=account,
            json={"event": event, "description": "d", "event_data": {"n": 1}},
        )
        assert reply.status == 201, (reply.status, reply.body)
        return reply.json()

    async def subscribe(self, account: Record, registration: Record) -> Record:
        """Subscribe ``account`` to ``registration``."""
        reply = await self.call(
            "POST", "/v1/webhook/subscription/" + registration["id"], account=account
        )
        assert reply.status == 201, (reply.status, reply.body)
        return reply.json()


@contextlib.asynccontextmanager
async def running_api(
    clock: IReactorTime | None = None,
    mount: bytes | None = None,
    dispatcher: DispatcherFactory | None = None,
    **settings: Any,
) -> AsyncIterator[ApiHarness]:
    """A started ``ApiHarness`` (``settings`` override ``Settings`` fields).

    ``dispatcher(store, clock)`` builds the dispatcher (default: a
    ``RecordingDispatcher``).
    """
    harness = ApiHarness(
        Settings(**settings), clock if clock is not None else global_reactor, mount, dispatcher
    )
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
