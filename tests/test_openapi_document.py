"""The OpenAPI 3.1 document (``pywebhooks/api/openapi.json``) is valid, is
served at ``GET /v1/openapi.json``, names exactly the routes the Klein app
serves, and describes errors, names, endpoints and ids as the API checks
them.  (``test_schemathesis_fuzz`` checks the live daemon's answers against it.)"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import pytest_twisted
import schemathesis
# The OpenAPI Initiative's JSON Schema of OpenAPI 3.1 documents, as schemathesis ships it.
from schemathesis.specs.openapi.definitions import OPENAPI_31

from pywebhooks.api import PyWebhooksAPI
from pywebhooks.api.http import is_endpoint, is_name
from pywebhooks.api.openapi import document
from pywebhooks.records import is_uuid
from tests.support.api_harness import running_api
from tests.support.daemon import REPO_ROOT

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(method, path, operation)`` for every operation of the document."""
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def resolve(value: Any) -> Any:
    """``value``, or what its ``$ref`` points at in the document."""
    while isinstance(value, dict) and "$ref" in value:
        target: Any = document()
        for part in value["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        value = target
    return value


def references(value: Any) -> Iterator[str]:
    """Every ``$ref`` in ``value``, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def validator(schema: dict[str, Any]) -> Any:
    """A JSON Schema 2020-12 validator of ``schema``, whose ``$ref``s may
    point into the document's components."""
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": document()["components"], "allOf": [schema]}
    return jsonschema_rs.Draft202012Validator(root)


def component(name: str) -> Any:
    """A validator of the document's schema ``name``."""
    return validator({"$ref": "#/components/schemas/%s" % (name,)})


def template(path: str) -> str:
    """A path with its variables, ``{name}`` or ``<name>``, as ``{}``."""
    return re.sub(r"\{[^}]+\}|<[^>]+>", "{}", path)


def test_the_document_is_valid_openapi_3_1() -> None:
    """The document passes the OpenAPI 3.1 schema, its references resolve, its
    schemas are valid JSON Schema 2020-12, and its path variables are declared."""
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    meta_schema = jsonschema_rs.Draft202012Validator(OPENAPI_31)
    assert [str(error) for error in meta_schema.iter_errors(doc)] == []
    for ref in set(references(doc)):
        assert ref.startswith("#/") and resolve({"$ref": ref}) is not None, ref
    for name, schema in doc["components"]["schemas"].items():
        jsonschema_rs.meta.validate(schema)
        component(name)  # compiles, patterns included
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    for method, path, operation in operations():
        declared = {resolve(parameter)["name"] for parameter in operation.get("parameters", [])
                    if resolve(parameter)["in"] == "path"}
        assert declared == set(re.findall(r"\{([^}]+)\}", path)), (method, path)
    loaded = schemathesis.openapi.from_dict(doc)
    assert sum(1 for result in loaded.get_all_operations() if result.ok()) == len(ids)


def test_the_document_names_exactly_the_routes_klein_serves() -> None:
    """Every (method, path) the Klein app routes is in the document, and every
    one in the document is routed (HEAD comes with every GET, as werkzeug adds it)."""
    served = set()
    for rule in PyWebhooksAPI.app.url_map.iter_rules():
        methods = set(rule.methods or ())
        assert ("HEAD" in methods) == ("GET" in methods), rule
        served.update((method, template(rule.rule)) for method in methods - {"HEAD", "OPTIONS"})
    documented = {(method, template(path)) for method, path, _ in operations()}
    assert sorted(served - documented) == [], "routes missing from the document"
    assert sorted(documented - served) == [], "documented routes Klein does not serve"


def test_every_error_is_the_one_error_schema() -> None:
    """Every 4xx and 5xx response of every operation is the JSON ``{"Error": string}``."""
    assert resolve({"$ref": "#/components/schemas/Error"}) == {
        "description": "Every error, on every status.",
        "type": "object", "additionalProperties": False, "required": ["Error"],
        "properties": {"Error": {"type": "string"}},
    }
    checked = 0
    for method, path, operation in operations():
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert resolve(response)["content"] == ERROR_CONTENT, (method, path, status)
                checked += 1
    assert checked > 100


def test_the_statuses_every_route_can_answer_are_documented() -> None:
    """The body gate (413, 415) is on every operation, 401 on every secured one,
    403 on the admin-only ones, and 204 on every list."""
    for method, path, operation in operations():
        statuses = set(operation["responses"])
        assert {"400", "413", "415"} <= statuses, (method, path)
        if operation["security"]:
            assert "401" in statuses, (method, path)
        if operation.get("x-admin-only"):
            assert resolve(operation["responses"]["403"])["description"] == "`Not an Admin`."
        names = {resolve(parameter)["name"] for parameter in operation.get("parameters", [])}
        if {"start", "limit"} <= names:
            assert {"200", "204"} <= statuses, (method, path)


NAMES = [
    "john", "a", "x" * 255, "x" * 256, "", " john", "john ", "jo hn", "jo\thn", "\tjohn",
    "jo\x00hn", "jo\x7fhn", "jo\x1fhn", "\u00e9l\u00e8ve", "\u3000john", "john\u2028",
    "jo\u2028hn", "\x85john", "john\u00a0", "\ufeffjohn", "\U0001f600", "-",
]


@pytest.mark.parametrize("value", NAMES)
def test_the_documented_name_is_the_name_the_api_accepts(value: str) -> None:
    """A username or event name is allowed by the document exactly when the API accepts it."""
    assert component("Name").is_valid(value) == is_name(value)


IDS = [
    "6f1c1e2e-8f5c-4b7e-9d8a-2f0c4b6d1e3a", "6F1C1E2E-8F5C-4B7E-9D8A-2F0C4B6D1E3A",
    "6f1c1e2e8f5c4b7e9d8a2f0c4b6d1e3a", "{6f1c1e2e-8f5c-4b7e-9d8a-2f0c4b6d1e3a}",
    "urn:uuid:6f1c1e2e-8f5c-4b7e-9d8a-2f0c4b6d1e3a", "6f1c1e2e-8f5c-4b7e-9d8a-2f0c4b6d1e3",
    "6f1c1e2e-8f5c-4b7e-9d8a-2f0c4b6d1e3ag", "", "reset", "00000000-0000-0000-0000-000000000000",
]


@pytest.mark.parametrize("value", IDS)
def test_the_documented_id_is_the_id_the_api_accepts(value: str) -> None:
    """A path id is allowed by the document exactly when the API accepts it."""
    assert component("IdParameter").is_valid(value) == is_uuid(value)


ENDPOINTS_BOTH_ACCEPT = [
    "http://127.0.0.1:9090/account/endpoint", "https://example.com", "HTTP://EXAMPLE.COM/",
    "http://h:0", "http://h:65535/x", "http://h:/x", "http://h?q=1#f", "http://h#",
    "https://h/\u00e9t\u00e9?x=%20", "http://a-b.c_d~e!$&'()*+,;=%41/",
    "http://h/" + "x" * 2039,
]

ENDPOINTS_BOTH_REFUSE = [
    "", "h", "ftp://h/", "http://", "http:///x", "http:h", "http://h:65536/", "http://h:x/",
    "http://h /", "http://h/ x", "http://h/\tx", "http://h/x\u3000", "http://h/x\x00",
    "http://[::1/", "http://h/" + "x" * 2040, "//h/x", "mailto:a@b",
]


@pytest.mark.parametrize("value", ENDPOINTS_BOTH_ACCEPT)
def test_an_endpoint_the_document_allows_is_accepted(value: str) -> None:
    """What the document allows as an endpoint, the API accepts."""
    assert (component("Endpoint").is_valid(value), is_endpoint(value)) == (True, True)


@pytest.mark.parametrize("value", ENDPOINTS_BOTH_REFUSE)
def test_an_endpoint_the_api_refuses_is_forbidden_by_the_document(value: str) -> None:
    """What the API refuses as an endpoint, the document forbids."""
    assert (component("Endpoint").is_valid(value), is_endpoint(value)) == (False, False)


@pytest_twisted.ensureDeferred
async def test_the_document_is_served_without_credentials() -> None:
    """``GET /v1/openapi.json`` (with or without a trailing slash) answers the
    document as JSON to anyone; a body that is not JSON is refused like anywhere else."""
    async with running_api() as api:
        for path in ("/v1/openapi.json", "/v1/openapi.json/"):
            reply = await api.call("GET", path, content_type=None)
            assert reply.status == 200
            assert reply.header("content-type") == "application/json"
            assert reply.json() == document()
        reply = await api.call("GET", "/v1/openapi.json", data=b"{")
        assert (reply.status, reply.error) == (400, "Invalid JSON body")
        reply = await api.call("POST", "/v1/openapi.json")
        assert reply.status == 405


@pytest_twisted.ensureDeferred
async def test_a_mounted_api_names_its_mount_point_in_servers() -> None:
    """An API mounted at ``/hooks`` serves a document whose server is ``/hooks``."""
    async with running_api(mount=b"hooks") as api:
        reply = await api.call("GET", "/v1/openapi.json")
        assert reply.status == 200
        served = reply.json()
        assert served["servers"][0]["url"] == "/hooks"
        assert served["paths"] == document()["paths"]
    assert document()["servers"][0]["url"] == "/"


def test_the_document_is_package_data() -> None:
    """``setup.cfg`` ships ``api/openapi.json`` with the package, so an installed
    daemon can serve it."""
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    shipped = config["options.package_data"]["pywebhooks"].split()
    assert "api/openapi.json" in shipped
