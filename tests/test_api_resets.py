"""Key resets over real HTTP: the new key goes to the endpoint, is stored
only after a 2xx, never appears in a reply; api-key resets are rate-limited."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from tests.support.api_harness import running_api

SENT = {"Message": "New key sent to endpoint"}


@pytest_twisted.ensureDeferred
async def test_api_key_reset_sends_the_new_key_to_the_endpoint_only() -> None:
    """With only the username header, a new api key reaches the endpoint; the
    reply does not contain it; the new key works and the old one no longer does."""
    async with running_api() as api:
        john = await api.new_account("john")
        reply = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "john"})
        assert reply.status == 200 and reply.json() == SENT
        new_key = api.receiver.keys["api_key"]
        assert new_key != john["api_key"] and new_key.encode() not in reply.body
        old = await api.call("GET", "/v1/account/" + john["id"], account=john)
        assert (old.status, old.error) == (401, "Invalid API key")
        new = await api.call("GET", "/v1/account/" + john["id"], account=dict(john, api_key=new_key))
        assert new.status == 200 and new_key not in new.body.decode()


@pytest_twisted.ensureDeferred
async def test_api_key_reset_keeps_the_old_key_when_the_endpoint_refuses() -> None:
    """An endpoint answering non-2xx gives 400 and the old key keeps working."""
    async with running_api() as api:
        john = await api.new_account("john")
        api.receiver.key_status = 500
        reply = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "john"})
        assert (reply.status, reply.error) == (
            400, "Failed to contact the endpoint or wrong HTTP status code returned",
        )
        still = await api.call("GET", "/v1/account/" + john["id"], account=john)
        assert still.status == 200


@pytest_twisted.ensureDeferred
async def test_api_key_reset_errors() -> None:
    """Missing username header is 400, unknown user 404, an account without
    endpoint (the admin) 404 Endpoint not found."""
    async with running_api() as api:
        reply = await api.call("POST", "/v1/account/reset/apikey")
        assert (reply.status, reply.error) == (400, "Missing the username header value")
        reply = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "nobody"})
        assert (reply.status, reply.error) == (404, "Username not found")
        reply = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "admin"})
        assert (reply.status, reply.error) == (404, "Endpoint not found")
        reply = await api.call("GET", "/v1/account/reset/apikey", headers={"username": "admin"})
        assert (reply.status, reply.error) == (405, "Method not allowed")


@pytest_twisted.ensureDeferred
async def test_api_key_resets_are_limited_per_account_with_retry_after() -> None:
    """Beyond 3 attempts an hour an account gets 429 with Retry-After; other
    accounts are unaffected; after the window it may reset again."""
    clock = Clock()
    clock.advance(1000)
    async with running_api(clock=clock) as api:
        await api.new_account("john")
        await api.new_account("jane")
        api.receiver.key_status = 500
        reply = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "john"})
        assert reply.status == 400  # a failed attempt still counts
        api.receiver.key_status = 200
        for _ in range(2):
            reply = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "john"})
            assert reply.status == 200
        clock.advance(600)
        api.receiver.keys.clear()
        reply = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "john"})
        assert (reply.status, reply.error) == (429, "Too many API key resets, try again later")
        assert reply.header("retry-after") == "3000"
        assert api.receiver.keys == {}
        other = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "jane"})
        assert other.status == 200
        clock.advance(3000)
        reply = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "john"})
        assert reply.status == 200


@pytest_twisted.ensureDeferred
async def test_api_key_reset_limit_is_a_setting() -> None:
    """apikey_reset_limit=1 allows one reset per window."""
    async with running_api(clock=Clock(), apikey_reset_limit=1, apikey_reset_window=60) as api:
        await api.new_account("john")
        first = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "john"})
        second = await api.call("POST", "/v1/account/reset/apikey", headers={"username": "john"})
        assert (first.status, second.status) == (200, 429)
        assert second.header("retry-after") == "60"


@pytest_twisted.ensureDeferred
async def test_secret_key_reset_sends_the_new_secret_to_the_endpoint() -> None:
    """An authenticated secret-key reset delivers a new secret to the endpoint,
    not in the reply, and the account now holds it."""
    async with running_api() as api:
        john = await api.new_account("john")
        reply = await api.call("POST", "/v1/account/reset/secretkey", account=john, json="{}")
        assert reply.status == 200 and reply.json() == SENT
        new_secret = api.receiver.keys["secret_key"]
        assert new_secret != john["secret_key"] and new_secret.encode() not in reply.body
        stored = await api.store.get_account(john["id"])
        assert stored["secret_key"] == new_secret


@pytest_twisted.ensureDeferred
async def test_secret_key_reset_errors() -> None:
    """Secret-key reset needs credentials (401); a failing endpoint is 400 and
    keeps the old secret; the admin without endpoint gets 404."""
    async with running_api() as api:
        john = await api.new_account("john")
        reply = await api.call("POST", "/v1/account/reset/secretkey", headers={"username": "john"})
        assert (reply.status, reply.error) == (401, "Missing API key header value")
        reply = await api.call("POST", "/v1/account/reset/secretkey", account=dict(john, api_key="0" * 40))
        assert (reply.status, reply.error) == (401, "Invalid API key")
        api.receiver.key_status = 404
        reply = await api.call("POST", "/v1/account/reset/secretkey", account=john)
        assert reply.status == 400
        assert (await api.store.get_account(john["id"]))["secret_key"] == john["secret_key"]
        reply = await api.call("POST", "/v1/account/reset/secretkey", account=api.admin)
        assert (reply.status, reply.error) == (404, "Endpoint not found")


@pytest_twisted.ensureDeferred
async def test_the_api_never_logs_a_key() -> None:
    """Creating an account and resetting both keys logs no api key, secret or echo value."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        async with running_api() as api:
            john = await api.new_account("john")
            await api.call("POST", "/v1/account/reset/secretkey", account=john)
            await api.call("POST", "/v1/account/reset/apikey", headers={"username": "john"})
            api.receiver.key_status = 500
            await api.call("POST", "/v1/account/reset/apikey", headers={"username": "john"})
            secrets = [john["api_key"], john["secret_key"], *api.receiver.keys.values()]
            secrets += [get["echo"] for get in api.receiver.gets if "echo" in get]
    finally:
        globalLogPublisher.removeObserver(events.append)
    ours = [event for event in events if event.get("log_namespace", "").startswith("pywebhooks")]
    assert ours, "the API logs something"
    text = "\n".join(formatEvent(event) for event in ours) + repr(ours)
    assert len(secrets) == 5
    for secret in secrets:
        assert secret not in text
