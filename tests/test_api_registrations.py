"""Registrations over real HTTP: create, own and global lists, change the
description, delete with its subscriptions, admin bulk delete."""

from __future__ import annotations

import pytest_twisted

from tests.support.api_harness import running_api


@pytest_twisted.ensureDeferred
async def test_create_registration_returns_the_stored_record() -> None:
    """POST /v1/webhook/registration is 201 with account_id, event, description,
    event_data, id and epoch."""
    async with running_api() as api:
        john = await api.new_account("john")
        body = {"event": "order.paid", "description": "paid", "event_data": {"b": [1, 2], "a": None}}
        reply = await api.call("POST", "/v1/webhook/registration", account=john, json=body)
        assert reply.status == 201
        record = reply.json()
        assert set(record) == {"account_id", "description", "epoch", "event", "event_data", "id"}
        assert record["account_id"] == john["id"]
        assert record["event_data"] == body["event_data"]
        assert record == await api.store.get_registration(record["id"])


@pytest_twisted.ensureDeferred
async def test_create_registration_accepts_any_json_as_event_data() -> None:
    """event_data may be any JSON value, including null and a string."""
    async with running_api() as api:
        john = await api.new_account("john")
        for event_data in (None, "text", 3, [1]):
            body = {"event": "e", "description": "", "event_data": event_data}
            reply = await api.call("POST", "/v1/webhook/registration", account=john, json=body)
            assert reply.status == 201 and reply.json()["event_data"] == event_data


@pytest_twisted.ensureDeferred
async def test_create_registration_rejects_missing_or_mistyped_fields() -> None:
    """Missing or mistyped fields are 400 naming the field, and nothing is stored."""
    good = {"event": "e", "description": "d", "event_data": {}}
    cases = [
        (dict(good, event=""), "event"),
        (dict(good, event=5), "event"),
        (dict(good, event="line\nbreak"), "event"),
        ({k: v for k, v in good.items() if k != "event"}, "event"),
        (dict(good, description=None), "description"),
        ({k: v for k, v in good.items() if k != "description"}, "description"),
        ({k: v for k, v in good.items() if k != "event_data"}, "event_data"),
    ]
    async with running_api() as api:
        john = await api.new_account("john")
        for body, field in cases:
            reply = await api.call("POST", "/v1/webhook/registration", account=john, json=body)
            assert (reply.status, reply.error) == (400, "Missing or invalid field: " + field), body
        reply = await api.call("POST", "/v1/webhook/registration", account=john, json=[good])
        assert (reply.status, reply.error) == (400, "Request body must be a JSON object")
        reply = await api.call("POST", "/v1/webhook/registration", account=john, data=b'{"event":')
        assert (reply.status, reply.error) == (400, "Invalid JSON body")
        reply = await api.call("POST", "/v1/webhook/registration", json=good)
        assert (reply.status, reply.error) == (401, "Missing API key header value")
        assert await api.store.count_registrations(john["id"]) == 0


@pytest_twisted.ensureDeferred
async def test_registration_limit_per_account() -> None:
    """Beyond max_registrations_per_account an account gets 403 Registration limit reached."""
    async with running_api(max_registrations_per_account=2) as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        await api.new_registration(john)
        await api.new_registration(john)
        body = {"event": "e", "description": "d", "event_data": {}}
        reply = await api.call("POST", "/v1/webhook/registration", account=john, json=body)
        assert (reply.status, reply.error) == (403, "Registration limit reached")
        assert await api.store.count_registrations(john["id"]) == 2
        await api.new_registration(jane)


@pytest_twisted.ensureDeferred
async def test_own_list_and_global_catalogue() -> None:
    """GET /v1/webhook/registration lists the caller's own; /registrations lists all."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        johns = await api.new_registration(john)
        janes = await api.new_registration(jane)
        own = await api.call("GET", "/v1/webhook/registration?start=0&limit=10", account=john)
        assert own.status == 200 and own.json() == {"registrations": [johns]}
        everything = await api.call("GET", "/v1/webhook/registrations?start=0&limit=10", account=john)
        assert everything.json() == {"registrations": [johns, janes]}
        none = await api.call("GET", "/v1/webhook/registration?start=0&limit=10", account=api.admin)
        assert none.status == 204 and none.body == b""


@pytest_twisted.ensureDeferred
async def test_update_description_by_owner_or_admin() -> None:
    """PATCH changes only the description (replaced 1, then unchanged 1); a
    non-owner gets 403; the admin may change any."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        registration = await api.new_registration(john)
        path = "/v1/webhook/registration/" + registration["id"]
        reply = await api.call("PATCH", path, account=john, json={"description": "new", "event": "x"})
        assert reply.status == 200 and reply.json()["replaced"] == 1
        again = await api.call("PATCH", path, account=john, json={"description": "new"})
        assert again.json()["unchanged"] == 1
        stored = await api.store.get_registration(registration["id"])
        assert stored == dict(registration, description="new")
        reply = await api.call("PATCH", path, account=jane, json={"description": "hijack"})
        assert (reply.status, reply.error) == (403, "Not authorized")
        reply = await api.call("PATCH", path, account=api.admin, json={"description": "by admin"})
        assert reply.status == 200 and reply.json()["replaced"] == 1


@pytest_twisted.ensureDeferred
async def test_update_registration_input_errors() -> None:
    """PATCH without a string description is 400 Description field missing; ids are checked first."""
    async with running_api() as api:
        john = await api.new_account("john")
        registration = await api.new_registration(john)
        path = "/v1/webhook/registration/" + registration["id"]
        for body in ({}, {"description": 5}, {"description": None}):
            reply = await api.call("PATCH", path, account=john, json=body)
            assert (reply.status, reply.error) == (400, "Description field missing"), body
        reply = await api.call("PATCH", path, account=john, json="text")
        assert (reply.status, reply.error) == (400, "Request body must be a JSON object")
        for method in ("PATCH", "DELETE"):
            reply = await api.call(method, "/v1/webhook/registration/", json={"description": "x"})
            assert (reply.status, reply.error) == (400, "Missing registration_id")
            reply = await api.call(method, "/v1/webhook/registration/123", json={"description": "x"})
            assert (reply.status, reply.error) == (400, "Invalid id parameter")
        unknown = "/v1/webhook/registration/00000000-0000-4000-8000-000000000000"
        reply = await api.call("PATCH", unknown, account=john, json={"description": "x"})
        assert (reply.status, reply.error) == (403, "Not authorized")
        reply = await api.call("PATCH", unknown, account=api.admin, json={"description": "x"})
        assert reply.status == 200 and reply.json()["skipped"] == 1


@pytest_twisted.ensureDeferred
async def test_delete_registration_removes_its_subscriptions() -> None:
    """Deleting a registration (owner) removes every subscription to it and
    nobody else's; a non-owner gets 403."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        johns = await api.new_registration(john)
        janes = await api.new_registration(jane)
        await api.subscribe(jane, johns)
        await api.subscribe(john, johns)
        kept = await api.subscribe(jane, janes)
        path = "/v1/webhook/registration/" + johns["id"]
        reply = await api.call("DELETE", path, account=jane)
        assert (reply.status, reply.error) == (403, "Not authorized")
        reply = await api.call("DELETE", path, account=john, json="{}")
        assert reply.status == 200 and reply.json()["deleted"] == 1
        subscriptions = await api.call("GET", "/v1/webhook/subscriptions?start=0&limit=10", account=jane)
        assert subscriptions.json() == {"subscriptions": [kept]}
        reply = await api.call("DELETE", path, account=api.admin)
        assert reply.status == 200 and reply.json()["skipped"] == 1


@pytest_twisted.ensureDeferred
async def test_admin_bulk_delete_of_registrations_leaves_subscriptions() -> None:
    """DELETE /v1/webhook/registrations is admin-only and does not cascade."""
    async with running_api() as api:
        john = await api.new_account("john")
        registration = await api.new_registration(john)
        subscription = await api.subscribe(john, registration)
        reply = await api.call("DELETE", "/v1/webhook/registrations", account=john)
        assert (reply.status, reply.error) == (403, "Not an Admin")
        reply = await api.call("DELETE", "/v1/webhook/registrations", account=api.admin)
        assert reply.status == 200 and reply.json()["deleted"] == 1
        assert await api.store.get_subscription(subscription["id"]) == subscription
