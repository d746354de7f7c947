"""What authentication costs, next to a whole authenticated request.

Times ``keys.verify_api_key`` on its own (right key, wrong key, the dummy
hash used for unknown usernames, and an original Werkzeug pbkdf2 hash),
then whole requests to a ``PyWebhooksAPI`` on a loopback port with a
``MemoryStore``: an authenticated ``GET /v1/account/<id>``, the same with a
wrong key, with an unknown username, and without credentials.  Prints one
line per measurement and a JSON summary.  Example::

    .venv/bin/python bench/auth_cost.py --requests 2000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react

# Measure the checkout this file is in, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import treq  # noqa: E402
from treq.client import HTTPClient  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402
from twisted.web.server import Site  # noqa: E402

from pywebhooks.accounts import new_account  # noqa: E402
from pywebhooks.api import PyWebhooksAPI  # noqa: E402
from pywebhooks.keys import DUMMY_HASH, generate_key, hash_api_key, verify_api_key  # noqa: E402
from pywebhooks.outbound import EndpointClient  # noqa: E402
from pywebhooks.settings import Settings  # noqa: E402
from pywebhooks.store.memory import MemoryStore  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifications", type=int, default=100_000,
                        help="verify_api_key calls per case (100000)")
    parser.add_argument("--requests", type=int, default=2000, help="HTTP requests per case (2000)")
    return parser.parse_args(argv)


def time_verify(stored_hash: str, key: str, count: int) -> float:
    """Mean microseconds of one ``verify_api_key`` call."""
    started = time.perf_counter()
    for _ in range(count):
        verify_api_key(stored_hash, key)
    return (time.perf_counter() - started) / count * 1e6


async def time_requests(
    call: Callable[[], Awaitable[int]], count: int, expected: int
) -> dict[str, float]:
    """Latency figures (microseconds) of ``count`` sequential requests."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        status = await call()
        samples.append((time.perf_counter() - started) * 1e6)
        if status != expected:
            raise RuntimeError("expected %d, got %d" % (expected, status))
    samples.sort()
    return {
        "mean_us": statistics.fmean(samples),
        "median_us": statistics.median(samples),
        "p95_us": samples[int(len(samples) * 0.95) - 1],
    }


async def main(reactor: Any, argv: list[str]) -> None:
    arguments = parse(argv)
    key = generate_key()
    stored = hash_api_key(key)
    salt = "benchsalt"
    werkzeug = "pbkdf2:sha256:260000$%s$%s" % (
        salt, hashlib.pbkdf2_hmac("sha256", key.encode(), salt.encode(), 260000).hex(),
    )
    verify = {
        "verify right key": time_verify(stored, key, arguments.verifications),
        "verify wrong key": time_verify(stored, generate_key(), arguments.verifications),
        "verify dummy hash (unknown user)": time_verify(DUMMY_HASH, key, arguments.verifications),
        "verify werkzeug pbkdf2 260000": time_verify(werkzeug, key, max(1, arguments.verifications // 10000)),
    }
    for name, micros in verify.items():
        print("%-36s %10.2f us/call" % (name, micros))

    store = MemoryStore()
    record, api_key = new_account("bench", "http://127.0.0.1:9/", reactor)
    await store.insert_account(record)
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = HTTPClient(Agent(reactor, pool=pool))
    api = PyWebhooksAPI(store, EndpointClient(http, reactor, 5.0), None, Settings(), reactor)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(api.resource()))
    url = "http://127.0.0.1:%d/v1/account/%s" % (port.getHost().port, record["id"])

    def getter(headers: dict[str, str]) -> Callable[[], Awaitable[int]]:
        async def call() -> int:
            response = await http.get(url, headers=headers, reactor=reactor, timeout=10)
            await treq.content(response)
            return response.code
        return call

    cases = [
        ("GET authenticated", {"username": "bench", "api-key": api_key}, 200),
        ("GET wrong key", {"username": "bench", "api-key": generate_key()}, 401),
        ("GET unknown username", {"username": "nobody", "api-key": api_key}, 401),
        ("GET no credentials", {}, 401),
    ]
    requests: dict[str, dict[str, float]] = {}
    try:
        await time_requests(getter(cases[0][1]), 50, 200)  # warm up the connection
        for name, headers, expected in cases:
            requests[name] = await time_requests(getter(headers), arguments.requests, expected)
            figures = requests[name]
            print("%-36s %10.1f us mean %10.1f us median %10.1f us p95"
                  % (name, figures["mean_us"], figures["median_us"], figures["p95_us"]))
    finally:
        await port.stopListening()
        await pool.closeCachedConnections()
    share = verify["verify right key"] / requests["GET authenticated"]["mean_us"] * 100
    print("verify_api_key is %.3f%% of an authenticated GET" % (share,))
    print(json.dumps({"verify_us": verify, "requests": requests, "verify_share_percent": share},
                     sort_keys=True))


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
