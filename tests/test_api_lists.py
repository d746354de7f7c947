"""Paginated lists over real HTTP: start/limit checks, 204 on an empty page,
next_start only when more records follow, and --private-listings."""

from __future__ import annotations

import pytest_twisted

from tests.support.api_harness import running_api

LISTS = [
    "/v1/accounts",
    "/v1/webhook/registration",
    "/v1/webhook/registrations",
    "/v1/webhook/subscription",
    "/v1/webhook/subscriptions",
    "/v1/webhook/triggered",
]

BAD_QUERIES = [
    "",
    "?start=0",
    "?limit=1",
    "?start=-1&limit=1",
    "?start=1000000000000000&limit=1",
    "?start=0&limit=0",
    "?start=0&limit=101",
    "?start=0&limit=-1",
    "?start=0&limit=1.5",
    "?start=+1&limit=1",
    "?start=1_0&limit=1",
    "?start=%201&limit=1",
    "?start=abc&limit=1",
    "?start=&limit=1",
    "?start=0&limit=1&limit=2",
]


@pytest_twisted.ensureDeferred
async def test_every_list_rejects_bad_start_and_limit() -> None:
    """Missing, non-decimal or out-of-range start/limit are 400 on every list."""
    async with running_api() as api:
        for path in LISTS:
            for query in BAD_QUERIES:
                reply = await api.call("GET", path + query, account=api.admin)
                assert (reply.status, reply.error) == (400, "Invalid limit or start parameter"), (
                    path + query
                )


@pytest_twisted.ensureDeferred
async def test_every_list_accepts_the_extreme_values() -> None:
    """start=999999999999999 with limit=100, and start=0 with limit=1, are accepted."""
    async with running_api() as api:
        for path in LISTS:
            far = await api.call("GET", path + "?start=999999999999999&limit=100", account=api.admin)
            assert far.status == 204 and far.body == b"", path
            near = await api.call("GET", path + "?start=0&limit=1", account=api.admin)
            assert near.status in (200, 204), path


@pytest_twisted.ensureDeferred
async def test_next_start_appears_only_when_more_records_follow() -> None:
    """A full page with more to come has next_start=start+limit; the last page
    (even when exactly full) has none; past the end is 204."""
    async with running_api() as api:
        john = await api.new_account("john")
        made = [await api.new_registration(john, event="e%d" % n) for n in range(5)]
        path = "/v1/webhook/registration?start=%d&limit=%d"
        first = await api.call("GET", path % (0, 2), account=john)
        assert first.json() == {"registrations": made[0:2], "next_start": 2}
        middle = await api.call("GET", path % (2, 2), account=john)
        assert middle.json() == {"registrations": made[2:4], "next_start": 4}
        last = await api.call("GET", path % (4, 2), account=john)
        assert last.json() == {"registrations": made[4:]}
        exactly = await api.call("GET", path % (3, 2), account=john)
        assert exactly.json() == {"registrations": made[3:5]}
        past = await api.call("GET", path % (5, 2), account=john)
        assert past.status == 204 and past.body == b""


@pytest_twisted.ensureDeferred
async def test_most_lists_check_credentials_before_paging() -> None:
    """Own lists, the registration catalogue and the account list answer 401
    before looking at start/limit."""
    async with running_api() as api:
        for path in ("/v1/accounts", "/v1/webhook/registration", "/v1/webhook/registrations",
                     "/v1/webhook/subscription"):
            reply = await api.call("GET", path + "?start=x")
            assert (reply.status, reply.error) == (401, "Missing API key header value"), path


async def _subscriptions_and_firings(api):  # type: ignore[no-untyped-def]
    john = await api.new_account("john")
    jane = await api.new_account("jane")
    bob = await api.new_account("bob")
    johns = await api.new_registration(john)
    janes = await api.new_registration(jane)
    rows = {
        "jane->john": await api.subscribe(jane, johns),
        "bob->jane": await api.subscribe(bob, janes),
        "john->jane": await api.subscribe(john, janes),
    }
    for registration, owner in ((johns, john), (janes, jane)):
        reply = await api.call("POST", "/v1/webhook/triggered/" + registration["id"], account=owner)
        rows["fired " + owner["username"]] = reply.json()
    return john, jane, bob, rows


@pytest_twisted.ensureDeferred
async def test_public_listings_show_everything_to_everyone() -> None:
    """Without --private-listings any account sees all subscriptions and firings."""
    async with running_api() as api:
        _, _, bob, rows = await _subscriptions_and_firings(api)
        subs = await api.call("GET", "/v1/webhook/subscriptions?start=0&limit=10", account=bob)
        assert subs.json()["subscriptions"] == [rows["jane->john"], rows["bob->jane"], rows["john->jane"]]
        fired = await api.call("GET", "/v1/webhook/triggered?start=0&limit=10", account=bob)
        assert fired.json()["triggered_webhooks"] == [rows["fired john"], rows["fired jane"]]


@pytest_twisted.ensureDeferred
async def test_private_listings_restrict_the_all_records_lists_for_non_admins() -> None:
    """With --private-listings a non-admin sees subscriptions it holds or that
    are to its registrations, and firings of its own registrations; the admin sees all."""
    async with running_api(private_listings=True) as api:
        john, jane, bob, rows = await _subscriptions_and_firings(api)
        query = "?start=0&limit=10"
        subs = await api.call("GET", "/v1/webhook/subscriptions" + query, account=john)
        assert subs.json()["subscriptions"] == [rows["jane->john"], rows["john->jane"]]
        subs = await api.call("GET", "/v1/webhook/subscriptions" + query, account=bob)
        assert subs.json()["subscriptions"] == [rows["bob->jane"]]
        fired = await api.call("GET", "/v1/webhook/triggered" + query, account=jane)
        assert fired.json()["triggered_webhooks"] == [rows["fired jane"]]
        fired = await api.call("GET", "/v1/webhook/triggered" + query, account=bob)
        assert fired.status == 204
        subs = await api.call("GET", "/v1/webhook/subscriptions" + query, account=api.admin)
        assert len(subs.json()["subscriptions"]) == 3
        fired = await api.call("GET", "/v1/webhook/triggered" + query, account=api.admin)
        assert len(fired.json()["triggered_webhooks"]) == 2
        catalogue = await api.call("GET", "/v1/webhook/registrations" + query, account=bob)
        assert len(catalogue.json()["registrations"]) == 2
