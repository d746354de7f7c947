"""Triggers over real HTTP: who may fire, the event_data override, the firing
record, the list of firings, and the delivery log of a firing."""

from __future__ import annotations

import hashlib
import contextlib
import hmac
import json
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
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


class RealDelivery:
    """A ``running_api`` dispatcher factory for the real Dispatcher: real HTTP
    deliveries from a real scheduler on a memory ledger (``settings`` override
    ``Settings`` fields, e.g. ``retry_delays``)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings(**settings)
        self.ledger = MemoryLedger()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.scheduler: DeliveryScheduler | None = None

    def __call__(self, store: Any, clock: Any) -> Dispatcher:
        deliverer = HTTPDeliverer(HTTPClient(Agent(reactor, pool=self.pool)), reactor, 5.0)
        self.scheduler = DeliveryScheduler(reactor, self.ledger, store, deliverer, self.settings)
        return Dispatcher(reactor, store, self.ledger, self.scheduler, self.settings)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The scheduler started for the block, stopped (and connections closed) after."""
        assert self.scheduler is not None, "build the API with this factory first"
        await self.ledger.open()
        self.scheduler.startService()
        try:
            yield
        finally:
            await self.scheduler.stopService()
            await self.pool.closeCachedConnections()


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
    delivery = RealDelivery()
    async with running_api(dispatcher=delivery) as api, delivery.running():
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


# -- the delivery log of a firing ----------------------------------------------


def deliveries_path(firing_id: str) -> str:
    """The delivery log route of ``firing_id``."""
    return "/v1/webhook/triggered/%s/deliveries" % (firing_id,)


async def settled_log(api: Any, account: Any, firing_id: str, count: int) -> list[dict[str, Any]]:
    """The deliveries ``account`` sees of ``firing_id`` once there are ``count``
    of them and none is pending (fails after 10 seconds)."""
    deadline = reactor.seconds() + 10
    while True:
        reply = await api.call("GET", deliveries_path(firing_id), account=account)
        assert reply.status == 200, (reply.status, reply.body)
        deliveries = reply.json()["deliveries"]
        done = len(deliveries) == count and all(d["state"] != "pending" for d in deliveries)
        if done or reactor.seconds() > deadline:
            assert done, deliveries
            return deliveries
        await deferLater(reactor, 0.02)


async def fire(api: Any, owner: Any, registration: Any) -> str:
    """Fire ``registration`` as ``owner``; the firing id."""
    reply = await api.call("POST", "/v1/webhook/triggered/" + registration["id"], account=owner)
    assert reply.status == 201, (reply.status, reply.body)
    return reply.json()["id"]


DELIVERY_KEYS = {
    "id", "epoch", "firing_id", "registration_id", "subscription_id", "account_id",
    "event", "endpoint", "state", "attempts",
}


@pytest_twisted.ensureDeferred
async def test_the_delivery_log_shows_each_caller_what_it_may_see() -> None:
    """After a firing is delivered, its owner and the admin see both
    subscribers' deliveries with their attempts, each subscriber only its own,
    and a stranger gets 403; no secret is in the log."""
    delivery = RealDelivery()
    async with running_api(dispatcher=delivery) as api, delivery.running():
        john = await api.new_account("john")
        jane = await api.new_account("jane", path="/jane")
        mary = await api.new_account("mary", path="/mary")
        stranger = await api.new_account("stranger")
        registration = await api.new_registration(john, event="order.paid")
        jane_subscription = await api.subscribe(jane, registration)
        mary_subscription = await api.subscribe(mary, registration)
        firing_id = await fire(api, john, registration)
        seen = await settled_log(api, john, firing_id, 2)
        assert [d["subscription_id"] for d in seen] == [jane_subscription["id"], mary_subscription["id"]]
        assert [d["account_id"] for d in seen] == [jane["id"], mary["id"]]
        assert [d["endpoint"] for d in seen] == [api.receiver.url("/jane"), api.receiver.url("/mary")]
        for entry in seen:
            assert set(entry) == DELIVERY_KEYS
            assert (entry["firing_id"], entry["registration_id"]) == (firing_id, registration["id"])
            assert (entry["event"], entry["state"]) == ("order.paid", "delivered")
            [attempt] = entry["attempts"]
            assert (attempt["attempt"], attempt["ok"], attempt["status_code"]) == (1, True, 200)
            assert attempt["error"] is None
        reply = await api.call("GET", deliveries_path(firing_id), account=api.admin)
        assert reply.json() == {"deliveries": seen}
        for secret in (jane["secret_key"], mary["secret_key"], john["secret_key"]):
            assert secret.encode() not in reply.body
        reply = await api.call("GET", deliveries_path(firing_id.upper()), account=jane)
        assert reply.json() == {"deliveries": [seen[0]]}
        reply = await api.call("GET", deliveries_path(firing_id) + "/", account=mary)
        assert reply.json() == {"deliveries": [seen[1]]}
        reply = await api.call("GET", deliveries_path(firing_id), account=stranger)
        assert (reply.status, reply.error) == (403, "Not authorized")


@pytest_twisted.ensureDeferred
async def test_the_delivery_log_shows_failed_attempts() -> None:
    """A receiver that answers 500 shows in the log as a failed delivery with
    one failed attempt per try, each with status code 500."""
    delivery = RealDelivery(retry_delays=(0.05,))
    async with running_api(dispatcher=delivery) as api, delivery.running():
        api.receiver.behave("/jane", status=500)
        john = await api.new_account("john")
        jane = await api.new_account("jane", path="/jane")
        registration = await api.new_registration(john)
        await api.subscribe(jane, registration)
        firing_id = await fire(api, john, registration)
        [entry] = await settled_log(api, jane, firing_id, 1)
        assert entry["state"] == "failed"
        assert [(a["attempt"], a["ok"], a["status_code"]) for a in entry["attempts"]] == [
            (1, False, 500), (2, False, 500),
        ]
        assert len(api.receiver.posts_to("/jane")) == 2


@pytest_twisted.ensureDeferred
async def test_the_delivery_log_of_an_unknown_firing() -> None:
    """An unknown firing id is an empty log for the admin and 404 for anyone
    else (also for a firing that made no delivery); a non-UUID id is 400 and
    no credentials 401."""
    async with running_api() as api:
        john = await api.new_account("john")
        reply = await api.call("GET", deliveries_path(UNKNOWN), account=api.admin)
        assert (reply.status, reply.json()) == (200, {"deliveries": []})
        reply = await api.call("GET", deliveries_path(UNKNOWN), account=john)
        assert (reply.status, reply.error) == (404, "Triggered webhook not found")
        registration = await api.new_registration(john)
        firing_id = await fire(api, john, registration)  # the recording dispatcher: no delivery
        reply = await api.call("GET", deliveries_path(firing_id), account=john)
        assert (reply.status, reply.error) == (404, "Triggered webhook not found")
        reply = await api.call("GET", deliveries_path("xyz"), account=john)
        assert (reply.status, reply.error) == (400, "Invalid id parameter")
        reply = await api.call("GET", deliveries_path(UNKNOWN))
        assert (reply.status, reply.error) == (401, "Missing API key header value")
