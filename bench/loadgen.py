"""An open-loop HTTP load generator (asyncio, raw HTTP/1.1 keep-alive), one process.

Request ``i`` is due at ``start + i / rate`` whatever happened before (no
coordinated omission): its latency is counted from that due time to the end
of its answer.  Requests alternate through ``--request METHOD PATH`` (give
it several times for a mix); every request carries ``--header`` values.
Prints one JSON line: achieved rate, p50/p90/p99/max in ms (of all
requests, and in ``by_request`` of each ``--request``), statuses, and
``send_late_p99_ms``: how late this process itself started its requests
(its own stalls, which the latencies include).

    .venv/bin/python bench/loadgen.py --port 8081 --rate 500 --seconds 10 \\
        --header username:alice --header api-key:KEY \\
        --request POST /v1/webhook/triggered/ID --request GET '/v1/webhook/triggered?start=0&limit=10'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, raw: bytes) -> int:
        """Send ``raw``, read the whole answer; its status."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        lower = head.lower()
        at = lower.find(b"content-length:")
        if at >= 0:
            length = int(head[at + 15:lower.find(b"\r\n", at)])
        if length:
            await self.reader.readexactly(length)
        elif b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        return status


def build(method: str, path: str, headers: list[str], port: int) -> bytes:
    """The bytes of one request."""
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1:%d" % (port,)]
    lines += [header.replace(":", ": ", 1) for header in headers]
    if method in ("POST", "PATCH", "PUT"):
        lines += ["Content-Type: application/json", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def run(arguments: argparse.Namespace) -> dict[str, object]:
    """Send the load; the figures."""
    requests = [build(method, path, arguments.header, arguments.port) for method, path in arguments.request]
    idle: list[Connection] = []
    latencies: list[float] = []
    by_request: list[list[float]] = [[] for _ in requests]
    late: list[float] = []  # how long after its due time each request started
    statuses: Counter[int] = Counter()
    errors = [0]
    error_kinds: Counter[str] = Counter()
    total = int(arguments.rate * arguments.seconds)
    tasks = []

    async def one(index: int, due: float) -> None:
        late.append(time.perf_counter() - due)
        connection = idle.pop() if idle else None
        try:
            if connection is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", arguments.port)
                connection = Connection(reader, writer)
            status = await connection.request(requests[index % len(requests)])
            latency = time.perf_counter() - due
            latencies.append(latency)
            by_request[index % len(requests)].append(latency)
            statuses[status] += 1
            idle.append(connection)
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            errors[0] += 1
            error_kinds[type(error).__name__] += 1

    started = time.perf_counter()
    for index in range(total):
        due = started + index / arguments.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(index, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    def pct(values: list[float], fraction: float) -> float | None:
        ordered = sorted(values)
        if not ordered:
            return None
        return round(1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)

    def figures(values: list[float]) -> dict[str, float | None]:
        return {"p50_ms": pct(values, 0.5), "p90_ms": pct(values, 0.9), "p99_ms": pct(values, 0.99),
                "max_ms": pct(values, 1.0)}

    return {"target_rate": arguments.rate, "requests": len(latencies), "errors": errors[0],
            "achieved_rate": round(len(latencies) / elapsed, 1), **figures(latencies),
            "by_request": [{"request": "%s %s" % (method, path), "requests": len(values), **figures(values)}
                           for (method, path), values in zip(arguments.request, by_request)],
            "send_late_p99_ms": pct(late, 0.99), "statuses": dict(statuses), "error_kinds": dict(error_kinds)}


def main() -> None:
    """Parse, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--request", nargs=2, action="append", metavar=("METHOD", "PATH"), required=True)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
