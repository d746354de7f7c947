"""How fast the RethinkDB store serves deep pages of a 100,000-row list.

Starts its own rethinkdb on free loopback ports in a temporary directory
(the binary as the tests find it: ``$PYWEBHOOKS_RETHINKDB``, ``rethinkdb`` on
the PATH or ``/opt/rethinkdb/bin/rethinkdb``), fills one account's
subscriptions, then prints the time of:

- a cold jump straight to the last page (no remembered position: the server
  skips through the index),
- walking every page with ``next_start`` as a client does,
- jumps near positions the walk remembered.

Usage: ``.venv/bin/python bench/rethinkdb_pagination.py [ROWS] [LIMIT]``.
Figures are printed, never asserted.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.task import react

# Run from a checkout: the package and the test helpers come from this tree.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pywebhooks import records
from pywebhooks.store.rethinkdb import RethinkDBStore
from tests.support.rethinkdb_server import RethinkDBServer, rethinkdb_executable

IN_FLIGHT = 64


async def timed(label: str, action: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``action``, print how long it took, answer its result."""
    began = time.perf_counter()
    result = await action()
    print("%-58s %9.1f ms" % (label, (time.perf_counter() - began) * 1000))
    return result


async def fill(store: RethinkDBStore, rows: int) -> tuple[str, str]:
    """One account with ``rows`` subscriptions to its own registration."""
    owner = {
        "id": records.new_id(), "username": "bench", "endpoint": "http://127.0.0.1:9/",
        "api_key": "hash", "secret_key": "s" * 40, "is_admin": False, "failed_count": 0,
        "epoch": 0.0,
    }
    await store.insert_account(owner)
    hook = {"id": records.new_id(), "account_id": owner["id"], "event": "bench",
            "description": "", "event_data": {}, "epoch": 0.0}
    await store.insert_registration(hook)
    gate = DeferredSemaphore(IN_FLIGHT)

    def one(n: int) -> Deferred[None]:
        record = {"id": records.new_id(), "account_id": owner["id"],
                  "registration_id": hook["id"], "epoch": float(n)}
        return gate.run(lambda: Deferred.fromCoroutine(store.insert_subscription(record)))

    began = time.perf_counter()
    await gatherResults([one(n) for n in range(rows)])
    elapsed = time.perf_counter() - began
    print("inserted %d subscriptions in %.1f s (%.0f/s, %d in flight)"
          % (rows, elapsed, rows / elapsed, IN_FLIGHT))
    return owner["id"], hook["id"]


async def bench(reactor: Any, rows: int, limit: int) -> None:
    """Fill, then time cold jumps, a full walk and warm jumps."""
    directory = Path(tempfile.mkdtemp(prefix="pywebhooks-bench-"))
    server = RethinkDBServer(directory)
    server.start()
    try:
        store = RethinkDBStore(server.url("bench"), clock=reactor, timeout=120.0)
        await store.initialize(drop=True)
        owner_id, _ = await fill(store, rows)
        last = rows - limit

        cold = RethinkDBStore(server.url("bench"), clock=reactor, timeout=120.0)
        await cold.open()
        await timed("cold jump to start=%d, all subscriptions" % last,
                    lambda: cold.list_subscriptions(last, limit))
        await cold.close()
        cold = RethinkDBStore(server.url("bench"), clock=reactor, timeout=120.0)
        await cold.open()
        await timed("cold jump to start=%d, account_id filter" % last,
                    lambda: cold.list_subscriptions(last, limit, account_id=owner_id))
        await cold.close()

        async def walk() -> int:
            start, times = 0, []
            while True:
                began = time.perf_counter()
                page = await store.list_subscriptions(start, limit)
                times.append((time.perf_counter() - began, start))
                if not page.more:
                    break
                start += limit
            ordered = sorted(times)
            print("  %d pages: median %.1f ms; slowest %s" % (
                len(times), ordered[len(ordered) // 2][0] * 1000,
                ", ".join("%.1f ms at start=%d" % (took * 1000, at)
                          for took, at in reversed(ordered[-3:]))))
            return len(times)

        await timed("walk every page of %d with next_start" % limit, walk)
        await timed("warm page at start=%d (remembered)" % last,
                    lambda: store.list_subscriptions(last, limit))
        await timed("warm jump to start=%d (nearest remembered + %d)" % (last - 5, limit - 5),
                    lambda: store.list_subscriptions(last - 5, limit))
        await timed("visible_to page at start=%d (cold, multi index)" % last,
                    lambda: store.list_subscriptions(last, limit, visible_to=owner_id))
        await timed("count_subscriptions", lambda: store.count_subscriptions(owner_id))
        await store.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    """Parse ``[ROWS] [LIMIT]`` and run the benchmark on a fresh reactor."""
    if rethinkdb_executable() is None:
        sys.exit("no rethinkdb binary: set PYWEBHOOKS_RETHINKDB or put rethinkdb on PATH")
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    react(lambda reactor: Deferred.fromCoroutine(bench(reactor, rows, limit)))


if __name__ == "__main__":
    main()
