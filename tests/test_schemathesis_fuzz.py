"""Schemathesis fuzzes the REAL daemon against its OpenAPI document.

A ``twist pywebhooks`` process (``tests.support.daemon``) and a webhook
receiver process (``tests.support.receiver``) listen on loopback ports.
Every operation of the document (``pywebhooks/api/openapi.json``, which the
``world`` fixture checks the daemon serves) is tested as the admin, as an
ordinary account and without credentials: its examples, the coverage phase
(boundary and invalid values of every parameter and body field, missing
ones, other methods, malformed content types) and a bounded, derandomized
fuzzing phase, each in positive and negative mode.  Every answer must not be
a 5xx and must have a documented status, content type, headers and body;
what the document forbids must be refused (4xx: schemathesis's check, and
``DocumentRules``, which re-checks every accepted request as it was sent);
what it allows must be accepted, or refused only for credentials or state
(401, 403, 404, 409, 429); without credentials a secured operation never succeeds, and an
ordinary account never succeeds on an admin-only one.

``FuzzWorld`` shapes each generated request before it is sent, without
changing whether the document allows it (schemathesis re-checks that after
the edits):

- every endpoint URL the API would accept, and so would try to reach, is
  replaced by the receiver's URL, or now and then by a URL of the daemon
  itself that fails the echo challenge: the daemon never calls anything but
  loopback, and account creation and endpoint changes can succeed;
- now and then a generated id becomes the id of a real record (made on
  demand), so updates, deletes, subscriptions and triggers succeed too;
- an api-key reset never names the admin or the fuzzing account (their keys
  must keep working), and now and then names a spare account whose endpoint
  is the receiver, so resets succeed, then hit the rate limit (429);
- secured operations get the identity's credentials.
"""

from __future__ import annotations

import json
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema_rs
import pytest
import pytest_twisted
import requests
import schemathesis
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from twisted.internet.defer import Deferred

from pywebhooks.api.http import is_endpoint
from pywebhooks.api.openapi import document
from pywebhooks.records import is_uuid
from tests.support.daemon import REPO_ROOT, Daemon, daemon_environment
from tests.support.processes import free_port
from tests.test_openapi_document import resolve, validator

#: Seeds everything random here: schemathesis, and the harness's choices.
SEED = 20240917

#: Examples per operation and identity in the fuzzing phase (the examples
#: and coverage phases add their own, a fixed set).
MAX_EXAMPLES = 25

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    missing_required_header,
    unsupported_method,
    allow_header_conformance,
]

#: What refusing invalid data may look like.
REJECTED = ["400", "401", "403", "404", "405", "413", "415", "429"]

#: What accepting valid data may look like: success, or a refusal that is
#: about credentials or state rather than the shape of the request.
ACCEPTED = ["2xx", "401", "403", "404", "409", "429"]

#: The fuzz's settings: bounded and repeatable.
CONFIG = schemathesis.Config.from_dict({
    "seed": SEED,
    "request-timeout": 10,
    "suppress-health-check": ["all"],
    "generation": {
        "mode": "all",
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "no-shrink": True,
        "database": "none",
        "with-security-parameters": False,
    },
    "checks": {
        "negative_data_rejection": {"expected-statuses": REJECTED},
        "positive_data_acceptance": {"expected-statuses": ACCEPTED},
    },
})

schema = schemathesis.openapi.from_dict(document(), config=CONFIG)

#: Which kind of record the path id of an operation names.
ID_KINDS = {
    "get_account": "account",
    "delete_account": "account",
    "update_registration": "registration",
    "delete_registration": "registration",
    "trigger": "registration",
    "subscribe": "registration",
    "unsubscribe": "subscription",
}

#: How often the harness swaps in a real id or the spare account.
OFTEN = 0.5

#: How often a valid endpoint becomes the receiver (else the failing URL).
RECEIVER_SHARE = 0.8

_HEADER_NAME = jsonschema_rs.validator_for(document()["components"]["schemas"]["HeaderName"])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Block until ``port`` on 127.0.0.1 accepts connections (or ``process`` dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("the process exited with %s" % (process.returncode,))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("nothing listened on port %d within %ss" % (port, timeout))


def succeeded(status: int) -> bool:
    """Whether ``status`` is a success."""
    return 200 <= status < 300


class DocumentRules:
    """What the document allows, checked against a request as it was sent.

    Schemathesis's own ``negative_data_rejection`` lets some invalid requests
    through (a coverage case with one query parameter out of range and another
    in range counts as valid), so every request the API accepted is checked
    here too, value by value, from its URL, headers and body as sent.
    """

    def __init__(self) -> None:
        self._validators: dict[str, Any] = {}

    def _valid(self, schema: dict[str, Any], value: Any) -> bool:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            self._validators[key] = validator(schema)
        return self._validators[key].is_valid(value)

    def violations(self, case: schemathesis.Case, sent: requests.PreparedRequest) -> list[str]:
        """How the request ``sent`` for ``case`` breaks the document (empty if it does not)."""
        definition = case.operation.definition.raw
        url = urlsplit(sent.url or "")
        names = re.findall(r"\{([^}]+)\}", case.operation.path)
        pattern = re.sub(r"\\\{[^}]+\\\}", "([^/]*)", re.escape(case.operation.path))
        match = re.fullmatch(pattern + "/?", url.path)
        path_values = dict(zip(names, match.groups())) if match else {}
        query = parse_qs(url.query, keep_blank_values=True)
        found = []
        for parameter in map(resolve, definition.get("parameters", [])):
            name, where = parameter["name"], parameter["in"]
            if where == "path":
                values = [unquote(path_values[name])] if name in path_values else []
            elif where == "query":
                values = [int(text) if re.fullmatch(r"-?[0-9]+", text) else text
                          for text in query.get(name, [])]
            else:
                value = sent.headers.get(name)
                values = [] if value is None else [value.strip()]
            if not values and not parameter.get("required"):
                continue
            if len(values) != 1 or not self._valid(parameter["schema"], values[0]):
                found.append("%s %s = %r" % (where, name, values))
        body = definition.get("requestBody")
        if sent.body:
            content_type = sent.headers.get("Content-Type", "")
            if body is None or not content_type.startswith("application/json"):
                found.append("a body with Content-Type %r" % (content_type,))
            elif not self._valid(body["content"]["application/json"]["schema"],
                                 json.loads(sent.body)):
                found.append("body %r" % (sent.body[:200],))
        elif body is not None and body.get("required"):
            found.append("no body")
        return found


class FuzzWorld:
    """The live daemon and receiver, and the accounts and records the fuzz uses."""

    def __init__(self, daemon: Daemon, receiver_url: str) -> None:
        assert daemon.admin_keys is not None, daemon.diagnostics()
        self.daemon = daemon
        self.base_url = daemon.url("")
        self.receiver_url = receiver_url
        #: on loopback, and fails the echo challenge (the daemon answers 404)
        self.failing_url = self.base_url + "/not-an-endpoint"
        self.session = requests.Session()
        self.rng = random.Random(SEED)
        self.rules = DocumentRules()
        self.admin = {"username": "admin", "api_key": daemon.admin_keys[0]}
        self.admin["id"] = self.request(
            "GET", "/v1/accounts?start=0&limit=1", self.admin).json()["accounts"][0]["id"]
        self._logins: dict[str, dict[str, str] | None] = {"admin": self.admin, "account": None}
        self._spare: dict[str, str] | None = None
        self._made = 0
        #: operation id -> the statuses it answered
        self.statuses: dict[str, list[int]] = {}

    # -- plain calls ----------------------------------------------------------

    def request(self, method: str, path: str, account: dict[str, str] | None = None,
                body: Any = None, data: bytes | None = None) -> requests.Response:
        """``method path`` as ``account``, with ``body`` as JSON (or ``data`` as is)."""
        headers = {"Content-Type": "application/json"}
        if account is not None:
            headers.update({"username": account["username"], "api-key": account["api_key"]})
        if body is not None:
            data = json.dumps(body).encode()
        return self.session.request(method, self.base_url + path, headers=headers, data=data,
                                    timeout=10, allow_redirects=False)

    def new_account(self, prefix: str) -> dict[str, str]:
        """A fresh account whose endpoint is the receiver."""
        self._made += 1
        reply = self.request("POST", "/v1/account", body={
            "username": "%s-%d" % (prefix, self._made), "endpoint": self.receiver_url})
        assert reply.status_code == 201, (reply.status_code, reply.text)
        return reply.json()

    def login(self, identity: str) -> dict[str, str] | None:
        """The credentials of ``identity`` (None for ``anonymous``)."""
        if identity == "anonymous":
            return None
        if self._logins[identity] is None:
            self._logins[identity] = self.new_account("fuzz")
        return self._logins[identity]

    def _records(self, kind: str) -> list[dict[str, Any]]:
        """The first page of every registration or subscription (as the admin)."""
        reply = self.request("GET", "/v1/webhook/%ss?start=0&limit=100" % (kind,), self.admin)
        assert reply.status_code in (200, 204), (reply.status_code, reply.text)
        return reply.json()["%ss" % (kind,)] if reply.status_code == 200 else []

    def _create(self, kind: str, account: dict[str, str]) -> dict[str, Any]:
        """A new registration of ``account``, or a new subscription of ``account``."""
        if kind == "registration":
            reply = self.request("POST", "/v1/webhook/registration", account, {
                "event": "fuzz.event", "description": "made by the fuzz harness",
                "event_data": {"n": self._made}})
        else:
            registrations = self._records("registration") or [self._create("registration", account)]
            registration = self.rng.choice(registrations)
            reply = self.request("POST", "/v1/webhook/subscription/" + registration["id"], account)
        assert reply.status_code == 201, (reply.status_code, reply.text)
        return reply.json()

    def real_id(self, kind: str, operation_id: str, account: dict[str, str]) -> str:
        """The id of a real record of ``kind`` for ``account`` to act on: its
        own most of the time, anyone's otherwise."""
        if kind == "account":
            if operation_id == "delete_account" and account is self.admin:
                return self.new_account("spare")["id"]
            return account["id"]
        records = self._records(kind)
        own = [record for record in records if record["account_id"] == account["id"]]
        if records and (not own or self.rng.random() < 0.25):
            return self.rng.choice(records)["id"]
        return self.rng.choice(own or [self._create(kind, account)])["id"]

    # -- shaping a generated request -----------------------------------------

    def prepare(self, case: schemathesis.Case, identity: str) -> list[Any]:
        """Shape ``case`` for ``identity`` (see the module docstring); the
        checks that cannot apply to it."""
        excluded: list[Any] = []
        definition = case.operation.definition.raw
        operation_id = definition["operationId"]
        account = self.login(identity)
        if definition.get("security") and account is not None:
            case.headers = dict(case.headers or {})
            case.headers.update({"username": account["username"], "api-key": account["api_key"]})
        if isinstance(case.body, dict) and is_endpoint(case.body.get("endpoint")):
            if self.rng.random() < RECEIVER_SHARE:
                case.body["endpoint"] = self.receiver_url
            else:
                case.body["endpoint"] = self.failing_url
                excluded.append(positive_data_acceptance)  # refused for the echo, on purpose
        if operation_id == "reset_api_key":
            self._aim_key_reset(case)
        kind = ID_KINDS.get(operation_id)
        if kind is not None and account is not None:
            for name, value in case.path_parameters.items():
                if isinstance(value, str) and is_uuid(value) and self.rng.random() < OFTEN:
                    case.path_parameters[name] = self.real_id(kind, operation_id, account)
        if not any(succeeded(int(status)) for status in definition["responses"]):
            excluded.append(positive_data_acceptance)  # a route that only says "Missing <id>"
        case.meta  # noqa: B018 - reading it re-checks the edited case against the document
        return excluded

    def _aim_key_reset(self, case: schemathesis.Case) -> None:
        """Point an api-key reset at the spare account now and then, and never
        at an account the fuzz logs in as."""
        headers = case.headers if case.headers is not None else {}
        value = headers.get("username")
        if not isinstance(value, str):
            return
        protected = {login["username"] for login in self._logins.values() if login}
        chosen = _HEADER_NAME.is_valid(value) and self.rng.random() < OFTEN
        if value.strip() in protected or chosen:
            if self._spare is None:
                self._spare = self.new_account("spare")
            headers["username"] = self._spare["username"]

    def observe(self, case: schemathesis.Case, identity: str, status: int) -> None:
        """Learn from an answer: replace an account that no longer logs in (it
        was deleted, or its key was reset) or that no longer exists."""
        definition = case.operation.definition.raw
        self.statuses.setdefault(definition["operationId"], []).append(status)
        if identity != "anonymous" and definition.get("security") and status == 401:
            assert identity != "admin", "the admin's credentials stopped working"
            self._logins[identity] = None
        if (self._spare is not None and status == 404 and case.headers
                and case.headers.get("username") == self._spare["username"]):
            self._spare = None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzWorld]:
    """A running daemon and receiver (both real processes), stopped afterwards."""
    from twisted.internet import reactor

    directory = tmp_path_factory.mktemp("fuzz")
    receiver_port = free_port()
    with open(directory / "receiver.stderr", "wb") as receiver_stderr:
        receiver = subprocess.Popen(
            [sys.executable, "-m", "tests.support.receiver", "--port", str(receiver_port)],
            cwd=REPO_ROOT, env=daemon_environment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=receiver_stderr,
        )
    daemon = Daemon(reactor, directory / "daemon")
    try:
        wait_for_port(receiver_port, receiver)
        pytest_twisted.blockon(Deferred.fromCoroutine(daemon.start()))
        fuzz = FuzzWorld(daemon, "http://127.0.0.1:%d/account/endpoint" % (receiver_port,))
        assert fuzz.request("GET", "/v1/openapi.json").json()["paths"] == document()["paths"]
        yield fuzz
        fuzz.session.close()
        assert pytest_twisted.blockon(Deferred.fromCoroutine(daemon.terminate())) == 0
    finally:
        daemon.kill_now()
        receiver.terminate()
        receiver.wait(10)


def send_and_check(case: schemathesis.Case, identity: str, world: FuzzWorld) -> None:
    """Send ``case`` as ``identity`` and check the answer against the document."""
    excluded = world.prepare(case, identity)
    response = case.call_and_validate(
        base_url=world.base_url, session=world.session, checks=CHECKS,
        excluded_checks=excluded, allow_redirects=False,
    )
    world.observe(case, identity, response.status_code)
    if succeeded(response.status_code):
        broken = world.rules.violations(case, response.request)
        assert broken == [], "accepted what the document forbids"
    definition = case.operation.definition.raw
    if identity == "anonymous" and definition.get("security"):
        assert not succeeded(response.status_code), "succeeded without credentials"
    if identity == "account" and definition.get("x-admin-only"):
        assert not succeeded(response.status_code), "an ordinary account did an admin's job"


@schema.parametrize()
def test_as_the_admin_every_operation_answers_as_documented(
        case: schemathesis.Case, world: FuzzWorld) -> None:
    """The admin's requests, valid and invalid, get documented answers and never a 5xx."""
    send_and_check(case, "admin", world)


@schema.parametrize()
def test_as_an_account_every_operation_answers_as_documented(
        case: schemathesis.Case, world: FuzzWorld) -> None:
    """An ordinary account's requests get documented answers, and no admin powers."""
    send_and_check(case, "account", world)


@schema.parametrize()
def test_without_credentials_every_operation_answers_as_documented(
        case: schemathesis.Case, world: FuzzWorld) -> None:
    """Requests without credentials get documented answers; secured operations refuse them."""
    send_and_check(case, "anonymous", world)


def test_the_fuzz_reached_every_success(world: FuzzWorld) -> None:
    """Every operation that can succeed did succeed at least once during the fuzz."""
    operations = {
        definition["operationId"]: definition
        for item in document()["paths"].values() for definition in item.values()
    }
    if set(world.statuses) != set(operations):
        pytest.skip("the fuzz did not run every operation in this session")
    never = sorted(
        operation_id for operation_id, definition in operations.items()
        if any(succeeded(int(status)) for status in definition["responses"])
        and not any(succeeded(status) for status in world.statuses[operation_id])
    )
    assert never == []


def test_a_number_beyond_a_double_is_refused(world: FuzzWorld) -> None:
    """A JSON number too large for a double (1e400) is a 400, not a stored
    Infinity that breaks every later listing (found by fuzzing the body gate)."""
    admin = world.admin
    reply = world.request("POST", "/v1/webhook/registration", admin,
                          data=b'{"event": "e", "description": "d", "event_data": [1e400]}')
    assert (reply.status_code, reply.json()) == (400, {"Error": "Invalid JSON body"})
    reply = world.request("POST", "/v1/webhook/registration", admin,
                          data=b'{"event": "e", "description": "d", "event_data": [-1.5e308]}')
    assert reply.status_code == 201
    assert reply.json()["event_data"] == [-1.5e308]


def test_an_unpaired_surrogate_is_refused(world: FuzzWorld) -> None:
    """A string with an unpaired surrogate (``"\\ud800"``) is a 400, not a 500
    from the database after the echo was already sent."""
    before = world.request("GET", "/v1/accounts?start=0&limit=100", world.admin).json()
    reply = world.request("POST", "/v1/account", data=(
        b'{"username": "x\\ud800", "endpoint": "%s"}' % (world.receiver_url.encode(),)))
    assert (reply.status_code, reply.json()) == (400, {"Error": "Invalid JSON body"})
    after = world.request("GET", "/v1/accounts?start=0&limit=100", world.admin).json()
    assert after == before
    reply = world.request("POST", "/v1/account", data=(
        b'{"username": "x\\ud83d\\ude00", "endpoint": "%s"}' % (world.receiver_url.encode(),)))
    assert reply.status_code == 201
    assert reply.json()["username"] == "x\U0001f600"


def test_the_daemon_logged_no_error_while_fuzzed(world: FuzzWorld) -> None:
    """Whatever the fuzz sent, the daemon logged no error and no failure."""
    bad = [
        event for event in world.daemon.log_events()
        if event.get("log_failure") is not None
        or getattr(event.get("log_level"), "name", "") in ("error", "critical")
    ]
    assert bad == []
