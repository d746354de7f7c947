"""The shared Klein router, the ``route`` decorator and the base of the API class.

Each resource family (accounts, key resets, registrations, subscriptions,
triggers) is a mixin of ``APIBase`` in its own module; ``app.PyWebhooksAPI``
combines them.  Every route goes through ``route``, which reads the request
body once (413/415/400 before anything else) and hands the handler
``(self, request, body, **path_variables)``.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable, Coroutine, Protocol, TypeVar

from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from pywebhooks.api.http import (
    ApiError,
    authenticate,
    page_params,
    page_response,
    read_body,
    record_id,
    require_owner_or_admin,
)
from pywebhooks.outbound import EndpointClient
from pywebhooks.ratelimit import RateLimiter
from pywebhooks.records import Page, Record
from pywebhooks.settings import Settings
from pywebhooks.store.interface import IStore

#: The one URL map of the API; ``app.PyWebhooksAPI`` binds it to an instance.
router = Klein()

Handler = Callable[..., Coroutine[Any, Any, bytes]]

T = TypeVar("T")


class Dispatcher(Protocol):
    """What the trigger route needs from ``delivery.dispatch.Dispatcher``."""

    async def fire(self, registration: Record, event_data: Any) -> Record:
        """Record one firing of ``registration`` with ``event_data``; its record."""


def route(path: str, *methods: str, endpoint: str | None = None) -> Callable[[Handler], Handler]:
    """Register the decorated coroutine method for ``methods`` on ``path``.

    A trailing slash is accepted.  The handler runs to completion even if
    the client goes away, so a write it started is never cut in half.
    """

    def register(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def run(self: APIBase, request: IRequest, **variables: str) -> Deferred[bytes]:
            body = read_body(request, self._settings.max_body_size)
            work = Deferred.fromCoroutine(handler(self, request, body, **variables))
            return shielded(work, self.log)

        router.route(
            path,
            methods=list(methods),
            strict_slashes=False,
            merge_slashes=False,
            endpoint=endpoint or handler.__name__,
        )(run)
        return handler

    return register


def missing_id(path: str, name: str, *methods: str) -> None:
    """Answer 400 ``Missing <name>`` for ``methods`` on ``path`` (a route that
    needs an id, called without one)."""

    async def missing(self: APIBase, request: IRequest, body: Any) -> bytes:
        raise ApiError(400, "Missing %s" % (name,))

    route(path, *methods, endpoint="missing %s on %s" % (name, path))(missing)


def shielded(work: Deferred[bytes], log: Logger) -> Deferred[bytes]:
    """A Deferred with ``work``'s result whose cancellation leaves ``work`` running."""
    outer: Deferred[bytes] = Deferred()

    def forward(result: Any) -> None:
        if not outer.called:
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)
        elif isinstance(result, Failure) and not result.check(ApiError):
            log.failure("request failed after its client went away", result)

    work.addBoth(forward)
    return outer


class APIBase:
    """State and helpers shared by the route mixins."""

    log = Logger()
    app = router

    _store: IStore
    _endpoints: EndpointClient
    _dispatcher: Dispatcher
    _settings: Settings
    _clock: IReactorTime
    _key_resets: RateLimiter

    async def _authenticate(self, request: IRequest) -> Record:
        """The caller's account (401 if the credentials are missing or wrong)."""
        return await authenticate(request, self._store)

    async def _authenticate_beside(self, request: IRequest, reading: Awaitable[T]) -> tuple[Record, T]:
        """The caller's account and the result of ``reading``, a store read
        that does not depend on who the caller is.

        The read goes to the store while the credentials are checked, so with
        a networked store (RethinkDB) both queries are in flight together, one
        round trip instead of two; the embedded store answers both at once
        anyway (``SQLiteDatabase.read``).  Nothing of it is used unless the
        credentials pass; when they do not, its result or failure is dropped.
        """
        read = ensureDeferred(reading)
        try:
            caller = await self._authenticate(request)
        except BaseException:
            read.addErrback(lambda _: None)
            raise
        return caller, await read

    async def _visible_page(self, request: IRequest,
                            read: Callable[[str | None], Awaitable[Page]]) -> Page:
        """A page of an "every record" list: ``read(None)`` (all of them), or
        with ``--private-listings`` ``read(caller_id)`` for a non-admin caller.
        Without private listings the page does not depend on the caller, so
        it is read beside the authentication (``_authenticate_beside``)."""
        if not self._settings.private_listings:
            _, page = await self._authenticate_beside(request, read(None))
            return page
        caller = await self._authenticate(request)
        return await read(None if self._sees_everything(caller) else caller["id"])

    async def _authorized_id(self, request: IRequest, raw_id: str, name: str,
                             read: Callable[[str], Awaitable[Record | None]]) -> str:
        """The checked id of a record that the caller owns, or may manage as
        the admin: 400 for an id that is not one, 401, 403 ``Not authorized``
        (also for a missing record).  The record is read beside the
        authentication."""
        checked = record_id(raw_id, name)
        caller, record = await self._authenticate_beside(request, read(checked))
        require_owner_or_admin(caller, record)
        return checked

    async def _own_page(self, request: IRequest, key: str,
                        read: Callable[[int, int, str], Awaitable[Page]]) -> bytes:
        """The caller's own records under ``key``: ``read(start, limit, caller_id)``."""
        caller = await self._authenticate(request)
        start, limit = page_params(request)
        page = await read(start, limit, caller["id"])
        return page_response(request, key, page, start, limit)

    def _sees_everything(self, caller: Record) -> bool:
        """Whether ``caller`` gets the unfiltered "all records" lists."""
        return caller["is_admin"] or not self._settings.private_listings
