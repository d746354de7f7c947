"""A minimal webhook receiver, written with the standard library only.

It is what an account's endpoint has to do, in any language:

- answer ``GET ?echo=VALUE`` with 200 and ``{"echo": "VALUE"}`` (account
  creation and endpoint changes prove you control the endpoint this way);
- accept ``GET ?api_key=NEW`` and ``GET ?secret_key=NEW`` with a 2xx and keep
  the new key (this is the only way key resets reach you);
- accept ``POST`` deliveries, check the signature with your secret key, and
  answer 2xx quickly (anything else is a failed attempt and is retried).

Run it with ``python -m pywebhooks.examples.receiver --port 9090``; it
prints one JSON line per event on stdout.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def pywebhooks_signature_ok(secret_key: str, body: bytes, signature: str) -> bool:
    """The original scheme: hex HMAC-SHA1 of the raw body, keyed with the secret key."""
    expected = hmac.new(secret_key.encode("utf-8"), body, hashlib.sha1).hexdigest()
    return hmac.compare_digest(expected, signature)


def standard_webhooks_signature_ok(secret_key: str, body: bytes, headers: Any) -> bool:
    """Standard Webhooks: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = b".".join(
        [headers.get("webhook-id", "").encode(), headers.get("webhook-timestamp", "").encode(), body]
    )
    expected = base64.b64encode(hmac.new(secret_key.encode("utf-8"), signed, hashlib.sha256).digest())
    offered = headers.get("webhook-signature", "").split()
    return any(
        hmac.compare_digest(b"v1," + expected, candidate.encode()) for candidate in offered
    )


class ReceiverState:
    """The keys this endpoint holds (the secret key arrives by reset)."""

    def __init__(self, secret_key: str | None) -> None:
        self.secret_key = secret_key
        self.api_key: str | None = None


class Handler(BaseHTTPRequestHandler):
    """Echo challenges, key deliveries and webhook POSTs."""

    state: ReceiverState

    def do_GET(self) -> None:
        query = {name: values[0] for name, values in parse_qs(urlsplit(self.path).query).items()}
        if "echo" in query:
            self._answer(200, {"echo": query["echo"]})
            return
        if "secret_key" in query:
            self.state.secret_key = query["secret_key"]
            self._report({"event": "secret_key received"})
        if "api_key" in query:
            self.state.api_key = query["api_key"]
            self._report({"event": "api_key received"})
        self._answer(200, {})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        secret = self.state.secret_key
        self._report(
            {
                "event": self.headers.get("event"),
                "webhook_id": self.headers.get("webhook-id"),
                "body": body.decode("utf-8", "replace"),
                "pywebhooks_signature_ok": bool(secret)
                and pywebhooks_signature_ok(secret, body, self.headers.get("pywebhooks-signature", "")),
                "standard_signature_ok": bool(secret)
                and standard_webhooks_signature_ok(secret, body, self.headers),
            }
        )
        self._answer(200, {})

    def _answer(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _report(self, event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
        sys.stdout.flush()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep stderr quiet: the events go to stdout."""


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description="A minimal PyWebhooks receiver.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--secret-key", default=None, help="the account's secret_key, to check signatures")
    arguments = parser.parse_args(argv)
    Handler.state = ReceiverState(arguments.secret_key)
    server = ThreadingHTTPServer((arguments.host, arguments.port), Handler)
    sys.stdout.write(json.dumps({"event": "listening", "port": server.server_address[1]}) + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
