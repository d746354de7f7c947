"""How steady this host runs Python: the same work, timed over and over.

No daemon: one process repeats a fixed piece of interpreter work (small
dicts and strings, as request handling makes) and times each piece in the
thread's CPU time.  On a steady machine every piece costs about the same.
On a shared VM some pieces cost several times the median, in episodes of
tens of milliseconds, and the VM still counts that time as this thread's
CPU: whatever runs then (a request of the daemon) is slowed as much.  The
benchmark prints how often and for how long that happens, first with the
pieces back to back, then with a sleep between them as a server between
requests::

    .venv/bin/python bench/host_noise.py [--seconds 10 --sleep-ms 10]

``interpreter_work`` and ``units_per_ms`` are also the fixed work of
``bench/bare_web.py --work-ms``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

#: Seconds of work ``units_per_ms`` times to set the work's speed.
UNITS_PER_MS_TRIAL = 0.5

#: A piece slower than this many medians is "slow".
SLOW_FACTOR = 2.0

#: Units in one timed piece (about 0.3 ms here).
UNITS_PER_PIECE = 30


def interpreter_work(units: int) -> int:
    """``units`` of ordinary interpreter work: small dicts of small strings."""
    built = 0
    for _ in range(units):
        table = {}
        for number in range(50):
            table[number] = str(number)
        built += len(table)
    return built


def units_per_ms(seconds: float) -> float:
    """How many units of ``interpreter_work`` this thread does per CPU millisecond,
    averaged over ``seconds`` of it (so including the host's slow moments)."""
    done = 0
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        interpreter_work(100)
        done += 100
    return done / (1000 * (time.thread_time() - started))


def timed_pieces(seconds: float, sleep: float) -> list[tuple[float, float]]:
    """``(wall start, CPU seconds)`` of each piece of work done for ``seconds``,
    sleeping ``sleep`` seconds between pieces."""
    pieces: list[tuple[float, float]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started, cpu = time.monotonic(), time.thread_time()
        interpreter_work(UNITS_PER_PIECE)
        pieces.append((started, time.thread_time() - cpu))
        if sleep:
            time.sleep(sleep)
    return pieces


def episodes(pieces: list[tuple[float, float]], slow: float, gap: float) -> list[tuple[float, float]]:
    """``(start, length)`` of each run of slow pieces, merging runs less than ``gap`` apart."""
    found: list[list[float]] = []
    for started, cpu in pieces:
        if cpu <= slow:
            continue
        if found and started - (found[-1][0] + found[-1][1]) <= gap:
            found[-1][1] = started + cpu - found[-1][0]
        else:
            found.append([started, cpu])
    return [(start, length) for start, length in found]


def describe(pieces: list[tuple[float, float]], seconds: float, sleep: float) -> dict[str, Any]:
    """The figures of one series of pieces."""
    # harness is imported here, not at the top: bare_web.py imports this
    # module for its work and must stay a bare twisted.web process.
    import harness

    costs = sorted(cpu for _, cpu in pieces)
    median = harness.percentile(costs, 0.5)
    slow = [cpu for cpu in costs if cpu > SLOW_FACTOR * median]
    found = episodes(pieces, SLOW_FACTOR * median, max(0.005, 2 * sleep))
    lengths = sorted(length for _, length in found)
    return {
        "sleep_ms": sleep * 1000,
        "pieces": len(costs),
        "median_ms": round(median * 1000, 3),
        "p99_ms": round(harness.percentile(costs, 0.99) * 1000, 3),
        "max_ms": round(costs[-1] * 1000, 3),
        "slow_share": round(len(slow) / len(costs), 4),
        "slowest_over_median": round(costs[-1] / median, 1),
        "cpu_share_in_slow_pieces": round(sum(slow) / sum(costs), 3),
        "episodes_per_s": round(len(found) / seconds, 2),
        "episode_ms_p50": round(harness.percentile(lengths, 0.5) * 1000, 1) if lengths else 0.0,
        "episode_ms_max": round(lengths[-1] * 1000, 1) if lengths else 0.0,
    }


def main() -> None:
    """Time the pieces back to back, then with sleeps; summarise."""
    import harness
    from harness import progress

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each series")
    parser.add_argument("--sleep-ms", type=float, default=10.0, help="sleep between pieces in the second series")
    arguments = parser.parse_args()
    series = []
    for sleep in (0.0, arguments.sleep_ms / 1000):
        progress("pieces of %d units for %gs, %g ms apart", UNITS_PER_PIECE, arguments.seconds, sleep * 1000)
        figures = describe(timed_pieces(arguments.seconds, sleep), arguments.seconds, sleep)
        progress("  median %.3f ms, p99 %.3f ms, max %.3f ms", figures["median_ms"], figures["p99_ms"],
                 figures["max_ms"])
        series.append(figures)
    lines = []
    for figures in series:
        lines.append(
            "%g ms apart: %d pieces, median %.3f ms CPU, p99 %.3f ms, max %.3f ms (%.0fx the median); "
            "%.2f%% of pieces over %gx the median, holding %.1f%% of the CPU; "
            "%.2f slow episodes/s, %.1f ms long (median), %.1f ms the longest"
            % (figures["sleep_ms"], figures["pieces"], figures["median_ms"], figures["p99_ms"], figures["max_ms"],
               figures["slowest_over_median"], 100 * figures["slow_share"], SLOW_FACTOR,
               100 * figures["cpu_share_in_slow_pieces"], figures["episodes_per_s"], figures["episode_ms_p50"],
               figures["episode_ms_max"]))
    harness.summary("host_noise", lines, {"args": vars(arguments), "series": series})


if __name__ == "__main__":
    main()
