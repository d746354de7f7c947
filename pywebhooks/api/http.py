"""Request and response helpers shared by every route.

JSON replies, the ``{"Error": ...}`` exception, the request-body gate
(size, content type, JSON syntax), id and pagination parameters, field
checks, and authentication from the ``username``/``api-key`` headers.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

from pywebhooks import records
from pywebhooks.keys import DUMMY_HASH, hash_api_key, verify_api_key
from pywebhooks.records import Page, Record
from pywebhooks.store.interface import IStore

#: The value of ``body`` for a request that carried none.
NO_BODY: Any = object()

JSON_TYPE = b"application/json"
MAX_START = 999_999_999_999_999
MAX_LIMIT = 100
MAX_NAME_LENGTH = 255
MAX_URL_LENGTH = 2048

_DIGITS = re.compile(rb"[0-9]{1,15}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ApiError(Exception):
    """A request that ends with an error status and ``{"Error": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def json_response(request: IRequest, status: int, body: Any) -> bytes:
    """Set ``status`` and the JSON headers; the bytes of ``body`` (sorted keys).

    The answer says its length: without it, an answer a route gives after
    waiting (for the store, say) would go out in chunked transfer coding."""
    payload = json.dumps(body, sort_keys=True).encode("ascii")
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % (len(payload),))
    return payload


def error_response(request: IRequest, error: ApiError) -> bytes:
    """The reply for ``error``."""
    for name, value in error.headers.items():
        request.setHeader(name.encode("ascii"), value.encode("ascii"))
    return json_response(request, error.status, {"Error": error.message})


def no_content(request: IRequest) -> bytes:
    """An empty 204 reply."""
    request.setResponseCode(204)
    return b""


# -- request body -----------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not JSON" % (name,))


def _finite_float(text: str) -> float:
    """A JSON number as a float; ``1e400`` would be ``inf``, which is not JSON."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range: %s" % (text,))
    return value


def _check_unicode(value: Any) -> None:
    """Raise ``ValueError`` if a string in ``value`` has an unpaired surrogate
    (``"\\ud800"``): it cannot be stored or sent as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("unpaired surrogate") from None


def read_body(request: IRequest, max_size: int) -> Any:
    """The JSON body of ``request``, or ``NO_BODY`` if it has none.

    413 beyond ``max_size`` bytes (declared or actually sent), 415 for a body
    whose Content-Type does not start with ``application/json``, 400 when it
    does not parse or holds what JSON cannot carry back out (a number beyond
    a double, an unpaired surrogate).
    """
    declared = _declared_length(request)
    if declared > max_size:
        raise ApiError(413, "Request body too large")
    content = request.content
    data = b""
    if content is not None:
        content.seek(0)
        data = content.read(max_size + 1)
    if len(data) > max_size:
        raise ApiError(413, "Request body too large")
    chunked = b"chunked" in (request.getHeader(b"transfer-encoding") or b"").lower()
    if not (data or declared > 0 or chunked):
        return NO_BODY
    content_type = (request.getHeader(b"content-type") or b"").strip().lower()
    if not content_type.startswith(JSON_TYPE):
        raise ApiError(415, "Unsupported Media Type")
    try:
        value = json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
        _check_unicode(value)
        return value
    except (ValueError, RecursionError):
        raise ApiError(400, "Invalid JSON body") from None


def _declared_length(request: IRequest) -> int:
    raw = request.getHeader(b"content-length")
    try:
        return int(raw) if raw else 0
    except ValueError:
        return 0


def json_object(body: Any) -> dict[str, Any]:
    """``body`` if it is a JSON object, else 400."""
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


# -- headers, ids and pages -------------------------------------------------


def header(request: IRequest, name: bytes) -> str | None:
    """The text of header ``name``; None when absent or empty."""
    raw = request.getHeader(name)
    if not raw:
        return None
    return raw.decode("utf-8", "replace")


def record_id(value: str | None, name: str) -> str:
    """A path id, lowercased; 400 ``Missing <name>`` or ``Invalid id parameter``."""
    if not value:
        raise ApiError(400, "Missing %s" % (name,))
    if not records.is_uuid(value):
        raise ApiError(400, "Invalid id parameter")
    return value.lower()


def page_params(request: IRequest) -> tuple[int, int]:
    """``(start, limit)`` from the query; 400 unless both are in range."""
    start = _decimal_arg(request, b"start")
    limit = _decimal_arg(request, b"limit")
    if start is None or limit is None or start > MAX_START or not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "Invalid limit or start parameter")
    return start, limit


def _decimal_arg(request: IRequest, name: bytes) -> int | None:
    values = request.args.get(name) or []
    if len(values) != 1 or not _DIGITS.fullmatch(values[0]):
        return None
    return int(values[0])


def page_response(
    request: IRequest,
    key: str,
    page: Page,
    start: int,
    limit: int,
    rows: Iterable[Record] | None = None,
) -> bytes:
    """200 ``{key: rows, next_start?}``, or 204 for an empty page.

    ``rows`` replaces ``page.rows`` in the body (e.g. with secrets removed).
    """
    if not page.rows:
        return no_content(request)
    body: dict[str, Any] = {key: list(page.rows if rows is None else rows)}
    if page.more:
        body["next_start"] = start + limit
    return json_response(request, 200, body)


# -- field checks -----------------------------------------------------------


def is_name(value: Any) -> bool:
    """A non-empty string of at most 255 characters that can travel in an
    HTTP header: no control characters, no surrounding whitespace."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME_LENGTH
        and value == value.strip()
        and not _CONTROL.search(value)
    )


def is_endpoint(value: Any) -> bool:
    """An absolute http:// or https:// URL with a host."""
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH or _CONTROL.search(value):
        return False
    if any(character.isspace() for character in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def require_field(
    body: Mapping[str, Any], name: str, check: Callable[[Any], bool] = lambda value: True
) -> Any:
    """``body[name]``; 400 ``Missing or invalid field: <name>`` unless it passes ``check``."""
    if name not in body or not check(body[name]):
        raise ApiError(400, "Missing or invalid field: %s" % (name,))
    return body[name]


def endpoint_field(body: Mapping[str, Any]) -> str:
    """The ``endpoint`` of ``body``; 400 if it is missing or not an http(s) URL."""
    if "endpoint" not in body:
        raise ApiError(400, "Missing endpoint field")
    endpoint = body["endpoint"]
    if not is_endpoint(endpoint):
        raise ApiError(400, "Invalid endpoint: must be an http(s) URL")
    return endpoint


# -- authentication ---------------------------------------------------------


async def authenticate(request: IRequest, store: IStore) -> Record:
    """The account named by the ``username`` and ``api-key`` headers; 401 if not.

    An unknown username is checked against a dummy hash, so that it costs
    the same time as a wrong key.
    """
    api_key = header(request, b"api-key")
    if api_key is None:
        raise ApiError(401, "Missing API key header value")
    username = header(request, b"username")
    if username is None:
        raise ApiError(401, "Missing username header value")
    account = await store.get_account_by_username(username)
    stored_hash = DUMMY_HASH if account is None else account["api_key"]
    key_ok = verify_api_key(stored_hash, api_key)
    if account is None:
        raise ApiError(401, "Invalid API key or Username")
    if not key_ok:
        raise ApiError(401, "Invalid API key")
    upgraded = hash_api_key(api_key)
    if account["api_key"] != upgraded:
        # A slow hash imported from the original: store the fast form, so
        # that this account's next requests don't pay pbkdf2 again.
        await store.update_account(account["id"], {"api_key": upgraded})
        account["api_key"] = upgraded
    return account


def require_admin(account: Record) -> None:
    """403 ``Not an Admin`` unless ``account`` has the admin flag."""
    if not account["is_admin"]:
        raise ApiError(403, "Not an Admin")


def require_owner_or_admin(
    account: Record, record: Record | None, message: str = "Not authorized"
) -> None:
    """403 unless ``account`` is an admin or owns ``record`` (its ``account_id``).

    A missing record looks like someone else's, except to an admin.
    """
    if account["is_admin"]:
        return
    if record is None or record["account_id"] != account["id"]:
        raise ApiError(403, message)
