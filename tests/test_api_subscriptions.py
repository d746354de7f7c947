"""Subscriptions over real HTTP: subscribe (duplicates allowed), own and
global lists, unsubscribe, admin bulk delete."""

from __future__ import annotations

import pytest_twisted

from tests.support.api_harness import running_api

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest_twisted.ensureDeferred
async def test_subscribe_returns_the_record_and_allows_duplicates() -> None:
    """POST /v1/webhook/subscription/<registration id> is 201; subscribing twice gives two rows."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        registration = await api.new_registration(john)
        path = "/v1/webhook/subscription/" + registration["id"]
        first = await api.call("POST", path, account=jane, json="{}")
        assert first.status == 201
        record = first.json()
        assert set(record) == {"account_id", "epoch", "id", "registration_id"}
        assert (record["account_id"], record["registration_id"]) == (jane["id"], registration["id"])
        second = await api.call("POST", path + "/", account=jane)
        assert second.status == 201 and second.json()["id"] != record["id"]
        own = await api.call("GET", "/v1/webhook/subscription?start=0&limit=10", account=jane)
        assert own.json() == {"subscriptions": [record, second.json()]}


@pytest_twisted.ensureDeferred
async def test_subscribe_errors() -> None:
    """Unknown registration is 404; missing or bad ids are 400; no credentials 401."""
    async with running_api() as api:
        john = await api.new_account("john")
        reply = await api.call("POST", "/v1/webhook/subscription/" + UNKNOWN, account=john)
        assert (reply.status, reply.error) == (404, "The registration id does not exist")
        reply = await api.call("POST", "/v1/webhook/subscription", account=john)
        assert (reply.status, reply.error) == (400, "Missing subscription_id")
        reply = await api.call("POST", "/v1/webhook/subscription/nope", account=john)
        assert (reply.status, reply.error) == (400, "Invalid id parameter")
        reply = await api.call("POST", "/v1/webhook/subscription/" + UNKNOWN)
        assert (reply.status, reply.error) == (401, "Missing API key header value")
        assert await api.store.count_subscriptions(john["id"]) == 0


@pytest_twisted.ensureDeferred
async def test_subscription_limit_per_account() -> None:
    """Beyond max_subscriptions_per_account an account gets 403 Subscription limit reached."""
    async with running_api(max_subscriptions_per_account=1) as api:
        john = await api.new_account("john")
        registration = await api.new_registration(john)
        await api.subscribe(john, registration)
        reply = await api.call("POST", "/v1/webhook/subscription/" + registration["id"], account=john)
        assert (reply.status, reply.error) == (403, "Subscription limit reached")
        assert await api.store.count_subscriptions(john["id"]) == 1


@pytest_twisted.ensureDeferred
async def test_unsubscribe_by_subscriber_or_admin() -> None:
    """DELETE /v1/webhook/subscription/<id>: the subscriber (200 deleted 1) or the
    admin; anyone else, even the registration's owner, gets 403."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        registration = await api.new_registration(john)
        first = await api.subscribe(jane, registration)
        second = await api.subscribe(jane, registration)
        reply = await api.call("DELETE", "/v1/webhook/subscription/" + first["id"], account=john)
        assert (reply.status, reply.error) == (403, "Not authorized")
        reply = await api.call("DELETE", "/v1/webhook/subscription/" + first["id"], account=jane)
        assert reply.status == 200 and reply.json()["deleted"] == 1
        reply = await api.call("DELETE", "/v1/webhook/subscription/" + second["id"], account=api.admin)
        assert reply.status == 200 and reply.json()["deleted"] == 1
        reply = await api.call("DELETE", "/v1/webhook/subscription/" + UNKNOWN, account=jane)
        assert (reply.status, reply.error) == (403, "Not authorized")
        reply = await api.call("DELETE", "/v1/webhook/subscription/" + UNKNOWN, account=api.admin)
        assert reply.status == 200 and reply.json()["skipped"] == 1
        reply = await api.call("DELETE", "/v1/webhook/subscription/", account=jane)
        assert (reply.status, reply.error) == (400, "Missing subscription_id")


@pytest_twisted.ensureDeferred
async def test_global_list_and_admin_bulk_delete() -> None:
    """GET /v1/webhook/subscriptions shows everyone's subscriptions; the admin
    deletes them all; a non-admin cannot."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        registration = await api.new_registration(john)
        mine = await api.subscribe(john, registration)
        hers = await api.subscribe(jane, registration)
        reply = await api.call("GET", "/v1/webhook/subscriptions?start=0&limit=10", account=john)
        assert reply.json() == {"subscriptions": [mine, hers]}
        reply = await api.call("DELETE", "/v1/webhook/subscriptions", account=john)
        assert (reply.status, reply.error) == (403, "Not an Admin")
        reply = await api.call("DELETE", "/v1/webhook/subscriptions", account=api.admin)
        assert reply.status == 200 and reply.json()["deleted"] == 2
        reply = await api.call("GET", "/v1/webhook/subscriptions?start=0&limit=10", account=john)
        assert reply.status == 204
