"""The bytes and headers of a delivery.

The body is ``json.dumps(event_data, sort_keys=True)`` with the default
separators, byte-compatible with the original, whose receivers re-serialise
the JSON before checking ``pywebhooks-signature``.  Next to that legacy
HMAC-SHA1, every delivery carries the Standard Webhooks headers
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) signed with
HMAC-SHA256 under the same key, which also binds the id and the time.
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any


def delivery_body(event_data: Any) -> str:
    """The body of a delivery of ``event_data``."""
    return json.dumps(event_data, sort_keys=True)


def legacy_signature(secret_key: str, body: str) -> str:
    """Lowercase hex HMAC-SHA1 of ``body`` keyed with ``secret_key`` (``pywebhooks-signature``)."""
    return hmac.digest(secret_key.encode("utf-8"), body.encode("utf-8"), "sha1").hex()


def standard_signature(secret_key: str, delivery_id: str, timestamp: int, body: str) -> str:
    """``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` (``webhook-signature``)."""
    message = "%s.%d.%s" % (delivery_id, timestamp, body)
    digest = hmac.digest(secret_key.encode("utf-8"), message.encode("utf-8"), "sha256")
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(secret_key: str, delivery_id: str, timestamp: int, body: str, event: str) -> dict[str, str]:
    """Every header of one delivery attempt made at unix time ``timestamp``."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "pywebhooks-signature": legacy_signature(secret_key, body),
        "webhook-id": delivery_id,
        "webhook-timestamp": "%d" % (timestamp,),
        "webhook-signature": standard_signature(secret_key, delivery_id, timestamp, body),
    }
    if event:
        headers["event"] = event
    return headers
