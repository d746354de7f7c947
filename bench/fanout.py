"""Benchmark 2: one firing fanned out to many slow receivers.

``--subscriptions`` (10,000) subscriptions to one registration, spread over
``--accounts`` subscriber accounts whose endpoints (one ``bench/receiver.py``
process, a path per account) answer every POST after ``--delay`` (0.1 s).
One trigger; the time to the last receiver ack is compared with the ideal
for the in-flight cap: ``ceil(subscriptions / max_in_flight) * delay``.
The daemon's RSS is sampled throughout (before the trigger = baseline).
As a reference, a bare treq loop (``--max-in-flight`` at a time, no
daemon) first POSTs ``--reference-posts`` times to the same receiver: its
rate is what the sender alone reaches against these receivers.
``--repeat N`` fires N times on the same daemon, each firing after its own
reference loop, and prints the medians.

    .venv/bin/python bench/fanout.py [--subscriptions 10000 --max-in-flight 100 --ledger sqlite --repeat 1]
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import harness
from harness import progress


async def main(reactor: Any) -> None:
    """Set up, then fire once per round and measure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscriptions", type=int, default=10000)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--max-in-flight", type=int, default=100)
    parser.add_argument("--ledger", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--reference-posts", type=int, default=5000,
                        help="POSTs of the bare treq loop run first as a reference")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of (bare treq loop, one firing) on the same daemon")
    arguments = parser.parse_args()
    directory = harness.workdir("fanout")
    receiver = harness.start_receiver(delay=arguments.delay)
    options = ["--max-in-flight", str(arguments.max_in_flight)]
    if arguments.ledger == "redis":
        options += ["--redis", harness.start_redis(directory).url]
    daemon = await harness.start_daemon(reactor, directory / "daemon", *options)
    owner, registration_id = await harness.make_fanout(
        daemon.api(), daemon.admin, lambda i: receiver.url("/slow/%d" % (i,)), arguments.accounts,
        arguments.subscriptions, concurrency=32)
    rounds = [await fan_out_round(reactor, arguments, daemon, receiver, owner, registration_id)
              for _ in range(arguments.repeat)]
    await daemon.terminate(timeout=30)
    ideal = rounds[0]["ideal_seconds"]
    lines = []
    for number, one in enumerate(rounds, 1):
        prefix = "round %d: " % (number,) if len(rounds) > 1 else ""
        lines += [
            "%s%d/%d deliveries in %.2fs; ideal for cap %d at %gs each: %.2fs -> %.3fx (target <= 1.3x)"
            % (prefix, one["deliveries"], arguments.subscriptions, one["seconds"], arguments.max_in_flight,
               arguments.delay, ideal, one["vs_ideal"]),
            "  reference: a bare treq loop (%d at a time, same receiver) would take %.2fs -> %.3fx ideal;"
            " the daemon took %.3fx the bare loop's time"
            % (arguments.max_in_flight, one["bare_treq_vs_ideal"] * ideal, one["bare_treq_vs_ideal"],
               one["vs_bare_treq"]),
            "  trigger answered 201 in %.3fs; daemon RSS %.0f MB before the trigger, peak %.0f MB (+%.0f MB);"
            " daemon CPU %.3f ms per delivery, %.0f %% of one core"
            % (one["trigger_seconds"], one["rss_before_mb"], one["rss_peak_mb"],
               one["rss_peak_mb"] - one["rss_before_mb"], one["daemon_cpu_ms_per_delivery"], one["core_share"] * 100),
        ]
    medians = {key: harness.median(one[key] for one in rounds)
               for key in ("vs_ideal", "bare_treq_vs_ideal", "vs_bare_treq")}
    if len(rounds) > 1:
        lines.append("median over %d rounds: %.3fx ideal (target <= 1.3x); bare treq loop %.3fx;"
                     " the daemon %.3fx the loop" % (len(rounds), medians["vs_ideal"],
                                                     medians["bare_treq_vs_ideal"], medians["vs_bare_treq"]))
    harness.summary("fanout", lines, {"args": vars(arguments), **rounds[0], "rounds": rounds, "medians": medians})


async def fan_out_round(reactor: Any, arguments: argparse.Namespace, daemon: Any, receiver: Any,
                        owner: dict[str, Any], registration_id: str) -> dict[str, Any]:
    """The bare treq loop as a reference, then one firing to every subscription; the figures."""
    progress("reference: a bare treq loop, %d at a time, %d POSTs to the same receiver",
             arguments.max_in_flight, arguments.reference_posts)
    reference = await harness.bare_treq_loop(reactor, receiver.url("/slow/reference"),
                                             arguments.reference_posts, arguments.max_in_flight)
    reference_rate = reference.per_s
    receiver.reset()
    pid = daemon.process.pid
    baseline = harness.rss_mb(pid)
    sampler = harness.RssSampler(reactor, pid, 0.1)
    progress("firing once to %d subscriptions (receivers answer after %gs, cap %d in flight)",
             arguments.subscriptions, arguments.delay, arguments.max_in_flight)
    cpu_before = harness.cpu_seconds(pid)
    fired = time.time()
    await daemon.api().trigger(owner, registration_id)
    answered = time.time() - fired
    posts, last = await harness.wait_for_posts(reactor, [receiver], arguments.subscriptions, arguments.timeout)
    peak = sampler.stop()
    cpu = harness.cpu_seconds(pid) - cpu_before
    elapsed = last - fired
    ideal = math.ceil(arguments.subscriptions / arguments.max_in_flight) * arguments.delay
    reference = arguments.subscriptions / reference_rate
    progress("%d deliveries in %.2fs = %.3fx ideal (the bare loop: %.3fx)", posts, elapsed, elapsed / ideal,
             reference / ideal)
    return {"deliveries": posts, "seconds": round(elapsed, 3), "ideal_seconds": ideal,
            "vs_ideal": round(elapsed / ideal, 3), "bare_treq_per_s": round(reference_rate, 1),
            "bare_treq_vs_ideal": round(reference / ideal, 3), "vs_bare_treq": round(elapsed / reference, 3),
            "trigger_seconds": round(answered, 3), "rss_before_mb": round(baseline, 1),
            "rss_peak_mb": round(peak, 1), "daemon_cpu_ms_per_delivery": round(1000 * cpu / max(1, posts), 3),
            "core_share": round(cpu / max(elapsed, 1e-9), 3)}


if __name__ == "__main__":
    harness.run(main)
