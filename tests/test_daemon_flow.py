"""The real daemon end to end: accounts through the echo, a trigger, signed deliveries, the log.

One daemon and one receiver serve the whole module: the ``walkthrough``
fixture plays the README's story once and the tests check what it left.
"""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.daemon import ApiClient, Daemon, verify_delivery
from tests.support.receiver import ReceivedPost, Receiver

EVENT_DATA = {"user": "ann", "tags": ["b", "a"], "nested": {"z": 1, "a": [1.5, None, True]}}
OVERRIDE = {"override": "only this firing"}


@dataclasses.dataclass
class Walkthrough:
    """What the walkthrough did and saw."""

    daemon: Daemon
    receiver: Receiver
    publisher: dict[str, Any]
    subscriber: dict[str, Any]
    registration: dict[str, Any]
    firings: list[dict[str, Any]]
    posts: list[ReceivedPost]
    new_secret_key: str
    new_api_key: str
    #: every key or secret the walkthrough created or was told
    secrets: list[str]


@pytest_twisted.async_yield_fixture(scope="module")
async def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Walkthrough]:
    """Start a daemon, create two accounts, register, subscribe, trigger twice, reset keys."""
    directory: Path = tmp_path_factory.mktemp("flow")
    daemon = Daemon(reactor, directory, "--retry-delays", "1,1,1", "--request-timeout", "2")
    receiver = Receiver(reactor)
    await receiver.start()
    try:
        await daemon.start()
        assert daemon.admin_keys is not None
        api = daemon.api()
        publisher, subscriber, registration = await api.publisher_and_subscriber(
            receiver.url, "user.created", EVENT_DATA)
        firings = [await api.trigger(publisher, registration["id"])]
        await receiver.wait_for_posts(1)

        reset = await api.call("POST", "/v1/account/reset/secretkey", "{}", subscriber)
        assert reset.status == 200, reset
        new_secret_key = receiver.keys["secret_key"]
        reply = await api.call("POST", "/v1/webhook/triggered/" + registration["id"],
                               {"event_data": OVERRIDE}, publisher)
        assert reply.status == 201, reply
        firings.append(reply.body)
        await receiver.wait_for_posts(2)

        reset = await api.call("POST", "/v1/account/reset/apikey", None, {"username": "publisher"})
        assert reset.status == 200, reset
        new_api_key = receiver.keys["api_key"]
        secrets = [
            *daemon.admin_keys,
            publisher["api_key"], publisher["secret_key"], subscriber["api_key"], subscriber["secret_key"],
            new_secret_key, new_api_key,
        ]
        yield Walkthrough(daemon, receiver, publisher, subscriber, registration, firings,
                          list(receiver.posts), new_secret_key, new_api_key, secrets)
        assert await daemon.terminate() == 0
    finally:
        daemon.kill_now()
        await receiver.stop()


def test_trigger_delivers_a_post_signed_with_the_subscribers_secret(walkthrough: Walkthrough) -> None:
    """A trigger makes the subscriber's endpoint receive the event data, signed both ways with its secret key."""
    first = walkthrough.posts[0]
    assert first.path == "/subscriber"
    assert first.headers["event"] == "user.created"
    assert first.body == json.dumps(EVENT_DATA, sort_keys=True).encode()
    assert verify_delivery(first.headers, first.body, walkthrough.subscriber["secret_key"]) == EVENT_DATA
    assert first.headers["content-type"].startswith("application/json")


def test_second_firing_uses_the_override_and_the_reset_secret_key(walkthrough: Walkthrough) -> None:
    """After a secret-key reset, the next delivery is signed with the new key and carries the override payload."""
    first, second = walkthrough.posts
    assert second.json() == OVERRIDE
    assert verify_delivery(second.headers, second.body, walkthrough.new_secret_key) == OVERRIDE
    assert second.headers["webhook-id"] != first.headers["webhook-id"]
    with pytest.raises(AssertionError):
        verify_delivery(second.headers, second.body, walkthrough.subscriber["secret_key"])


@pytest_twisted.ensureDeferred
async def test_reset_api_key_replaces_the_old_one(walkthrough: Walkthrough) -> None:
    """The api key sent to the endpoint by a reset works and the old one no longer does."""
    api = walkthrough.daemon.api()
    path = "/v1/webhook/registration?start=0&limit=10"
    old = await api.call("GET", path, account=walkthrough.publisher)
    new = await api.call("GET", path, account=dict(walkthrough.publisher, api_key=walkthrough.new_api_key))
    assert old.status == 401
    assert new.status == 200
    assert [row["id"] for row in new.body["registrations"]] == [walkthrough.registration["id"]]


@pytest_twisted.ensureDeferred
async def test_firings_are_listed(walkthrough: Walkthrough) -> None:
    """GET /v1/webhook/triggered lists both firings of the walkthrough in order."""
    api: ApiClient = walkthrough.daemon.api()
    reply = await api.call("GET", "/v1/webhook/triggered?start=0&limit=10", account=walkthrough.daemon.admin)
    assert reply.status == 200
    assert [row["id"] for row in reply.body["triggered_webhooks"]] == [f["id"] for f in walkthrough.firings]


def test_json_log_is_structured_and_contains_no_key(walkthrough: Walkthrough) -> None:
    """The JSON log has structured events with their fields, and none of the keys or secrets made."""
    events = walkthrough.daemon.log_events()
    ours = [event for event in events if event.get("log_namespace", "").startswith("pywebhooks.")]
    assert ours, "no event from pywebhooks"
    with_fields = [event for event in ours if "{" in event.get("log_format", "")]
    assert with_fields, "no templated event"
    for event in with_fields:
        for field in _template_fields(event["log_format"]):
            assert field in event, (field, event["log_format"])
    formats = {event["log_format"] for event in ours}
    assert "account {account_id} created" in formats
    log_text = walkthrough.daemon.log_text()
    output = log_text + walkthrough.daemon.stdout() + walkthrough.daemon.stderr()
    for secret in walkthrough.secrets:
        assert len(secret) == 40
        assert secret not in log_text
    # the only place any key was printed is the admin's line on stdout
    assert [secret for secret in walkthrough.secrets if secret in output] == list(walkthrough.daemon.admin_keys)


def _template_fields(template: str) -> list[str]:
    return [name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name]
