"""Key resets: a new key goes to the account's endpoint, never into the reply."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from pywebhooks.api.base import APIBase, route
from pywebhooks.api.http import ApiError, header, json_response
from pywebhooks.keys import generate_key, hash_api_key
from pywebhooks.records import Record

SENT = {"Message": "New key sent to endpoint"}


class ResetRoutes(APIBase):
    """``/v1/account/reset/apikey`` and ``/v1/account/reset/secretkey``."""

    @route("/v1/account/reset/apikey", "POST")
    async def reset_api_key(self, request: IRequest, body: Any) -> bytes:
        """Public (username header only), rate-limited per account."""
        username = header(request, b"username")
        if username is None:
            raise ApiError(400, "Missing the username header value")
        account = await self._store.get_account_by_username(username)
        if account is None:
            raise ApiError(404, "Username not found")
        wait = self._key_resets.attempt(account["id"])
        if wait is not None:
            raise ApiError(
                429, "Too many API key resets, try again later", {"Retry-After": str(wait)}
            )
        await self._send_new_key(account, "api_key")
        return json_response(request, 200, SENT)

    @route("/v1/account/reset/secretkey", "POST")
    async def reset_secret_key(self, request: IRequest, body: Any) -> bytes:
        """The caller gets a new secret key at its endpoint."""
        caller = await self._authenticate(request)
        await self._send_new_key(caller, "secret_key")
        return json_response(request, 200, SENT)

    async def _send_new_key(self, account: Record, param: str) -> None:
        """Send a fresh key to the account's endpoint; store it only after a 2xx."""
        endpoint = account["endpoint"]
        if not endpoint:
            raise ApiError(404, "Endpoint not found")
        key = generate_key()
        if not await self._endpoints.send_key(endpoint, param, key):
            raise ApiError(400, "Failed to contact the endpoint or wrong HTTP status code returned")
        stored = hash_api_key(key) if param == "api_key" else key
        await self._store.update_account(account["id"], {param: stored})
        self.log.info(
            "account {account_id}: new {param} sent", account_id=account["id"], param=param
        )
