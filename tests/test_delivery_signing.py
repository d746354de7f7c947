"""Delivery bodies and signatures, checked by independent verifiers.

``standardwebhooks`` is the reference implementation of the Standard
Webhooks spec; the HMAC-SHA1 checks are the two ways the original's example
receivers verify ``pywebhooks-signature`` (Ruby: over the raw body; Python:
over ``json.dumps(request.json)``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from pywebhooks import keys
from pywebhooks.delivery.signing import delivery_body, signature_headers

PAYLOADS = [
    {"message": "hello world", "items": [{"item1": 1}, {"item2": 2}]},
    {"z": 1, "a": {"y": [3, 2, 1], "b": None}, "unicode": "é ☃ 𝄞", "float": 1.5, "t": True},
    [1, "two", {"three": 3}],
    "just a string",
    {},
]


def original_python_receiver_accepts(secret_key: str, body: bytes, signature: str) -> bool:
    """The original's Flask example: HMAC-SHA1 over ``json.dumps(request.json)``."""
    reserialised = json.dumps(json.loads(body))
    expected = hmac.new(secret_key.encode(), reserialised.encode(), hashlib.sha1).hexdigest()
    return hmac.compare_digest(expected, signature)


def original_ruby_receiver_accepts(secret_key: str, body: bytes, signature: str) -> bool:
    """The original's Sinatra example: HMAC-SHA1 over the raw body."""
    expected = hmac.new(secret_key.encode(), body, hashlib.sha1).hexdigest()
    return hmac.compare_digest(expected, signature)


def test_body_is_the_originals_json() -> None:
    """The body is json.dumps with sorted keys and the default separators, like the original."""
    assert delivery_body({"message": "hello world", "items": [{"item1": 1}, {"item2": 2}]}) == (
        '{"items": [{"item1": 1}, {"item2": 2}], "message": "hello world"}')
    assert delivery_body({"é": "ü"}) == '{"\\u00e9": "\\u00fc"}'


@pytest.mark.parametrize("event_data", PAYLOADS)
def test_standard_webhooks_verifier_accepts(event_data: object) -> None:
    """A Standard Webhooks verifier with the subscriber's secret accepts every delivery."""
    secret_key = keys.generate_key()
    body = delivery_body(event_data)
    delivery_id = "d3b07384-d9a0-4c9b-8f1e-2b7a7d0e5a11"
    headers = signature_headers(secret_key, delivery_id, int(time.time()), body, "push")
    verifier = Webhook(secret_key.encode("utf-8"))
    assert verifier.verify(body.encode("utf-8"), headers) == json.loads(body)
    same_secret_as_whsec = Webhook("whsec_" + base64.b64encode(secret_key.encode()).decode())
    same_secret_as_whsec.verify(body, headers)


def test_standard_webhooks_verifier_rejects_tampering() -> None:
    """Another secret, another body, another id or an old timestamp fails verification."""
    secret_key = keys.generate_key()
    now = int(time.time())
    body = delivery_body({"amount": 10})
    headers = signature_headers(secret_key, "id-1", now, body, "push")
    with pytest.raises(WebhookVerificationError):
        Webhook(keys.generate_key().encode()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_key.encode()).verify(delivery_body({"amount": 1000}), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_key.encode()).verify(body, {**headers, "webhook-id": "id-2"})
    stale = signature_headers(secret_key, "id-1", now - 3600, body, "push")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_key.encode()).verify(body, stale)


@pytest.mark.parametrize("event_data", PAYLOADS)
def test_original_receivers_accept(event_data: object) -> None:
    """The original's receivers accept pywebhooks-signature over the raw and the re-serialised body."""
    secret_key = keys.generate_key()
    body = delivery_body(event_data)
    signature = signature_headers(secret_key, "id", 0, body, "push")["pywebhooks-signature"]
    assert len(signature) == 40 and signature == signature.lower()
    assert original_ruby_receiver_accepts(secret_key, body.encode(), signature)
    assert original_python_receiver_accepts(secret_key, body.encode(), signature)
    assert not original_ruby_receiver_accepts(keys.generate_key(), body.encode(), signature)


def test_headers() -> None:
    """Every header of a delivery: event, both signatures, the id and the attempt's time."""
    headers = signature_headers("secret", "the-id", 1700000000, "{}", "push")
    assert headers == {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "event": "push",
        "pywebhooks-signature": hmac.new(b"secret", b"{}", hashlib.sha1).hexdigest(),
        "webhook-id": "the-id",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1," + base64.b64encode(
            hmac.new(b"secret", b"the-id.1700000000.{}", hashlib.sha256).digest()).decode(),
    }
    assert "event" not in signature_headers("secret", "the-id", 1700000000, "{}", "")
