"""Benchmark 3: a daemon with 1,000,000 pending retries, killed and restarted.

For each ledger (embedded SQLite, Redis):

1. start the daemon once (it creates the schema and the admin), stop it;
2. fill the ledger **directly** (bulk SQL ``executemany`` into
   ``pending_deliveries``, or pipelined ``ZADD``/``HSET`` to Redis, in the
   ledgers' own formats) with ``--entries`` retries of failed deliveries to
   a receiver that answers 500, due in one hour (long retry delays).  No
   HTTP trigger is involved: 1M triggers would take far longer than the
   benchmark should;
3. start the daemon on it; sample its RSS for ``--settle`` seconds while
   timing API requests;
4. add ``--overdue`` entries for a healthy receiver, due 1 s later, and
   ``kill -9`` the daemon at once; wait until they are overdue;
5. restart it and measure the time from the restart (process spawned) to
   the first overdue delivery acked by the receiver, and the latency of
   API requests (``GET /v1/accounts``) made meanwhile.

    .venv/bin/python bench/backlog.py [--entries 1000000 --ledgers sqlite,redis]
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import harness
from harness import progress
from twisted.internet.defer import Deferred

from pywebhooks.ledger.interface import PendingDelivery

BODY = json.dumps({"order": 12345, "items": ["a", "b", "c"], "note": "x" * 200}, sort_keys=True)
PREFIX = "pywebhooks:"


def entry(endpoint: str, due: float, attempt: int = 1) -> PendingDelivery:
    """One pending retry of a delivery to ``endpoint``."""
    return PendingDelivery(id=str(uuid.uuid4()), firing_id=str(uuid.uuid4()), account_id=str(uuid.uuid4()),
                           endpoint=endpoint, secret_key="s" * 40, event="bench.event", body=BODY,
                           attempt=attempt, due=due)


def fill_sqlite(path: str, entries: list[PendingDelivery]) -> None:
    """Insert ``entries`` into the SQLite ledger table, in one transaction."""
    connection = sqlite3.connect(path, timeout=30)
    with connection:
        connection.executemany(
            "INSERT INTO pending_deliveries (id, due, available_at, leased, payload) VALUES (?, ?, ?, 0, ?)",
            [(item.id, item.due, item.due, item.to_json()) for item in entries])
    connection.close()


def _resp(*parts: str) -> bytes:
    out = [b"*%d\r\n" % (len(parts),)]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def fill_redis(port: int, entries: list[PendingDelivery]) -> None:
    """``ZADD pending`` + ``HSET payloads`` for every entry, pipelined."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        for start in range(0, len(entries), 5000):
            batch = entries[start:start + 5000]
            commands = b"".join(
                _resp("HSET", PREFIX + "payloads", item.id, item.to_json())
                + _resp("ZADD", PREFIX + "pending", repr(item.due), item.id)
                for item in batch)
            connection.sendall(commands)
            expected, seen, buffer = 2 * len(batch), 0, b""
            while seen < expected:
                buffer += connection.recv(65536)
                seen = buffer.count(b"\r\n")
            if b"-" in buffer[:1] or b"\r\n-" in buffer:
                raise RuntimeError("redis refused a command: %r" % (buffer[:200],))


def fill(ledger: str, daemon: harness.Daemon, redis: Any, entries: list[PendingDelivery]) -> None:
    """Put ``entries`` into the daemon's ledger."""
    if ledger == "sqlite":
        fill_sqlite(daemon.database[len("sqlite:"):], entries)
    else:
        fill_redis(redis.port, entries)


async def api_probe(reactor: Any, daemon: harness.Daemon, seconds: float, interval: float = 0.05) -> dict[str, Any]:
    """``GET /v1/accounts`` as admin every ``interval`` for ``seconds``: latencies of the answers."""
    api = daemon.api()
    latencies: list[float] = []
    errors = 0
    first_ok: float | None = None
    deadline = time.time() + seconds
    while time.time() < deadline:
        started = time.time()
        try:
            reply = await api.call("GET", "/v1/accounts?start=0&limit=10", account=daemon.admin)
            if reply.status == 200:
                latencies.append((time.time() - started) * 1000)
                if first_ok is None:
                    first_ok = started
            else:
                errors += 1
        except Exception:
            errors += 1  # not listening yet
        await harness.sleep(reactor, interval)
    return {"requests": len(latencies), "errors": errors, "first_ok_at": first_ok,
            "p50_ms": round(harness.percentile(latencies, 0.5), 2),
            "p99_ms": round(harness.percentile(latencies, 0.99), 2),
            "max_ms": round(max(latencies), 2) if latencies else None}


async def one_ledger(reactor: Any, arguments: argparse.Namespace, ledger: str, directory: Path,
                     failing: harness.ReceiverProcess, healthy: harness.ReceiverProcess) -> dict[str, Any]:
    """The whole scenario on one ledger; its figures."""
    options: list[str] = ["--retry-delays", "3600,3600,3600"]
    redis = None
    if ledger == "redis":
        redis = harness.start_redis(directory)
        options += ["--redis", redis.url]
    daemon = await harness.start_daemon(reactor, directory / "daemon", *options)
    await daemon.terminate(timeout=30)
    progress("%s: filling the ledger with %d retries due in 1 h", ledger, arguments.entries)
    now = time.time()
    started = time.monotonic()
    for offset in range(0, arguments.entries, 100000):
        count = min(100000, arguments.entries - offset)
        fill(ledger, daemon, redis, [entry(failing.url("/fail"), now + 3600 + offset / 1e4)
                                     for _ in range(count)])
        progress("%s: %d/%d entries", ledger, offset + count, arguments.entries)
    fill_seconds = time.monotonic() - started

    progress("%s: starting the daemon on the backlog", ledger)
    spawned = time.time()
    await daemon.start(timeout=120)
    start_seconds = time.time() - spawned
    pid = daemon.process.pid  # type: ignore[union-attr]
    sampler = harness.RssSampler(reactor, pid, 0.25)
    steady = await api_probe(reactor, daemon, arguments.settle)
    rss_running = sampler.stop()
    progress("%s: up in %.2fs, RSS peak %.0f MB, API p99 %.1f ms", ledger, start_seconds, rss_running,
             steady["p99_ms"])

    healthy.reset()
    due = time.time() + 1.0
    fill(ledger, daemon, redis, [entry(healthy.url("/ok"), due) for _ in range(arguments.overdue)])
    await daemon.kill()
    progress("%s: added %d entries due in 1 s, killed the daemon (kill -9)", ledger, arguments.overdue)
    while time.time() < due + 0.5:
        await harness.sleep(reactor, 0.05)

    restarted = time.time()
    probe = Deferred.fromCoroutine(api_probe(reactor, daemon, arguments.probe, 0.02))
    sampler = harness.RssSampler(reactor, pid, 0.25)
    await daemon.start(timeout=120)
    sampler.stop()
    sampler = harness.RssSampler(reactor, daemon.process.pid, 0.1)  # type: ignore[union-attr]
    listening = time.time() - restarted
    posts, _ = await harness.wait_for_posts(reactor, [healthy], 1, 30, "%s overdue" % (ledger,))
    first_post = healthy.stats()["first"] - restarted if posts else None
    during = await probe
    await harness.wait_for_posts(reactor, [healthy], arguments.overdue, 30, "%s overdue" % (ledger,))
    rss_restart = sampler.stop()
    await daemon.terminate(timeout=30)
    if redis is not None:
        redis.stop()
    return {"entries": arguments.entries, "fill_seconds": round(fill_seconds, 1),
            "start_seconds": round(start_seconds, 2), "rss_running_mb": round(rss_running, 1),
            "rss_after_restart_mb": round(rss_restart, 1), "api_running": steady,
            "restart_listening_seconds": round(listening, 2),
            "first_overdue_seconds": round(first_post, 2) if first_post is not None else None,
            "api_during_restart": {**during, "first_ok_after_restart_s":
                                   round(during["first_ok_at"] - restarted, 2) if during["first_ok_at"] else None},
            "overdue_delivered": healthy.stats()["posts"]}


async def main(reactor: Any) -> None:
    """Both ledgers, then the summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1000000)
    parser.add_argument("--overdue", type=int, default=10)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of running with the backlog")
    parser.add_argument("--probe", type=float, default=4.0, help="seconds of API probing after the restart")
    parser.add_argument("--ledgers", default="sqlite,redis")
    arguments = parser.parse_args()
    directory = harness.workdir("backlog")
    failing = harness.start_receiver(status=500)
    healthy = harness.start_receiver()
    results: dict[str, Any] = {}
    lines = []
    for ledger in [name.strip() for name in arguments.ledgers.split(",") if name.strip()]:
        result = results[ledger] = await one_ledger(reactor, arguments, ledger, directory / ledger,
                                                    failing, healthy)
        lines.append(
            "%s: %d entries; RSS %.0f MB running, %.0f MB after restart (target <= 300); first overdue "
            "delivery %.2fs after the restart (target <= 2 s; listening after %.2fs); API during restart: "
            "%d ok, p50 %.1f ms, p99 %.1f ms, first answer %.2fs after the restart"
            % (ledger, result["entries"], result["rss_running_mb"], result["rss_after_restart_mb"],
               result["first_overdue_seconds"] or -1, result["restart_listening_seconds"],
               result["api_during_restart"]["requests"], result["api_during_restart"]["p50_ms"],
               result["api_during_restart"]["p99_ms"],
               result["api_during_restart"]["first_ok_after_restart_s"] or -1))
    harness.summary("backlog", lines, {"args": vars(arguments), "ledgers": results})


if __name__ == "__main__":
    harness.run(main)
