"""Trigger routes: fire a registration, list the firings, and show the
delivery log of one firing."""

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
from pywebhooks.records import Record

missing_id("/v1/webhook/triggered", "registration_id", "POST")

NO_ACCESS = "You don't have access to this registration record or it no longer exists"

#: What a delivery record shows through the API (never a secret), and of each attempt.
DELIVERY_FIELDS = (
    "id", "epoch", "firing_id", "registration_id", "subscription_id", "account_id",
    "event", "endpoint", "state", "attempts",
)
ATTEMPT_FIELDS = ("attempt", "at", "ok", "status_code", "error", "duration")


def public_delivery(delivery: Record) -> Record:
    """``delivery`` with only the fields the API shows (no secret can slip through)."""
    shown = {name: delivery[name] for name in DELIVERY_FIELDS if name in delivery}
    shown["attempts"] = [
        {name: attempt[name] for name in ATTEMPT_FIELDS if name in attempt}
        for attempt in delivery.get("attempts") or []
    ]
    return shown


class TriggerRoutes(APIBase):
    """``/v1/webhook/triggered``."""

    @route("/v1/webhook/triggered/<registration_id>", "POST")
    async def trigger(self, request: IRequest, body: Any, registration_id: str) -> bytes:
        """Owner or admin: fire the registration; a JSON object body with
        ``event_data`` replaces the payload of this firing."""
        registration_id = record_id(registration_id, "registration_id")
        caller, registration = await self._authenticate_beside(
            request, self._store.get_registration(registration_id))
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
        page = await self._visible_page(
            request, lambda owner_id: self._store.list_firings(start, limit, owner_id=owner_id))
        return page_response(request, "triggered_webhooks", page, start, limit)

    @route("/v1/webhook/triggered/<firing_id>/deliveries", "GET")
    async def list_deliveries(self, request: IRequest, body: Any, firing_id: str) -> bytes:
        """The delivery log of one firing, in creation order, with every attempt.

        The admin sees every delivery; the owner of the firing's registration
        sees every delivery; a subscriber sees only its own deliveries of it.
        Anyone else gets 403 ``Not authorized``.  IStore has no
        ``get_firing``, so a firing is known by its deliveries (and its owner
        by their ``registration_id``): for an unknown id, or a firing that
        made no delivery, the admin gets 200 with an empty list and others
        404 ``Triggered webhook not found``; once the registration is
        deleted only the admin and the subscribers see its deliveries.
        Not paginated: a firing's fan-out is bounded by the subscriptions
        of one registration.
        """
        firing_id = record_id(firing_id, "firing_id")
        caller = await self._authenticate(request)
        deliveries = await self._store.get_deliveries(firing_id)
        if not caller["is_admin"]:
            deliveries = await self._visible_deliveries(caller, deliveries)
        return json_response(
            request, 200, {"deliveries": [public_delivery(d) for d in deliveries]}
        )

    async def _visible_deliveries(self, caller: Record, deliveries: list[Record]) -> list[Record]:
        """What a non-admin ``caller`` may see of one firing's ``deliveries``:
        all of them as the registration's owner, else its own; 404 when the
        firing shows no delivery at all, 403 when it shows none to the caller."""
        if not deliveries:
            raise ApiError(404, "Triggered webhook not found")
        registration = await self._store.get_registration(deliveries[0]["registration_id"])
        if registration is not None and registration["account_id"] == caller["id"]:
            return deliveries
        own = [delivery for delivery in deliveries if delivery["account_id"] == caller["id"]]
        if not own:
            raise ApiError(403, "Not authorized")
        return own
