"""Subscription routes: which accounts receive which registrations."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from pywebhooks import records
from pywebhooks.api.base import APIBase, missing_id, route
from pywebhooks.api.http import (
    ApiError,
    json_response,
    page_params,
    page_response,
    record_id,
    require_admin,
)

missing_id("/v1/webhook/subscription", "subscription_id", "POST", "DELETE")


class SubscriptionRoutes(APIBase):
    """``/v1/webhook/subscription`` and ``/v1/webhook/subscriptions``."""

    @route("/v1/webhook/subscription/<registration_id>", "POST")
    async def subscribe(self, request: IRequest, body: Any, registration_id: str) -> bytes:
        """Any account: subscribe to a registration (duplicates allowed)."""
        registration_id = record_id(registration_id, "subscription_id")
        caller = await self._authenticate(request)
        if await self._store.get_registration(registration_id) is None:
            raise ApiError(404, "The registration id does not exist")
        count = await self._store.count_subscriptions(caller["id"])
        if count >= self._settings.max_subscriptions_per_account:
            raise ApiError(403, "Subscription limit reached")
        subscription = {
            "id": records.new_id(),
            "epoch": self._clock.seconds(),
            "account_id": caller["id"],
            "registration_id": registration_id,
        }
        await self._store.insert_subscription(subscription)
        return json_response(request, 201, subscription)

    @route("/v1/webhook/subscription", "GET")
    async def list_own_subscriptions(self, request: IRequest, body: Any) -> bytes:
        """The caller's subscriptions."""
        return await self._own_page(
            request, "subscriptions",
            lambda start, limit, caller_id: self._store.list_subscriptions(start, limit, account_id=caller_id))

    @route("/v1/webhook/subscription/<subscription_id>", "DELETE")
    async def unsubscribe(self, request: IRequest, body: Any, subscription_id: str) -> bytes:
        """The subscriber or an admin: delete one subscription."""
        subscription_id = await self._authorized_id(
            request, subscription_id, "subscription_id", self._store.get_subscription)
        result = await self._store.delete_subscription(subscription_id)
        return json_response(request, 200, result.to_json())

    @route("/v1/webhook/subscriptions", "GET")
    async def list_subscriptions(self, request: IRequest, body: Any) -> bytes:
        """Any account: every subscription (with ``--private-listings``, a
        non-admin sees its own and those to its registrations)."""
        start, limit = page_params(request)
        page = await self._visible_page(
            request, lambda visible_to: self._store.list_subscriptions(start, limit, visible_to=visible_to))
        return page_response(request, "subscriptions", page, start, limit)

    @route("/v1/webhook/subscriptions", "DELETE")
    async def delete_subscriptions(self, request: IRequest, body: Any) -> bytes:
        """Admin: delete every subscription."""
        require_admin(await self._authenticate(request))
        result = await self._store.delete_all_subscriptions()
        return json_response(request, 200, result.to_json())
