"""Accounts over real HTTP: create with the echo challenge, read, change
endpoint, delete with cascade, and the admin's list and bulk delete."""

from __future__ import annotations

import re

import pytest_twisted

from pywebhooks.keys import verify_api_key
from tests.support.api_harness import running_api
from tests.support.receiver import Receiver

HEX40 = re.compile(r"[0-9a-f]{40}")


@pytest_twisted.ensureDeferred
async def test_create_account_returns_the_record_with_the_only_plaintext_api_key() -> None:
    """POST /v1/account answers 201 with the full record and a 40-hex api key
    that is stored only as a hash."""
    async with running_api() as api:
        reply = await api.call(
            "POST", "/v1/account", json={"username": "john", "endpoint": api.receiver.url()}
        )
        assert reply.status == 201
        assert reply.header("content-type") == "application/json"
        record = reply.json()
        assert set(record) == {
            "api_key", "endpoint", "epoch", "failed_count", "id", "is_admin", "secret_key", "username",
        }
        assert HEX40.fullmatch(record["api_key"]) and HEX40.fullmatch(record["secret_key"])
        assert record["failed_count"] == 0 and record["is_admin"] is False
        assert record["username"] == "john" and record["endpoint"] == api.receiver.url()
        stored = await api.store.get_account(record["id"])
        assert stored["api_key"] != record["api_key"]
        assert verify_api_key(stored["api_key"], record["api_key"])
        assert [get for get in api.receiver.gets if "echo" in get]


@pytest_twisted.ensureDeferred
async def test_create_account_fails_when_the_echo_fails_and_stores_nothing() -> None:
    """An endpoint that does not answer the echo gives 400 Echo response failed."""
    async with running_api() as api:
        api.receiver.echo_ok = False
        reply = await api.call(
            "POST", "/v1/account", json={"username": "john", "endpoint": api.receiver.url()}
        )
        assert (reply.status, reply.error) == (400, "Echo response failed")
        assert await api.store.get_account_by_username("john") is None


@pytest_twisted.ensureDeferred
async def test_create_account_with_a_taken_username_is_409() -> None:
    """A second account with the same username gets 409 Username already exists."""
    async with running_api() as api:
        await api.new_account("john")
        reply = await api.call(
            "POST", "/v1/account", json={"username": "john", "endpoint": api.receiver.url()}
        )
        assert (reply.status, reply.error) == (409, "Username already exists")
        assert await api.store.count_accounts() == 2


@pytest_twisted.ensureDeferred
async def test_create_account_rejects_bad_input_before_any_outbound_call() -> None:
    """Bad bodies are 400 with a clear message, no echo is sent, nothing is stored."""
    cases = [
        ({"username": "john"}, "Missing endpoint field"),
        ({"username": "john", "endpoint": "ftp://127.0.0.1/x"}, "Invalid endpoint: must be an http(s) URL"),
        ({"username": "john", "endpoint": "not a url"}, "Invalid endpoint: must be an http(s) URL"),
        ({"username": "john", "endpoint": "http:///nohost"}, "Invalid endpoint: must be an http(s) URL"),
        ({"username": "john", "endpoint": "http://127.0.0.1:99999/"}, "Invalid endpoint: must be an http(s) URL"),
        ({"username": "john", "endpoint": 42}, "Invalid endpoint: must be an http(s) URL"),
        ({"endpoint": "http://127.0.0.1/"}, "Missing or invalid field: username"),
        ({"endpoint": "http://127.0.0.1/", "username": ""}, "Missing or invalid field: username"),
        ({"endpoint": "http://127.0.0.1/", "username": 7}, "Missing or invalid field: username"),
        ({"endpoint": "http://127.0.0.1/", "username": "x" * 256}, "Missing or invalid field: username"),
        ({"endpoint": "http://127.0.0.1/", "username": "a\r\nb"}, "Missing or invalid field: username"),
        (["username", "endpoint"], "Request body must be a JSON object"),
        ("{}", "Request body must be a JSON object"),
    ]
    async with running_api() as api:
        for body, message in cases:
            reply = await api.call("POST", "/v1/account", json=body)
            assert (reply.status, reply.error) == (400, message), body
        reply = await api.call("POST", "/v1/account")
        assert (reply.status, reply.error) == (400, "Request body must be a JSON object")
        reply = await api.call("POST", "/v1/account", data=b"{not json")
        assert (reply.status, reply.error) == (400, "Invalid JSON body")
        assert api.receiver.gets == []
        assert await api.store.count_accounts() == 1


@pytest_twisted.ensureDeferred
async def test_get_own_account_returns_the_stored_record() -> None:
    """GET /v1/account/<own id> is 200 with the stored record (api key as its hash)."""
    async with running_api() as api:
        john = await api.new_account("john")
        reply = await api.call("GET", "/v1/account/" + john["id"], account=john)
        assert reply.status == 200
        body = reply.json()
        assert body == await api.store.get_account(john["id"])
        assert body["api_key"] != john["api_key"]
        assert body["secret_key"] == john["secret_key"]


@pytest_twisted.ensureDeferred
async def test_get_someone_elses_account_is_403_even_for_the_admin() -> None:
    """Only the owner reads an account: others, the admin included, get 403 Not authorized."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        for caller in (jane, api.admin):
            reply = await api.call("GET", "/v1/account/" + john["id"], account=caller)
            assert (reply.status, reply.error) == (403, "Not authorized")


@pytest_twisted.ensureDeferred
async def test_account_routes_check_the_id_before_the_credentials() -> None:
    """A missing id is 400 Missing account_id, a malformed one 400 Invalid id parameter."""
    async with running_api() as api:
        for method in ("GET", "DELETE"):
            for path in ("/v1/account", "/v1/account/"):
                reply = await api.call(method, path)
                assert (reply.status, reply.error) == (400, "Missing account_id")
            reply = await api.call(method, "/v1/account/not-a-uuid")
            assert (reply.status, reply.error) == (400, "Invalid id parameter")


@pytest_twisted.ensureDeferred
async def test_change_endpoint_reruns_the_echo_and_resets_failed_count() -> None:
    """PATCH /v1/account echoes the NEW endpoint, stores it and sets failed_count to 0."""
    async with running_api() as api:
        john = await api.new_account("john")
        await api.store.update_account(john["id"], {"failed_count": 250})
        other = Receiver(api.reactor)
        await other.start()
        try:
            new_endpoint = other.url("/elsewhere")
            reply = await api.call("PATCH", "/v1/account", account=john, json={"endpoint": new_endpoint})
            assert reply.status == 200
            assert reply.json() == {
                "deleted": 0, "errors": 0, "inserted": 0, "replaced": 1, "skipped": 0, "unchanged": 0,
            }
            assert [get for get in other.gets if "echo" in get]
        finally:
            await other.stop()
        stored = await api.store.get_account(john["id"])
        assert stored["endpoint"] == new_endpoint and stored["failed_count"] == 0


@pytest_twisted.ensureDeferred
async def test_change_endpoint_that_fails_the_echo_changes_nothing() -> None:
    """A new endpoint that fails the echo gives 400 and keeps the old endpoint and count."""
    async with running_api() as api:
        john = await api.new_account("john")
        await api.store.update_account(john["id"], {"failed_count": 3})
        api.receiver.echo_ok = False
        reply = await api.call(
            "PATCH", "/v1/account", account=john, json={"endpoint": api.receiver.url("/new")}
        )
        assert (reply.status, reply.error) == (400, "Echo response failed")
        stored = await api.store.get_account(john["id"])
        assert stored["endpoint"] == john["endpoint"] and stored["failed_count"] == 3


@pytest_twisted.ensureDeferred
async def test_change_endpoint_rejects_bad_bodies() -> None:
    """PATCH /v1/account without a valid endpoint is 400 and sends no echo."""
    async with running_api() as api:
        john = await api.new_account("john")
        echoes = len(api.receiver.gets)
        cases = [
            ({}, "Missing endpoint field"),
            ({"endpoint": None}, "Invalid endpoint: must be an http(s) URL"),
            ({"endpoint": "javascript:alert(1)"}, "Invalid endpoint: must be an http(s) URL"),
            ([1], "Request body must be a JSON object"),
        ]
        for body, message in cases:
            reply = await api.call("PATCH", "/v1/account", account=john, json=body)
            assert (reply.status, reply.error) == (400, message), body
        assert len(api.receiver.gets) == echoes
        reply = await api.call("PATCH", "/v1/account", json={"endpoint": api.receiver.url()})
        assert (reply.status, reply.error) == (401, "Missing API key header value")


@pytest_twisted.ensureDeferred
async def test_delete_own_account_cascades_to_registrations_and_subscriptions() -> None:
    """Deleting an account removes its registrations, its subscriptions and
    everyone's subscriptions to its registrations."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        johns = await api.new_registration(john)
        janes = await api.new_registration(jane)
        await api.subscribe(jane, johns)
        await api.subscribe(john, janes)
        reply = await api.call("DELETE", "/v1/account/" + john["id"], account=john)
        assert reply.status == 200
        assert reply.json()["deleted"] == 1
        listed = await api.call("GET", "/v1/webhook/registrations?start=0&limit=10", account=jane)
        assert [r["id"] for r in listed.json()["registrations"]] == [janes["id"]]
        subscriptions = await api.call("GET", "/v1/webhook/subscriptions?start=0&limit=10", account=jane)
        assert subscriptions.status == 204
        gone = await api.call("GET", "/v1/account/" + john["id"], account=john)
        assert (gone.status, gone.error) == (401, "Invalid API key or Username")


@pytest_twisted.ensureDeferred
async def test_delete_someone_elses_account_is_403_unless_admin() -> None:
    """A user cannot delete another account (403); the admin can (200 deleted 1,
    and skipped 1 for an unknown id)."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        reply = await api.call("DELETE", "/v1/account/" + john["id"], account=jane)
        assert (reply.status, reply.error) == (403, "Not authorized")
        reply = await api.call("DELETE", "/v1/account/" + john["id"], account=api.admin)
        assert reply.status == 200 and reply.json()["deleted"] == 1
        reply = await api.call("DELETE", "/v1/account/" + john["id"], account=api.admin)
        assert reply.status == 200 and reply.json()["skipped"] == 1


@pytest_twisted.ensureDeferred
async def test_admin_lists_accounts_without_keys() -> None:
    """GET /v1/accounts is admin-only and shows no secret_key or api_key."""
    async with running_api() as api:
        await api.new_account("john")
        jane = await api.new_account("jane")
        reply = await api.call("GET", "/v1/accounts?start=0&limit=20", account=api.admin)
        assert reply.status == 200
        listed = reply.json()["accounts"]
        assert [a["username"] for a in listed] == ["admin", "john", "jane"]
        assert all("secret_key" not in a and "api_key" not in a for a in listed)
        assert "next_start" not in reply.json()
        reply = await api.call("GET", "/v1/accounts?start=0&limit=20", account=jane)
        assert (reply.status, reply.error) == (403, "Not an Admin")
        reply = await api.call("GET", "/v1/accounts?start=0&limit=20")
        assert (reply.status, reply.error) == (401, "Missing API key header value")
        reply = await api.call("GET", "/v1/accounts?start=0", account=api.admin)
        assert (reply.status, reply.error) == (400, "Invalid limit or start parameter")


@pytest_twisted.ensureDeferred
async def test_admin_bulk_delete_removes_non_admins_without_cascade() -> None:
    """DELETE /v1/accounts deletes every non-admin account and leaves their registrations."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        registration = await api.new_registration(john)
        reply = await api.call("DELETE", "/v1/accounts", account=jane)
        assert (reply.status, reply.error) == (403, "Not an Admin")
        reply = await api.call("DELETE", "/v1/accounts", account=api.admin)
        assert reply.status == 200 and reply.json()["deleted"] == 2
        assert await api.store.count_accounts() == 1
        assert await api.store.get_registration(registration["id"]) is not None
