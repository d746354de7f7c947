"""Registration routes: the webhooks an account defines."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from pywebhooks import records
from pywebhooks.api.base import APIBase, missing_id, route
from pywebhooks.api.http import (
    ApiError,
    is_name,
    json_object,
    json_response,
    page_params,
    page_response,
    require_admin,
    require_field,
)

missing_id("/v1/webhook/registration", "registration_id", "PATCH", "DELETE")


class RegistrationRoutes(APIBase):
    """``/v1/webhook/registration`` and ``/v1/webhook/registrations``."""

    @route("/v1/webhook/registration", "POST")
    async def create_registration(self, request: IRequest, body: Any) -> bytes:
        """Any account: define a webhook ``{event, description, event_data}``."""
        caller = await self._authenticate(request)
        fields = json_object(body)
        registration = {
            "id": records.new_id(),
            "epoch": self._clock.seconds(),
            "account_id": caller["id"],
            "event": require_field(fields, "event", is_name),
            "description": require_field(fields, "description", _is_text),
            "event_data": require_field(fields, "event_data"),
        }
        count = await self._store.count_registrations(caller["id"])
        if count >= self._settings.max_registrations_per_account:
            raise ApiError(403, "Registration limit reached")
        await self._store.insert_registration(registration)
        return json_response(request, 201, registration)

    @route("/v1/webhook/registration", "GET")
    async def list_own_registrations(self, request: IRequest, body: Any) -> bytes:
        """The caller's registrations."""
        return await self._own_page(
            request, "registrations",
            lambda start, limit, caller_id: self._store.list_registrations(start, limit, account_id=caller_id))

    @route("/v1/webhook/registration/<registration_id>", "PATCH")
    async def update_registration(
        self, request: IRequest, body: Any, registration_id: str
    ) -> bytes:
        """Owner or admin: change the description."""
        registration_id = await self._authorized_id(
            request, registration_id, "registration_id", self._store.get_registration)
        description = json_object(body).get("description")
        if not _is_text(description):
            raise ApiError(400, "Description field missing")
        result = await self._store.update_registration(
            registration_id, {"description": description}
        )
        return json_response(request, 200, result.to_json())

    @route("/v1/webhook/registration/<registration_id>", "DELETE")
    async def delete_registration(
        self, request: IRequest, body: Any, registration_id: str
    ) -> bytes:
        """Owner or admin: delete it and every subscription to it."""
        registration_id = await self._authorized_id(
            request, registration_id, "registration_id", self._store.get_registration)
        result = await self._store.delete_registration(registration_id)
        return json_response(request, 200, result.to_json())

    @route("/v1/webhook/registrations", "GET")
    async def list_registrations(self, request: IRequest, body: Any) -> bytes:
        """Any account: the catalogue of every registration."""
        await self._authenticate(request)
        start, limit = page_params(request)
        page = await self._store.list_registrations(start, limit)
        return page_response(request, "registrations", page, start, limit)

    @route("/v1/webhook/registrations", "DELETE")
    async def delete_registrations(self, request: IRequest, body: Any) -> bytes:
        """Admin: delete every registration (subscriptions stay)."""
        require_admin(await self._authenticate(request))
        result = await self._store.delete_all_registrations()
        return json_response(request, 200, result.to_json())


def _is_text(value: Any) -> bool:
    return isinstance(value, str)
