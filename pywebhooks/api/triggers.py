"""Trigger routes: fire a registration, and list the firings."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from pywebhooks.api.base import APIBase, missing_id, route
from pywebhooks.api.http import (
    ApiError,
    json_response,
    page_params,
    page_response,
    record_id,
    require_owner_or_admin,
)

missing_id("/v1/webhook/triggered", "registration_id", "POST")

NO_ACCESS = "You don't have access to this registration record or it no longer exists"


class TriggerRoutes(APIBase):
    """``/v1/webhook/triggered``."""

    @route("/v1/webhook/triggered/<registration_id>", "POST")
    async def trigger(self, request: IRequest, body: Any, registration_id: str) -> bytes:
        """Owner or admin: fire the registration; a JSON object body with
        ``event_data`` replaces the payload of this firing."""
        registration_id = record_id(registration_id, "registration_id")
        caller = await self._authenticate(request)
        registration = await self._store.get_registration(registration_id)
        if registration is None:
            raise ApiError(404, "Registration id not found")
        require_owner_or_admin(caller, registration, NO_ACCESS)
        event_data = registration["event_data"]
        if isinstance(body, dict) and "event_data" in body:
            event_data = body["event_data"]
        firing = await self._dispatcher.fire(registration, event_data)
        self.log.info(
            "registration {registration_id} fired as {firing_id}",
            registration_id=registration_id,
            firing_id=firing["id"],
        )
        return json_response(request, 201, firing)

    @route("/v1/webhook/triggered", "GET")
    async def list_firings(self, request: IRequest, body: Any) -> bytes:
        """Any account: every firing (with ``--private-listings``, a non-admin
        sees the firings of its own registrations)."""
        start, limit = page_params(request)
        caller = await self._authenticate(request)
        owner_id = None if self._sees_everything(caller) else caller["id"]
        page = await self._store.list_firings(start, limit, owner_id=owner_id)
        return page_response(request, "triggered_webhooks", page, start, limit)
