"""How fast SQLiteStore pages through a big table.

Fills a fresh SQLite file with ``--rows`` subscriptions (or registrations),
then times, through the store's own list method:

- the first page (start=0);
- a client walking deep pages one after another with ``next_start``;
- random deep jumps (no cursor known: the OFFSET fallback);
- the same deep pages filtered by one account;
- and, for comparison, a plain ``LIMIT ? OFFSET ?`` query at the same depth.

Prints progress lines, a summary and one JSON line.  Example::

    .venv/bin/python bench/store_pagination.py --rows 1000000
    .venv/bin/python bench/store_pagination.py --rows 20000 --table registrations
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import react

# Measure the checkout this file is in, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pywebhooks import records  # noqa: E402
from pywebhooks.records import Page  # noqa: E402
from pywebhooks.sqlitedb import SQLiteDatabase  # noqa: E402
from pywebhooks.store.sqlite import (  # noqa: E402
    OWNER_OF_REGISTRATION,
    SQLiteStore,
    bindings,
    insert_statement,
)

BATCH = 50_000


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to fill (1000000)")
    parser.add_argument("--table", choices=("subscriptions", "registrations"),
                        default="subscriptions")
    parser.add_argument("--accounts", type=int, default=100, help="owners of the rows (100)")
    parser.add_argument("--limit", type=int, default=100, help="page size (100)")
    parser.add_argument("--walk", type=int, default=200, help="sequential pages to walk (200)")
    parser.add_argument("--jumps", type=int, default=20, help="random deep jumps (20)")
    parser.add_argument("--path", help="SQLite file (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def progress(message: str, *args: Any) -> None:
    print(message % args, flush=True)


def summary(samples: list[float]) -> dict[str, float]:
    """Milliseconds: median, 95th percentile and maximum."""
    ms = sorted(s * 1000 for s in samples)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.95))], 3),
        "max_ms": round(ms[-1], 3),
        "n": len(ms),
    }


async def timed(call: Callable[[], Awaitable[Page]]) -> tuple[float, Page]:
    began = time.perf_counter()
    page = await call()
    return time.perf_counter() - began, page


async def fill(store: SQLiteStore, database: SQLiteDatabase, options: argparse.Namespace
               ) -> list[str]:
    """Insert the accounts, one registration each, then the rows in big transactions."""
    accounts: list[str] = []
    hooks: list[str] = []
    for n in range(options.accounts):
        account: dict[str, Any] = {
            "id": records.new_id(), "username": "user%d" % n,
            "endpoint": "http://127.0.0.1:9/", "api_key": "hash", "secret_key": "s" * 40,
            "is_admin": False, "failed_count": 0, "epoch": 0.0,
        }
        await store.insert_account(account)
        hook: dict[str, Any] = {
            "id": records.new_id(), "account_id": account["id"], "event": "e",
            "description": "d", "event_data": {"n": n}, "epoch": 0.0,
        }
        await store.insert_registration(hook)
        accounts.append(account["id"])
        hooks.append(hook["id"])

    if options.table == "subscriptions":
        statement = insert_statement("subscription", {"owner_id": OWNER_OF_REGISTRATION})

        def row(n: int) -> dict[str, Any]:
            return bindings("subscription", {
                "id": records.new_id(), "account_id": accounts[n % len(accounts)],
                "registration_id": hooks[(n * 7) % len(hooks)], "epoch": float(n),
            })
    else:
        statement = insert_statement("registration")

        def row(n: int) -> dict[str, Any]:
            return bindings("registration", {
                "id": records.new_id(), "account_id": accounts[n % len(accounts)],
                "event": "event%d" % (n % 10), "description": "registration %d" % n,
                "event_data": {"message": "hello", "n": n}, "epoch": float(n),
            })

    began = time.perf_counter()
    done = 0
    while done < options.rows:
        batch = [row(n) for n in range(done, min(done + BATCH, options.rows))]
        await database.run(lambda c: c.executemany(statement, batch))
        done += len(batch)
        progress("filled %d/%d %s (%.1f s)", done, options.rows, options.table,
                 time.perf_counter() - began)
    return accounts


async def run(reactor: Any, options: argparse.Namespace) -> None:
    rng = random.Random(options.seed)
    directory = None if options.path else tempfile.TemporaryDirectory()
    path = options.path or str(Path(directory.name if directory else ".") / "bench.sqlite3")
    database = SQLiteDatabase(reactor, path)
    store = SQLiteStore(database)
    await store.initialize(drop=True)
    try:
        fill_began = time.perf_counter()
        accounts = await fill(store, database, options)
        fill_seconds = time.perf_counter() - fill_began
        size = Path(path).stat().st_size
        progress("database %s: %.1f MB", path, size / 1e6)

        lister = store.list_subscriptions if options.table == "subscriptions" \
            else store.list_registrations
        limit, rows = options.limit, options.rows
        results: dict[str, Any] = {}

        first = [(await timed(lambda: lister(0, limit)))[0] for _ in range(20)]
        results["first_page"] = summary(first)
        progress("start=0: %s", results["first_page"])

        # A client walking from the middle to the next pages with next_start.
        middle = (rows // 2) // limit * limit
        jump, _ = await timed(lambda: lister(middle, limit))
        results["first_deep_jump_ms"] = round(jump * 1000, 3)
        walk, start = [], middle
        for _ in range(options.walk):
            start += limit
            seconds, page = await timed(lambda: lister(start, limit))
            walk.append(seconds)
            if not page.more:
                break
        results["sequential_deep_walk"] = summary(walk)
        results["sequential_walk_from"] = middle
        progress("jump to start=%d: %.3f ms; then %d pages with next_start: %s",
                 middle, jump * 1000, len(walk), results["sequential_deep_walk"])

        # The last pages of the table.
        tail_start = max(0, rows - options.walk * limit) // limit * limit
        await lister(tail_start, limit)
        tail, start = [], tail_start
        while True:
            seconds, page = await timed(lambda: lister(start, limit))
            tail.append(seconds)
            if not page.more:
                break
            start += limit
        results["tail_walk"] = summary(tail)
        progress("walk of the last %d pages: %s", len(tail), results["tail_walk"])

        jumps = []
        for _ in range(options.jumps):
            start = rng.randrange(rows // 4, rows - limit)
            seconds, page = await timed(lambda: lister(start, limit))
            assert len(page.rows) == limit
            jumps.append(seconds)
        results["random_deep_jump"] = summary(jumps)
        progress("%d random jumps (OFFSET fallback): %s", len(jumps), results["random_deep_jump"])

        # One account's rows (1/accounts of the table), deep in, walked sequentially.
        owner = accounts[rng.randrange(len(accounts))]
        per_account = rows // len(accounts)
        filtered_start = (per_account // 2) // limit * limit
        jump, _ = await timed(lambda: lister(filtered_start, limit, account_id=owner))
        filtered, start = [], filtered_start
        for _ in range(min(options.walk, max(1, per_account // limit // 2 - 1))):
            start += limit
            seconds, page = await timed(lambda: lister(start, limit, account_id=owner))
            filtered.append(seconds)
        results["filtered_first_jump_ms"] = round(jump * 1000, 3)
        results["filtered_sequential_walk"] = summary(filtered)
        progress("account filter (%d rows): jump to %d: %.3f ms; walk: %s", per_account,
                 filtered_start, jump * 1000, results["filtered_sequential_walk"])

        # The naive alternative, at the same depth, for comparison.
        naive_sql = "SELECT * FROM %s ORDER BY seq LIMIT ? OFFSET ?" % (options.table,)

        def naive(connection: sqlite3.Connection) -> float:
            began = time.perf_counter()
            connection.execute(naive_sql, (limit + 1, middle)).fetchall()
            return time.perf_counter() - began

        naive_times = [await database.run(naive) for _ in range(5)]
        results["naive_offset_at_middle"] = summary(naive_times)
        progress("plain LIMIT/OFFSET at start=%d (inside the db thread): %s",
                 middle, results["naive_offset_at_middle"])

        results.update(rows=rows, table=options.table, limit=limit,
                       fill_seconds=round(fill_seconds, 1), db_megabytes=round(size / 1e6, 1))
        progress("summary: %d %s, page of %d: first page %.2f ms, next_start walk %.2f ms"
                 " (p95 %.2f), random deep jump %.2f ms, plain OFFSET %.2f ms (medians)",
                 rows, options.table, limit, results["first_page"]["median_ms"],
                 results["sequential_deep_walk"]["median_ms"],
                 results["sequential_deep_walk"]["p95_ms"],
                 results["random_deep_jump"]["median_ms"],
                 results["naive_offset_at_middle"]["median_ms"])
        print(json.dumps(results, sort_keys=True), flush=True)
    finally:
        await store.close()
        if directory is not None:
            directory.cleanup()


def main(argv: list[str]) -> None:
    options = parse(argv)
    react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main(sys.argv[1:])
