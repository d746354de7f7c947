"""``PyWebhooksAPI``: the HTTP API as one Klein app object."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from pywebhooks.api.accounts import AccountRoutes
from pywebhooks.api.base import Dispatcher, router
from pywebhooks.api.http import ApiError, error_response
from pywebhooks.api.openapi import OpenAPIRoutes
from pywebhooks.api.registrations import RegistrationRoutes
from pywebhooks.api.resets import ResetRoutes
from pywebhooks.api.subscriptions import SubscriptionRoutes
from pywebhooks.api.triggers import TriggerRoutes
from pywebhooks.errors import StoreUnavailable
from pywebhooks.guarded_agent import TargetRefused
from pywebhooks.outbound import EndpointClient
from pywebhooks.ratelimit import RateLimiter
from pywebhooks.settings import Settings
from pywebhooks.store.interface import IStore


class PyWebhooksAPI(
    AccountRoutes,
    ResetRoutes,
    RegistrationRoutes,
    SubscriptionRoutes,
    TriggerRoutes,
    OpenAPIRoutes,
):
    """The ``/v1`` REST API.

    ``resource()`` is an ``IResource`` that can be the root of a ``Site`` or
    mounted anywhere below another one (``root.putChild(b"hooks", ...)``).
    """

    def __init__(
        self,
        store: IStore,
        endpoints: EndpointClient,
        dispatcher: Dispatcher,
        settings: Settings,
        clock: IReactorTime,
    ) -> None:
        self._store = store
        self._endpoints = endpoints
        self._dispatcher = dispatcher
        self._settings = settings
        self._clock = clock
        self._key_resets = RateLimiter(
            clock, settings.apikey_reset_limit, settings.apikey_reset_window
        )

    def resource(self) -> IResource:
        """The API as a twisted.web resource."""
        return _JSONErrors(self.app.resource())

    # Error handlers, tried in this order.

    @router.handle_errors(ApiError)
    def _api_error(self, request: IRequest, failure: Failure) -> bytes:
        return error_response(request, failure.value)

    @router.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return error_response(request, ApiError(404, "Not found"))

    @router.handle_errors(MethodNotAllowed)
    def _method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = ", ".join(failure.value.valid_methods or ())
        return error_response(request, ApiError(405, "Method not allowed", {"Allow": allowed}))

    @router.handle_errors(HTTPException)
    def _http_exception(self, request: IRequest, failure: Failure) -> bytes:
        error: HTTPException = failure.value
        return error_response(request, ApiError(error.code or 500, error.name))

    @router.handle_errors(StoreUnavailable)
    def _unavailable(self, request: IRequest, failure: Failure) -> bytes:
        self.log.warn(
            "{method} {path}: store unavailable: {error}",
            method=request.method, path=request.path, error=str(failure.value),
        )
        return error_response(request, ApiError(503, "Service temporarily unavailable, try again"))

    @router.handle_errors(TargetRefused)
    def _target_refused(self, request: IRequest, failure: Failure) -> bytes:
        # The echo challenge or a key reset was about to reach an address the
        # outbound target policy forbids: nothing was sent, nothing is stored.
        return error_response(request, ApiError(400, "Endpoint not allowed: %s" % (failure.value.reason,)))

    @router.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure(
            "{method} {path} failed", failure, method=request.method, path=request.path
        )
        return error_response(request, ApiError(500, "Internal server error"))


class _JSONErrors(Resource):
    """The Klein resource, with a JSON 400 for a path or Host that is not
    UTF-8 (which Klein would answer in plain text)."""

    isLeaf = True

    def __init__(self, klein_resource: IResource) -> None:
        super().__init__()
        self._klein = klein_resource

    def render(self, request: IRequest) -> Any:
        try:
            b"/".join(request.prepath + request.postpath).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return error_response(request, ApiError(400, "Invalid URL encoding"))
        return self._klein.render(request)
