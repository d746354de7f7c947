"""Benchmark 1: signed deliveries per second, next to a bare treq loop and wrk.

In one run, against the same ``bench/receiver.py`` process:

1. a bare treq POST loop (``--max-in-flight`` concurrent, the daemon's pool
   settings, the same body and headers as a delivery, no signing, no ledger);
2. ``wrk`` POSTing the same body with as many connections;
3. one daemon per ledger (embedded SQLite, then Redis): ``--subscribers``
   subscriptions on one registration, fired ``--firings`` times; the rate is
   deliveries / (last receiver ack - first trigger sent);
4. two daemons sharing the Redis ledger and the SQLite store file, the
   firings split between them.  Each run also gives the daemon's CPU per
   delivery: all its threads, and its reactor thread alone (the database
   thread's share is the difference);
5. the bare treq loop again.  Each daemon run is compared with the better
   of the two bare loops around it (the target's figure), and its CPU per
   delivery with the mean of their CPU per POST (the cost side, which the
   host's swings move less than the rates).

``--repeat N`` does 3-5 N times (the bare loop of one round is the first of
the next) and prints the median of each ratio: the host's speed moves by
tens of percent within one run.

    .venv/bin/python bench/throughput.py [--subscribers 50 --firings 800 --max-in-flight 100 --repeat 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import harness
import rawhttp
from harness import progress
from tests.support.daemon import Daemon
from twisted.internet.defer import Deferred, gatherResults


def wrk_post(url: str, connections: int, seconds: float, directory: Path) -> dict[str, Any]:
    """``wrk`` POSTing the delivery body."""
    script = directory / "post.lua"
    body = json.dumps(harness.EVENT_DATA, sort_keys=True)
    script.write_text('wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n'
                      % (json.dumps(body),))
    return harness.run_wrk(url, connections, seconds, script=str(script))


async def fire(reactor: Any, daemons: list[Daemon], owner: dict[str, Any], registration_id: str,
               firings: int, concurrency: int) -> None:
    """Fire the registration ``firings`` times, split evenly between the
    daemons, over ``concurrency`` kept-open connections (``rawhttp``)."""
    path = "/v1/webhook/triggered/" + registration_id
    credentials = {"Content-Type": "application/json", "username": owner["username"], "api-key": owner["api_key"]}
    remaining = [firings // len(daemons) + (1 if index < firings % len(daemons) else 0)
                 for index in range(len(daemons))]

    async def worker(index: int) -> None:
        which = index % len(daemons)
        request = rawhttp.post_request(daemons[which].port, path, credentials)
        connection = await rawhttp.connect(reactor, daemons[which].port)
        try:
            while remaining[which] > 0:
                remaining[which] -= 1
                status, body = await connection.request(request)
                if status != 201:
                    raise RuntimeError("a trigger answered %d: %r" % (status, body[:300]))
        finally:
            connection.close()

    await gatherResults([Deferred.fromCoroutine(worker(index)) for index in range(concurrency)],
                        consumeErrors=True)


async def daemon_run(reactor: Any, arguments: argparse.Namespace, receiver: harness.ReceiverProcess,
                     directory: Path, label: str, daemons: int, redis_url: str | None) -> dict[str, Any]:
    """Start ``daemons`` daemons, set up the fan-out, fire, measure; the figures."""
    options = ["--max-in-flight", str(arguments.max_in_flight)]
    if redis_url:
        options += ["--redis", redis_url]
    first = await harness.start_daemon(reactor, directory / "d0", *options)
    started = [first]
    for index in range(1, daemons):
        started.append(await harness.start_daemon(reactor, directory / ("d%d" % (index,)), *options,
                                                  database=first.database))
    api = first.api()
    accounts = min(arguments.accounts, arguments.subscribers)
    owner, registration_id = await harness.make_fanout(
        api, first.admin, lambda i: receiver.url("/hook/%d" % (i,)), accounts, arguments.subscribers)
    receiver.reset()
    expected = arguments.firings * arguments.subscribers
    progress("%s: firing %d times x %d subscribers = %d deliveries", label, arguments.firings,
             arguments.subscribers, expected)
    first_trigger = time.time()
    cpu_before = [harness.cpu_seconds(daemon.process.pid) for daemon in started]  # type: ignore[union-attr]
    reactor_cpu_before = harness.main_thread_cpu_seconds(first.process.pid)  # type: ignore[union-attr]
    machine_before = harness.machine_cpu_seconds()
    sampler = harness.RssSampler(reactor, first.process.pid)  # type: ignore[union-attr]
    profile = directory / ("pyspy-%d.txt" % (daemons,))
    spy = harness.start_pyspy(first.process.pid, profile, 6) if arguments.profile else None  # type: ignore[union-attr]
    await fire(reactor, started, owner, registration_id, arguments.firings, arguments.trigger_concurrency)
    triggers_done = time.time() - first_trigger
    posts, last = await harness.wait_for_posts(reactor, [receiver], expected, arguments.timeout, label)
    peak = sampler.stop()
    cpu = sum(harness.cpu_seconds(daemon.process.pid) for daemon in started) - sum(cpu_before)  # type: ignore[union-attr]
    reactor_cpu = harness.main_thread_cpu_seconds(first.process.pid) - reactor_cpu_before  # type: ignore[union-attr]
    machine_busy = harness.machine_busy_share(machine_before)
    # the first daemon's reactor thread, per delivery it made (the posts split evenly)
    reactor_ms = 1000 * reactor_cpu / max(1, posts / daemons)
    if spy is not None:
        spy.wait()
        for share, name in harness.top_self_time(profile):
            progress("  profile %5.1f%% %s", 100 * share, name)
    elapsed = last - first_trigger
    rate = posts / elapsed if elapsed > 0 else 0.0
    progress("%s: %d deliveries in %.2fs = %.0f/s (triggers took %.2fs); daemon CPU %.3f ms per delivery,"
             " of which its reactor thread %.3f ms; the machine's cores %.0f %% busy", label, posts, elapsed,
             rate, triggers_done, 1000 * cpu / max(1, posts), reactor_ms, 100 * machine_busy)
    for daemon in started:
        await daemon.terminate(timeout=30)
    return {"deliveries": posts, "expected": expected, "seconds": round(elapsed, 3),
            "per_s": round(rate, 1), "rss_peak_mb": round(peak, 1),
            "daemon_cpu_ms_per_delivery": round(1000 * cpu / max(1, posts), 3),
            "reactor_cpu_ms_per_delivery": round(reactor_ms, 3), "machine_busy": round(machine_busy, 3)}


async def main(reactor: Any) -> None:
    """Run every measurement and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=50, help="subscriptions per firing")
    parser.add_argument("--accounts", type=int, default=10, help="subscriber accounts (endpoints)")
    # 40,000 deliveries: on the current machine two daemons take about 7 s
    # for them, so the start (the first fan-outs, before any delivery) and
    # the end (one daemon's last firings while the other is done) weigh
    # little; at 10,000 they left the cores 88-97 % busy instead of 98 %.
    parser.add_argument("--firings", type=int, default=800)
    parser.add_argument("--max-in-flight", type=int, default=100, help="daemon cap = bare loop concurrency")
    parser.add_argument("--trigger-concurrency", type=int, default=4)
    parser.add_argument("--wrk-seconds", type=float, default=5)
    parser.add_argument("--ledgers", default="sqlite,redis", help="comma-separated: sqlite, redis")
    parser.add_argument("--no-two-daemons", action="store_true")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--profile", action="store_true", help="py-spy the (first) daemon while it delivers")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of daemon runs, each between bare loops")
    arguments = parser.parse_args()
    directory = harness.workdir("throughput")
    receiver = harness.start_receiver()
    url = receiver.url("/bare")
    count = arguments.firings * arguments.subscribers

    bare_cpu: list[float] = []

    async def bare_loop() -> float:
        progress("bare treq loop: %d POSTs, %d concurrent", count, arguments.max_in_flight)
        receiver.reset()
        figures = await harness.bare_treq_loop(reactor, url, count, arguments.max_in_flight)
        progress("bare treq loop: %.0f/s", figures.per_s)
        bare_cpu.append(figures.cpu_ms_per_post)
        return figures.per_s

    bare = [await bare_loop()]
    progress("wrk: %d connections, %gs", arguments.max_in_flight, arguments.wrk_seconds)
    wrk = wrk_post(url, arguments.max_in_flight, arguments.wrk_seconds, directory)
    progress("wrk: %.0f/s", wrk.get("requests_per_s", 0))

    ledgers = [name.strip() for name in arguments.ledgers.split(",") if name.strip()]
    redis = harness.start_redis(directory) if "redis" in ledgers else None
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(1, arguments.repeat + 1):
        runs: dict[str, dict[str, Any]] = {}
        for ledger in ledgers:
            redis_url = redis.url if ledger == "redis" and redis is not None else None
            place = directory / ("round%d" % (number,))
            runs[ledger] = await daemon_run(reactor, arguments, receiver, place / ledger, ledger, 1, redis_url)
            if ledger == "redis" and not arguments.no_two_daemons:
                # (the one-daemon run left the Redis ledger empty: everything was delivered)
                runs["redis_x2"] = await daemon_run(reactor, arguments, receiver, place / "redis2",
                                                    "2 daemons, redis", 2, redis_url)
        bare.append(await bare_loop())
        reference = max(bare[-2:])
        # The cost side, which the host's speed swings move less than rates:
        # the daemons' CPU per delivery against the bare loop's per POST.
        reference_cpu = statistics.mean(bare_cpu[-2:])
        for run in runs.values():
            run["vs_bare"] = round(run["per_s"] / reference, 3)
            run["cpu_vs_bare"] = round(run["daemon_cpu_ms_per_delivery"] / reference_cpu, 3)
        if "redis" in runs and "redis_x2" in runs:
            one, two = runs["redis"], runs["redis_x2"]
            two["vs_one_daemon"] = round(two["per_s"] / one["per_s"], 3)
            # What sharing costs each delivery (1.0: nothing), apart from
            # the cores the rest of the machine leaves the daemons.
            two["cpu_vs_one_daemon"] = round(two["daemon_cpu_ms_per_delivery"]
                                             / one["daemon_cpu_ms_per_delivery"], 3)
        rounds.append(runs)
    harness.summary("throughput", summary_lines(arguments, bare, wrk, rounds), {
        "args": vars(arguments), "bare_treq_per_s": [round(b, 1) for b in bare],
        "wrk_per_s": wrk.get("requests_per_s"), "runs": rounds[0], "rounds": rounds,
        "median_vs_bare": {name: harness.median([runs[name]["vs_bare"] for runs in rounds]) for name in rounds[0]},
        "median_cpu_vs_bare": {name: harness.median([runs[name]["cpu_vs_bare"] for runs in rounds])
                               for name in rounds[0]},
        "bare_cpu_ms_per_post": [round(cpu, 3) for cpu in bare_cpu],
        "two_daemons_vs_one": two_daemon_median(rounds, "vs_one_daemon"),
        "two_daemons_cpu_vs_one": two_daemon_median(rounds, "cpu_vs_one_daemon"),
    })


def two_daemon_median(rounds: list[dict[str, dict[str, Any]]], key: str) -> float | None:
    """The median of a two-daemon figure over the rounds that have it."""
    return harness.median([runs["redis_x2"][key] for runs in rounds if key in runs.get("redis_x2", {})])


def summary_lines(arguments: argparse.Namespace, bare: list[float], wrk: dict[str, Any],
                  rounds: list[dict[str, dict[str, Any]]]) -> list[str]:
    """The human summary: each round against the bare loops around it, then the medians."""
    lines = ["bare treq loops: %s/s" % (", ".join("%.0f" % (rate,) for rate in bare),),
             "wrk (C, %d conns): %.0f/s" % (arguments.max_in_flight, wrk.get("requests_per_s", 0))]
    for number, runs in enumerate(rounds, 1):
        prefix = "round %d: " % (number,) if len(rounds) > 1 else ""
        for name, run in runs.items():
            lines.append("%s%-9s %6.0f deliveries/s  = %5.1f%% of bare treq (target 90%%)  peak RSS %.0f MB;"
                         " CPU per delivery %.2fx the bare loop's per POST"
                         % (prefix, name, run["per_s"], 100 * run["vs_bare"], run["rss_peak_mb"],
                            run["cpu_vs_bare"]))
        if "vs_one_daemon" in runs.get("redis_x2", {}):
            lines.append("%stwo daemons / one daemon (redis): %.2fx (target 1.7x); their CPU per delivery"
                         " %.2fx one daemon's; the machine's cores %.0f %% busy (one daemon: %.0f %%)"
                         % (prefix, runs["redis_x2"]["vs_one_daemon"], runs["redis_x2"]["cpu_vs_one_daemon"],
                            100 * runs["redis_x2"]["machine_busy"], 100 * runs["redis"]["machine_busy"]))
    if len(rounds) > 1:
        for name in rounds[0]:
            lines.append("median over %d rounds, %s: %.1f%% of bare treq; CPU per delivery %.2fx"
                         % (len(rounds), name, 100 * (harness.median([runs[name]["vs_bare"] for runs in rounds]) or 0),
                            harness.median([runs[name]["cpu_vs_bare"] for runs in rounds]) or 0))
        two = two_daemon_median(rounds, "vs_one_daemon")
        if two is not None:
            lines.append("median over %d rounds, two daemons / one daemon: %.2fx; their CPU per delivery %.2fx"
                         % (len(rounds), two, two_daemon_median(rounds, "cpu_vs_one_daemon") or 0))
    return lines


if __name__ == "__main__":
    harness.run(main)
