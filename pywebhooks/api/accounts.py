"""Account routes: create (with the echo challenge), read, change endpoint,
delete, and the admin's list and bulk delete."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from pywebhooks import accounts
from pywebhooks.api.base import APIBase, missing_id, route
from pywebhooks.api.http import (
    ApiError,
    endpoint_field,
    is_name,
    json_object,
    json_response,
    page_params,
    page_response,
    record_id,
    require_admin,
    require_field,
)
from pywebhooks.errors import DuplicateUsername

missing_id("/v1/account", "account_id", "GET", "DELETE")


class AccountRoutes(APIBase):
    """``/v1/account`` and ``/v1/accounts``."""

    async def _echo(self, endpoint: str) -> None:
        """400 ``Echo response failed`` unless ``endpoint`` passes the echo challenge."""
        if not await self._endpoints.echo(endpoint):
            raise ApiError(400, "Echo response failed")

    @route("/v1/account", "POST")
    async def create_account(self, request: IRequest, body: Any) -> bytes:
        """Public: create an account whose endpoint passes the echo challenge."""
        fields = json_object(body)
        endpoint = endpoint_field(fields)
        username = require_field(fields, "username", is_name)
        await self._echo(endpoint)
        record, api_key = accounts.new_account(username, endpoint, self._clock)
        try:
            await self._store.insert_account(record)
        except DuplicateUsername:
            raise ApiError(409, "Username already exists") from None
        self.log.info("account {account_id} created", account_id=record["id"])
        return json_response(request, 201, dict(record, api_key=api_key))

    @route("/v1/account/<account_id>", "GET")
    async def get_account(self, request: IRequest, body: Any, account_id: str) -> bytes:
        """The caller's own record (api_key as its hash)."""
        account_id = record_id(account_id, "account_id")
        caller = await self._authenticate(request)
        if caller["id"] != account_id:
            raise ApiError(403, "Not authorized")
        return json_response(request, 200, caller)

    @route("/v1/account", "PATCH")
    async def change_endpoint(self, request: IRequest, body: Any) -> bytes:
        """Move the caller to a new endpoint (echo-checked); resets failed_count."""
        caller = await self._authenticate(request)
        endpoint = endpoint_field(json_object(body))
        await self._echo(endpoint)
        result = await self._store.update_account(
            caller["id"], {"endpoint": endpoint, "failed_count": 0}
        )
        return json_response(request, 200, result.to_json())

    @route("/v1/account/<account_id>", "DELETE")
    async def delete_account(self, request: IRequest, body: Any, account_id: str) -> bytes:
        """Delete an account (owner or admin) with its registrations and subscriptions."""
        account_id = record_id(account_id, "account_id")
        caller = await self._authenticate(request)
        if caller["id"] != account_id and not caller["is_admin"]:
            raise ApiError(403, "Not authorized")
        result = await self._store.delete_account(account_id)
        return json_response(request, 200, result.to_json())

    @route("/v1/accounts", "GET")
    async def list_accounts(self, request: IRequest, body: Any) -> bytes:
        """Admin: every account, without keys."""
        require_admin(await self._authenticate(request))
        start, limit = page_params(request)
        page = await self._store.list_accounts(start, limit)
        rows = [accounts.public_view(row) for row in page.rows]
        return page_response(request, "accounts", page, start, limit, rows)

    @route("/v1/accounts", "DELETE")
    async def delete_accounts(self, request: IRequest, body: Any) -> bytes:
        """Admin: delete every non-admin account (no cascade)."""
        require_admin(await self._authenticate(request))
        result = await self._store.delete_non_admin_accounts()
        return json_response(request, 200, result.to_json())
