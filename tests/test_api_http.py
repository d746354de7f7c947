"""HTTP-level behaviour of the API over real HTTP: body gate (413, 415,
invalid JSON), JSON errors on 404/405/500/503, credentials order, trailing
slashes, HEAD, and mounting under a sub-path of another site."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest_twisted
from twisted.internet.defer import succeed
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from pywebhooks.errors import StoreUnavailable
from pywebhooks.keys import hash_api_key
from tests.support.api_harness import running_api
from tests.support.raw_http import exchange

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@implementer(IBodyProducer)
class ChunkedBody:
    """A body of unknown length, so the client sends it chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes) -> None:
        self._data = data

    def startProducing(self, consumer: Any) -> Any:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _registration_body(size: int) -> bytes:
    """A valid registration body of exactly ``size`` bytes."""
    template = '{"event": "e", "description": "%s", "event_data": {}}'
    body = (template % ("x" * (size - len(template % "")))).encode()
    assert len(body) == size
    return body


@pytest_twisted.ensureDeferred
async def test_oversize_bodies_are_413_and_change_nothing() -> None:
    """A body over max_body_size is 413, whether its length is declared or chunked."""
    async with running_api(max_body_size=200) as api:
        john = await api.new_account("john")
        fits = await api.call("POST", "/v1/webhook/registration", account=john, data=_registration_body(200))
        assert fits.status == 201
        reply = await api.call("POST", "/v1/webhook/registration", account=john, data=_registration_body(201))
        assert (reply.status, reply.error) == (413, "Request body too large")
        reply = await api.call(
            "POST", "/v1/webhook/registration", account=john, data=ChunkedBody(_registration_body(300))
        )
        assert (reply.status, reply.error) == (413, "Request body too large")
        assert await api.store.count_registrations(john["id"]) == 1


@pytest_twisted.ensureDeferred
async def test_default_body_limit_is_one_mebibyte() -> None:
    """With the default settings a body just over 1 MiB is 413 and one just under is accepted."""
    async with running_api() as api:
        john = await api.new_account("john")
        limit = 1024 * 1024
        reply = await api.call("POST", "/v1/webhook/registration", account=john, data=_registration_body(limit + 1))
        assert reply.status == 413
        reply = await api.call("POST", "/v1/webhook/registration", account=john, data=_registration_body(limit))
        assert reply.status == 201


@pytest_twisted.ensureDeferred
async def test_bodies_need_a_json_content_type() -> None:
    """A body whose Content-Type does not start with application/json is 415
    (also chunked); bodiless requests need no Content-Type."""
    async with running_api() as api:
        john = await api.new_account("john")
        body = _registration_body(100)
        for content_type in ("text/plain", None, "text/plain, application/json", ""):
            reply = await api.call(
                "POST", "/v1/webhook/registration", account=john, data=body, content_type=content_type
            )
            assert (reply.status, reply.error) == (415, "Unsupported Media Type"), content_type
        reply = await api.call(
            "POST", "/v1/webhook/registration", account=john, data=ChunkedBody(body), content_type="text/plain"
        )
        assert (reply.status, reply.error) == (415, "Unsupported Media Type")
        for content_type in ("Application/JSON; charset=utf-8", "application/json"):
            reply = await api.call(
                "POST", "/v1/webhook/registration", account=john, data=body, content_type=content_type
            )
            assert reply.status == 201, content_type
        reply = await api.call(
            "GET", "/v1/webhook/registration?start=0&limit=5", account=john, content_type=None
        )
        assert reply.status == 200
        registration = reply.json()["registrations"][0]
        reply = await api.call(
            "POST", "/v1/webhook/subscription/" + registration["id"], account=john, content_type=None
        )
        assert reply.status == 201


@pytest_twisted.ensureDeferred
async def test_bodyless_routes_ignore_any_json_but_not_broken_json() -> None:
    """Routes that take no body accept the JSON string "{}" (the original
    client's habit), an object or an array; invalid JSON is still 400."""
    async with running_api() as api:
        john = await api.new_account("john")
        registration = await api.new_registration(john)
        for body in ("{}", {"x": 1}, [1, 2], None):
            reply = await api.call(
                "POST", "/v1/webhook/subscription/" + registration["id"], account=john, json=body
            )
            assert reply.status == 201, body
        reply = await api.call(
            "GET", "/v1/webhook/subscription?start=0&limit=10", account=john, json="{}"
        )
        assert reply.status == 200 and len(reply.json()["subscriptions"]) == 4
        for data in (b"{", b"NaN", b"[1,]", b"\xff\xfe", b"[" * 100000):
            reply = await api.call(
                "POST", "/v1/webhook/subscription/" + registration["id"], account=john, data=data
            )
            assert (reply.status, reply.error) == (400, "Invalid JSON body"), data[:10]
        assert await api.store.count_subscriptions(john["id"]) == 4


@pytest_twisted.ensureDeferred
async def test_unknown_paths_and_wrong_methods_are_json() -> None:
    """An unknown path is a JSON 404; a wrong method a JSON 405 with Allow."""
    async with running_api() as api:
        reply = await api.call("GET", "/nothing/here")
        assert (reply.status, reply.error) == (404, "Not found")
        assert reply.header("content-type") == "application/json"
        reply = await api.call("GET", "/v1/account//")
        assert reply.status == 404
        cases = [
            ("PUT", "/v1/account", {"DELETE", "GET", "HEAD", "PATCH", "POST"}),
            ("POST", "/v1/account/" + UNKNOWN, {"DELETE", "GET", "HEAD"}),
            ("PATCH", "/v1/account/" + UNKNOWN, {"DELETE", "GET", "HEAD"}),
            ("GET", "/v1/account/reset/apikey", {"POST"}),
            ("GET", "/v1/account/reset/secretkey", {"POST"}),
            ("POST", "/v1/accounts", {"DELETE", "GET", "HEAD"}),
            ("GET", "/v1/webhook/registration/" + UNKNOWN, {"DELETE", "PATCH"}),
            ("GET", "/v1/webhook/subscription/" + UNKNOWN, {"DELETE", "POST"}),
            ("GET", "/v1/webhook/triggered/" + UNKNOWN, {"POST"}),
            ("OPTIONS", "/v1/webhook/triggered", {"GET", "HEAD", "POST"}),
        ]
        for method, path, allowed in cases:
            reply = await api.call(method, path)
            assert (reply.status, reply.error) == (405, "Method not allowed"), (method, path)
            assert set(reply.header("allow").split(", ")) == allowed, (method, path)


@pytest_twisted.ensureDeferred
async def test_a_path_that_is_not_utf8_is_a_json_400() -> None:
    """A percent-encoded path or a Host header that is not UTF-8 gets a JSON 400."""
    async with running_api() as api:
        reply = await api.call("GET", "/v1/account/%FF")
        assert (reply.status, reply.error) == (400, "Invalid URL encoding")
        reply = await api.call("GET", "/v1/accounts", headers={"Host": b"h\xe9st"})
        assert (reply.status, reply.error) == (400, "Invalid URL encoding")


@pytest_twisted.ensureDeferred
async def test_every_route_accepts_a_trailing_slash() -> None:
    """Each of the 20 routes answers the same with a trailing slash (never 404/405)."""
    async with running_api() as api:
        john = await api.new_account("john")
        registration = await api.new_registration(john)
        subscription = await api.subscribe(john, registration)
        page = "?start=0&limit=5"
        admin = api.admin
        calls = [
            (john, "GET", "/v1/account/%s/" % john["id"], None, 200),
            (john, "PATCH", "/v1/account/", {"endpoint": john["endpoint"]}, 200),
            (admin, "GET", "/v1/accounts/" + page, None, 200),
            (john, "POST", "/v1/account/reset/secretkey/", None, 200),
            (john, "POST", "/v1/webhook/registration/", {"event": "e", "description": "", "event_data": 1}, 201),
            (john, "GET", "/v1/webhook/registration/" + page, None, 200),
            (john, "PATCH", "/v1/webhook/registration/%s/" % registration["id"], {"description": "x"}, 200),
            (john, "GET", "/v1/webhook/registrations/" + page, None, 200),
            (john, "POST", "/v1/webhook/subscription/%s/" % registration["id"], None, 201),
            (john, "GET", "/v1/webhook/subscription/" + page, None, 200),
            (john, "GET", "/v1/webhook/subscriptions/" + page, None, 200),
            (john, "DELETE", "/v1/webhook/subscription/%s/" % subscription["id"], None, 200),
            (john, "POST", "/v1/webhook/triggered/%s/" % registration["id"], None, 201),
            (john, "GET", "/v1/webhook/triggered/" + page, None, 200),
            (john, "DELETE", "/v1/webhook/registration/%s/" % registration["id"], None, 200),
            (admin, "DELETE", "/v1/webhook/subscriptions/", None, 200),
            (admin, "DELETE", "/v1/webhook/registrations/", None, 200),
            (john, "DELETE", "/v1/account/%s/" % john["id"], None, 200),
            (admin, "DELETE", "/v1/accounts/", None, 200),
        ]
        for caller, method, path, body, status in calls:
            kwargs: dict[str, Any] = {} if body is None else {"json": body}
            reply = await api.call(method, path, account=caller, **kwargs)
            assert reply.status == status, (method, path, reply.body)
        reply = await api.call("POST", "/v1/account/", json={"username": "jane", "endpoint": api.receiver.url()})
        assert reply.status == 201
        reply = await api.call("POST", "/v1/account/reset/apikey/", headers={"username": "jane"})
        assert reply.status == 200


@pytest_twisted.ensureDeferred
async def test_head_is_get_without_a_body() -> None:
    """HEAD on a GET route answers GET's status and headers with no body."""
    async with running_api() as api:
        reply = await api.call("HEAD", "/v1/accounts?start=0&limit=5", account=api.admin)
        assert reply.status == 200 and reply.body == b""
        assert reply.header("content-type") == "application/json"


def _raw_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """The bytes of one request that asks the server to close the connection."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1", "Connection: close",
             "Content-Type: application/json", "Content-Length: %d" % (len(body),)]
    lines += ["%s: %s" % item for item in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest_twisted.ensureDeferred
async def test_json_answers_say_their_length() -> None:
    """Every JSON answer, an error or one given after the store answered,
    carries its Content-Length instead of being sent in chunks."""
    async with running_api() as api:
        john = await api.new_account("john")
        registration = await api.call("POST", "/v1/webhook/registration", account=john,
                                      json={"event": "e", "description": "d", "event_data": {}})
        credentials = {"username": john["username"], "api-key": john["api_key"]}
        exchanges = [
            ("POST", "/v1/webhook/registration", b'{"event": "e", "description": "d", "event_data": {}}', 201),
            ("GET", "/v1/account/" + john["id"], b"", 200),
            ("POST", "/v1/webhook/triggered/" + registration.json()["id"], b"", 201),
            ("GET", "/v1/nowhere", b"", 404),
            ("GET", "/v1/account/" + UNKNOWN, b"", 403),
        ]
        port = int(api.base_url.rsplit(":", 1)[1])
        for method, path, body, status in exchanges:
            raw = await deferToThread(exchange, port, _raw_request(method, path, credentials, body))
            head, _, answer = raw.partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            found = dict(line.lower().split(": ", 1) for line in header_lines)
            assert int(status_line.split()[1]) == status, raw
            assert found.get("content-length") == str(len(answer)), raw
            assert "transfer-encoding" not in found, raw
            json.loads(answer)


@pytest_twisted.ensureDeferred
async def test_credentials_are_checked_api_key_first_with_the_original_messages() -> None:
    """Missing api-key, missing username, unknown username and wrong key are 401s
    with the original's messages, api-key checked first."""
    async with running_api() as api:
        john = await api.new_account("john")
        path = "/v1/account/" + john["id"]
        cases = [
            ({}, "Missing API key header value"),
            ({"username": "john"}, "Missing API key header value"),
            ({"api-key": john["api_key"]}, "Missing username header value"),
            ({"api-key": "", "username": "john"}, "Missing API key header value"),
            ({"api-key": john["api_key"], "username": "nobody"}, "Invalid API key or Username"),
            ({"api-key": john["api_key"], "username": "John"}, "Invalid API key or Username"),
            ({"api-key": john["api_key"].upper(), "username": "john"}, "Invalid API key"),
            ({"api-key": "x", "username": "john"}, "Invalid API key"),
        ]
        for headers, message in cases:
            reply = await api.call("GET", path, headers=headers)
            assert (reply.status, reply.error) == (401, message), headers
        reply = await api.call("GET", path, headers={"API-KEY": john["api_key"], "USERNAME": "john"})
        assert reply.status == 200


@pytest_twisted.ensureDeferred
async def test_an_unavailable_store_is_503() -> None:
    """StoreUnavailable from the store or the dispatcher is a JSON 503."""
    async with running_api() as api:
        john = await api.new_account("john")
        registration = await api.new_registration(john)
        api.store.faults["list_registrations"] = StoreUnavailable("database is locked")
        reply = await api.call("GET", "/v1/webhook/registrations?start=0&limit=5", account=john)
        assert (reply.status, reply.error) == (503, "Service temporarily unavailable, try again")
        api.dispatcher.fault = StoreUnavailable("ledger down")
        reply = await api.call("POST", "/v1/webhook/triggered/" + registration["id"], account=john)
        assert (reply.status, reply.error) == (503, "Service temporarily unavailable, try again")
        api.store.faults["get_account_by_username"] = StoreUnavailable("gone")
        reply = await api.call("GET", "/v1/account/" + john["id"], account=john)
        assert reply.status == 503


@pytest_twisted.ensureDeferred
async def test_an_unexpected_exception_is_a_logged_json_500() -> None:
    """A bug shows the client a JSON 500 without traceback, and is logged as a failure."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        async with running_api() as api:
            john = await api.new_account("john")
            api.store.faults["list_registrations"] = RuntimeError("boom secret-detail")
            reply = await api.call("GET", "/v1/webhook/registrations?start=0&limit=5", account=john)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (reply.status, reply.error) == (500, "Internal server error")
    assert b"boom" not in reply.body and b"Traceback" not in reply.body
    failures = [event["log_failure"] for event in events if "log_failure" in event]
    assert any(failure.check(RuntimeError) for failure in failures)


@pytest_twisted.ensureDeferred
async def test_the_api_can_be_mounted_under_a_sub_path() -> None:
    """Mounted at /hooks of another site, the API answers /hooks/v1/... and JSON 404s."""
    async with running_api(mount=b"hooks") as api:
        assert api.base_url.endswith("/hooks")
        john = await api.new_account("john")
        reply = await api.call("GET", "/v1/account/%s" % john["id"], account=john)
        assert reply.status == 200 and reply.json()["username"] == "john"
        reply = await api.call("GET", "/v2/unknown")
        assert (reply.status, reply.error) == (404, "Not found")
        reply = await api.call("GET", "/v1/accounts/?start=0&limit=1", account=api.admin)
        assert reply.status == 200 and reply.json()["next_start"] == 1


@pytest_twisted.ensureDeferred
async def test_an_original_pbkdf2_api_key_hash_works_and_is_upgraded() -> None:
    """An account imported with a Werkzeug pbkdf2 hash authenticates, and its
    hash is replaced by the fast form on first use."""
    async with running_api() as api:
        john = await api.new_account("john")
        digest = hashlib.pbkdf2_hmac("sha1", john["api_key"].encode(), b"salt", 1000).hex()
        await api.store.update_account(john["id"], {"api_key": "pbkdf2:sha1:1000$salt$" + digest})
        wrong = await api.call("GET", "/v1/account/" + john["id"], account=dict(john, api_key="0" * 40))
        assert (wrong.status, wrong.error) == (401, "Invalid API key")
        assert (await api.store.get_account(john["id"]))["api_key"].startswith("pbkdf2:")
        reply = await api.call("GET", "/v1/account/" + john["id"], account=john)
        assert reply.status == 200
        assert (await api.store.get_account(john["id"]))["api_key"] == hash_api_key(john["api_key"])
        again = await api.call("GET", "/v1/account/" + john["id"], account=john)
        assert again.status == 200


@pytest_twisted.ensureDeferred
async def test_an_expensive_pbkdf2_hash_is_refused_without_being_computed() -> None:
    """A pbkdf2 hash with a high iteration count (which would stall the reactor
    on every wrong guess) does not authenticate, even with the right key."""
    async with running_api() as api:
        john = await api.new_account("john")
        digest = hashlib.pbkdf2_hmac("sha256", john["api_key"].encode(), b"salt", 260000).hex()
        await api.store.update_account(john["id"], {"api_key": "pbkdf2:sha256:260000$salt$" + digest})
        reply = await api.call("GET", "/v1/account/" + john["id"], account=john)
        assert (reply.status, reply.error) == (401, "Invalid API key")
