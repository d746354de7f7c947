"""Triggers over real HTTP: who may fire, the event_data override, the firing
record, and the list of firings."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived

from pywebhooks.delivery.deliverer import HTTPDeliverer
from pywebhooks.delivery.dispatch import Dispatcher
from pywebhooks.delivery.scheduler import DeliveryScheduler
from pywebhooks.ledger.memory import MemoryLedger
from pywebhooks.settings import Settings
from tests.support.api_harness import running_api

UNKNOWN = "00000000-0000-4000-8000-000000000000"
NO_ACCESS = "You don't have access to this registration record or it no longer exists"


@pytest_twisted.ensureDeferred
async def test_owner_trigger_fires_with_the_registration_payload() -> None:
    """The owner's POST /v1/webhook/triggered/<id> is 201 with the firing record,
    and the dispatcher got the registration and its stored event_data."""
    async with running_api() as api:
        john = await api.new_account("john")
        registration = await api.new_registration(john)
        reply = await api.call("POST", "/v1/webhook/triggered/" + registration["id"], account=john, json="{}")
        assert reply.status == 201
        firing = reply.json()
        assert set(firing) == {"epoch", "id", "registration_id"}
        assert firing["registration_id"] == registration["id"]
        assert api.dispatcher.calls == [(registration, {"n": 1})]
        listed = await api.call("GET", "/v1/webhook/triggered?start=0&limit=10", account=john)
        assert listed.json() == {"triggered_webhooks": [firing]}


@pytest_twisted.ensureDeferred
async def test_trigger_body_with_event_data_overrides_the_payload() -> None:
    """A JSON object body with event_data replaces the payload for that firing
    only; other bodies are ignored."""
    async with running_api() as api:
        john = await api.new_account("john")
        registration = await api.new_registration(john)
        path = "/v1/webhook/triggered/" + registration["id"]
        override = {"order": 42, "items": [1, 2]}
        for body in ({"event_data": override}, {"event_data": None}, {"other": 1}, [1], "{}"):
            reply = await api.call("POST", path, account=john, json=body)
            assert reply.status == 201, body
        assert [data for _, data in api.dispatcher.calls] == [
            override, None, {"n": 1}, {"n": 1}, {"n": 1},
        ]
        assert (await api.store.get_registration(registration["id"]))["event_data"] == {"n": 1}


@pytest_twisted.ensureDeferred
async def test_trigger_by_admin_is_allowed_and_by_others_is_403() -> None:
    """The admin may fire any registration; another account gets 403 and nothing fires."""
    async with running_api() as api:
        john = await api.new_account("john")
        jane = await api.new_account("jane")
        registration = await api.new_registration(john)
        path = "/v1/webhook/triggered/" + registration["id"]
        reply = await api.call("POST", path, account=jane, json={"event_data": {"evil": 1}})
        assert (reply.status, reply.error) == (403, NO_ACCESS)
        assert api.dispatcher.calls == []
        reply = await api.call("POST", path, account=api.admin)
        assert reply.status == 201
        assert len(api.dispatcher.calls) == 1


@pytest_twisted.ensureDeferred
async def test_trigger_errors() -> None:
    """Unknown registration is 404; missing id and non-UUID ids are 400;
    invalid JSON is 400; no credentials 401; nothing fires."""
    async with running_api() as api:
        john = await api.new_account("john")
        reply = await api.call("POST", "/v1/webhook/triggered/" + UNKNOWN, account=john)
        assert (reply.status, reply.error) == (404, "Registration id not found")
        reply = await api.call("POST", "/v1/webhook/triggered/", account=john)
        assert (reply.status, reply.error) == (400, "Missing registration_id")
        reply = await api.call("POST", "/v1/webhook/triggered/xyz", account=john)
        assert (reply.status, reply.error) == (400, "Invalid id parameter")
        registration = await api.new_registration(john)
        path = "/v1/webhook/triggered/" + registration["id"]
        reply = await api.call("POST", path, account=john, data=b"{oops")
        assert (reply.status, reply.error) == (400, "Invalid JSON body")
        reply = await api.call("POST", path, headers={"username": "john", "api-key": "f" * 40})
        assert (reply.status, reply.error) == (401, "Invalid API key")
        assert api.dispatcher.calls == []


@pytest_twisted.ensureDeferred
async def test_firing_list_validates_pagination_before_credentials() -> None:
    """GET /v1/webhook/triggered with bad paging is 400 even without credentials."""
    async with running_api() as api:
        reply = await api.call("GET", "/v1/webhook/triggered?start=0&limit=0")
        assert (reply.status, reply.error) == (400, "Invalid limit or start parameter")
        reply = await api.call("GET", "/v1/webhook/triggered?start=0&limit=1")
        assert (reply.status, reply.error) == (401, "Missing API key header value")
        reply = await api.call("GET", "/v1/webhook/subscriptions?start=x&limit=1")
        assert (reply.status, reply.error) == (400, "Invalid limit or start parameter")


@pytest_twisted.ensureDeferred
async def test_trigger_with_the_real_dispatcher_delivers_the_override() -> None:
    """With the real Dispatcher, a trigger's event_data override reaches the
    subscriber's endpoint as the signed body, and the firing is listed."""
    parts: dict[str, Any] = {}

    def real_dispatcher(store: Any, clock: Any) -> Dispatcher:
        settings = Settings()
        pool = HTTPConnectionPool(reactor, persistent=False)
        deliverer = HTTPDeliverer(HTTPClient(Agent(reactor, pool=pool)), reactor, 5.0)
        ledger = MemoryLedger()
        scheduler = DeliveryScheduler(reactor, ledger, store, deliverer, settings)
        parts.update(ledger=ledger, scheduler=scheduler, pool=pool)
        return Dispatcher(reactor, store, ledger, scheduler, settings)

    async with running_api(dispatcher=real_dispatcher) as api:
        await parts["ledger"].open()
        parts["scheduler"].startService()
        try:
            john = await api.new_account("john")
            jane = await api.new_account("jane", path="/jane")
            registration = await api.new_registration(john, event="order.paid")
            await api.subscribe(jane, registration)
            override = {"order": 7, "b": [1, {"z": 1, "a": 2}]}
            reply = await api.call(
                "POST", "/v1/webhook/triggered/" + registration["id"], account=john,
                json={"event_data": override},
            )
            assert reply.status == 201
            [post] = await api.receiver.wait_for_posts(1)
            assert post.path == "/jane"
            assert post.body == json.dumps(override, sort_keys=True).encode()
            assert post.headers["event"] == "order.paid"
            expected = hmac.new(jane["secret_key"].encode(), post.body, hashlib.sha1).hexdigest()
            assert post.headers["pywebhooks-signature"] == expected
            listed = await api.call("GET", "/v1/webhook/triggered?start=0&limit=5", account=john)
            assert listed.json() == {"triggered_webhooks": [reply.json()]}
        finally:
            await parts["scheduler"].stopService()
            await parts["pool"].closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_a_trigger_completes_even_if_the_client_goes_away() -> None:
    """A client that disconnects while its trigger is being recorded does not
    cut the write in half: the firing is still recorded, nothing errors."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        async with running_api() as api:
            john = await api.new_account("john")
            registration = await api.new_registration(john)
            api.dispatcher.hold = Deferred()
            with pytest.raises(ResponseNeverReceived):
                await api.call(
                    "POST", "/v1/webhook/triggered/" + registration["id"], account=john, timeout=0.2
                )
            assert api.dispatcher.calls == []
            api.dispatcher.hold.callback(None)
            listed = await api.call("GET", "/v1/webhook/triggered?start=0&limit=5", account=john)
            assert len(listed.json()["triggered_webhooks"]) == 1
            assert len(api.dispatcher.calls) == 1
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [event for event in events if "log_failure" in event]
