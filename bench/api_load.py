"""Benchmark 4: authenticated API requests under load (triggers and lists).

One daemon, a fast receiver, an owner account with one registration and
``--subscribers`` subscriptions (every trigger makes that many deliveries
while the load runs).  ``bench/loadgen.py`` (a separate open-loop process)
sends, alternately, ``POST /v1/webhook/triggered/<id>`` and
``GET /v1/webhook/triggered?start=0&limit=10``, both with ``username`` and
``api-key``:

1. the floor: the same load generator at ``--rate`` against ``bench/bare_web.py``,
   a bare twisted.web resource answering a list-sized JSON body (no routing,
   authentication, database or deliveries);
2. at ``--rate`` (500 req/s) for ``--seconds``: p50/p99 against the 20 ms
   target, triggers and lists also apart, and the daemon's CPU per request
   (all threads, and its reactor thread alone);
3. right after it, the floor at the daemon's cost: ``bare_web.py --work-ms``
   doing enough interpreter work that each request costs what that run
   cost the daemon's reactor thread, at the same rate.  Its tail is what
   that much work per request alone gives on this host (slow episodes of
   the host included, see ``bench/host_noise.py``); the daemon's p99 over
   it is the tail that is ours.  ``--repeat N`` does 2 and 3 N times and
   prints the median of that ratio (the host is noisy);
4. at rising rates (``--steps``) for ``--step-seconds`` each: the max
   sustained rate = the highest rate achieved (>= 95 %) with p99 <= 20 ms;
5. ``wrk`` (closed loop, ``--wrk-connections``) on the list alone, for its maximum.

    .venv/bin/python bench/api_load.py [--rate 500 --seconds 10 --repeat 1 --ledger sqlite --daemon-args '...']
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from typing import Any

import harness
from harness import progress

TARGET_P99_MS = 20.0


def floor(directory: Any, account: dict[str, Any], registration_id: str, rate: float, seconds: float,
          work_ms: float = 0.0) -> dict[str, Any]:
    """``bench/bare_web.py`` (doing ``work_ms`` of work per request) under the
    same load as the daemon; the load generator's figures and its CPU per request."""
    bare = harness.ListeningProcess("bare_web.py", "--log", str(directory / "bare_web.log"),
                                    "--work-ms", "%.3f" % (work_ms,))
    cpu_before = harness.cpu_seconds(bare.process.pid)
    figures = loadgen(bare.port, account, registration_id, rate, seconds)
    figures["cpu_ms_per_request"] = round(
        1000 * (harness.cpu_seconds(bare.process.pid) - cpu_before) / max(1, figures["requests"]), 3)
    figures["work_ms"] = work_ms
    bare.stop()
    return figures


def loadgen(port: int, account: dict[str, Any], registration_id: str, rate: float, seconds: float) -> dict[str, Any]:
    """Run ``bench/loadgen.py`` once (blocking); its figures."""
    command = [sys.executable, str(harness.REPO_ROOT / "bench" / "loadgen.py"), "--port", str(port),
               "--rate", str(rate), "--seconds", str(seconds),
               "--header", "username:" + account["username"], "--header", "api-key:" + account["api_key"],
               "--request", "POST", "/v1/webhook/triggered/" + registration_id,
               "--request", "GET", "/v1/webhook/triggered?start=0&limit=10"]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if output.returncode != 0:
        raise RuntimeError(output.stderr)
    return dict(json.loads(output.stdout.strip().splitlines()[-1]))


async def main(reactor: Any) -> None:
    """Set up, load, step, summarise."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--steps", default="100,250,500,750,1000")
    parser.add_argument("--step-seconds", type=float, default=5)
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--wrk-connections", type=int, default=10)
    parser.add_argument("--wrk-seconds", type=float, default=5)
    parser.add_argument("--ledger", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon during the main run")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the main run, each followed by its floor at the daemon's cost")
    parser.add_argument("--daemon-args", default="",
                        help="more options for the daemon, e.g. '--access-log off'")
    arguments = parser.parse_args()
    directory = harness.workdir("api")
    receiver = harness.start_receiver()
    options = shlex.split(arguments.daemon_args)
    if arguments.ledger == "redis":
        options += ["--redis", harness.start_redis(directory).url]
    daemon = await harness.start_daemon(reactor, directory / "daemon", *options)
    api = daemon.api()
    owner, registration_id = await harness.make_fanout(
        api, daemon.admin, lambda i: receiver.url("/hook/%d" % (i,)), 1, arguments.subscribers)
    pid = daemon.process.pid  # type: ignore[union-attr]

    progress("floor: bare twisted.web at %g req/s for %gs", arguments.rate, arguments.seconds)
    bare = floor(directory, owner, registration_id, arguments.rate, arguments.seconds)
    rounds = []
    for number in range(1, arguments.repeat + 1):
        progress("loadgen: %g req/s for %gs (trigger + list, authenticated), round %d of %d",
                 arguments.rate, arguments.seconds, number, arguments.repeat)
        profiled = arguments.profile and number == 1
        main_run = await measured_run(reactor, daemon, owner, registration_id, arguments, directory, profiled)
        work_ms = round(max(0.0, main_run["reactor_cpu_ms_per_request"] - bare["cpu_ms_per_request"]), 3)
        progress("floor at the daemon's cost: bare twisted.web doing %.2f ms more work per request", work_ms)
        costly = floor(directory, owner, registration_id, arguments.rate, arguments.seconds, work_ms)
        excess = main_run["p99_ms"] / costly["p99_ms"] if main_run["p99_ms"] and costly["p99_ms"] else None
        rounds.append({"main": main_run, "bare_web_at_daemon_cost": costly,
                       "p99_over_floor_at_daemon_cost": round(excess, 2) if excess is not None else None})
        progress("  daemon p99 %s ms, floor at its cost p99 %s ms", main_run["p99_ms"], costly["p99_ms"])

    steps = []
    best = 0.0
    for rate in [float(step) for step in arguments.steps.split(",") if step]:
        result = loadgen(daemon.port, owner, registration_id, rate, arguments.step_seconds)
        steps.append(result)
        ok = result["p99_ms"] is not None and result["p99_ms"] <= TARGET_P99_MS \
            and result["achieved_rate"] >= 0.95 * rate and not result["errors"]
        progress("step %g req/s: achieved %s, p50 %s ms, p99 %s ms%s", rate, result["achieved_rate"],
                 result["p50_ms"], result["p99_ms"], "" if ok else "  (over target)")
        if ok:
            best = max(best, rate)
        else:
            break

    progress("wrk on the list endpoint: %d connections, %gs", arguments.wrk_connections, arguments.wrk_seconds)
    wrk = harness.run_wrk(daemon.url("/v1/webhook/triggered?start=0&limit=10"), arguments.wrk_connections,
                          arguments.wrk_seconds, headers={"username": owner["username"], "api-key": owner["api_key"]})
    rss = harness.rss_mb(pid)
    await daemon.terminate(timeout=30)
    wrk.pop("output", None)

    lines = []
    for number, one in enumerate(rounds, 1):
        main_run, costly = one["main"], one["bare_web_at_daemon_cost"]
        lines += [
            "round %d at %g req/s (50%% trigger, 50%% list, auth): achieved %s req/s, p50 %s ms, p99 %s ms "
            "(target p99 <= %g ms), max %s ms, statuses %s; the load generator's own lateness p99 %s ms"
            % (number, arguments.rate, main_run["achieved_rate"], main_run["p50_ms"], main_run["p99_ms"],
               TARGET_P99_MS, main_run["max_ms"], main_run["statuses"], main_run["send_late_p99_ms"]),
            "  of which triggers: p50 %s ms, p99 %s ms; lists: p50 %s ms, p99 %s ms"
            % (main_run["by_request"][0]["p50_ms"], main_run["by_request"][0]["p99_ms"],
               main_run["by_request"][1]["p50_ms"], main_run["by_request"][1]["p99_ms"]),
            "  daemon CPU per request: %.2f ms (its deliveries included), its reactor thread %.2f ms"
            % (main_run["cpu_ms_per_request"], main_run["reactor_cpu_ms_per_request"]),
            "  floor at the daemon's cost (bare twisted.web, %.2f ms CPU per request): p50 %s ms, p99 %s ms; "
            "the daemon's p99 is %s that"
            % (costly["cpu_ms_per_request"], costly["p50_ms"], costly["p99_ms"],
               "%sx" % (one["p99_over_floor_at_daemon_cost"],)
               if one["p99_over_floor_at_daemon_cost"] is not None else "n/a"),
        ]
    median = harness.median(one["p99_over_floor_at_daemon_cost"] for one in rounds
                            if one["p99_over_floor_at_daemon_cost"] is not None)
    if len(rounds) > 1:
        lines.append("median over %d rounds of the daemon's p99 / the floor at its cost: %s"
                     % (len(rounds), "%sx" % (median,) if median is not None else "n/a"))
    if steps:
        lines.append("max sustained rate with p99 <= %g ms: %g req/s (steps: %s)"
                     % (TARGET_P99_MS, best, ", ".join("%g->p99 %s" % (s["target_rate"], s["p99_ms"]) for s in steps)))
    lines += [
        "wrk, list only, %d connections: %s req/s, p50 %s ms, p99 %s ms"
        % (arguments.wrk_connections, wrk.get("requests_per_s"), wrk.get("p50_ms"), wrk.get("p99_ms")),
        "floor, bare twisted.web at %g req/s: p50 %s ms, p99 %s ms, CPU per request %.2f ms"
        % (arguments.rate, bare["p50_ms"], bare["p99_ms"], bare["cpu_ms_per_request"]),
        "daemon RSS at the end: %.0f MB" % (rss,),
    ]
    first = rounds[0]
    harness.summary("api_load", lines, {
        "args": vars(arguments), "main": first["main"],
        "cpu_ms_per_request": first["main"]["cpu_ms_per_request"],
        "reactor_cpu_ms_per_request": first["main"]["reactor_cpu_ms_per_request"],
        "bare_web_at_daemon_cost": first["bare_web_at_daemon_cost"],
        "p99_over_floor_at_daemon_cost": first["p99_over_floor_at_daemon_cost"],
        "rounds": rounds, "median_p99_over_floor_at_daemon_cost": median,
        "steps": steps, "max_sustained_rate": best, "wrk_list": wrk, "bare_web": bare, "rss_mb": round(rss, 1)})


async def measured_run(reactor: Any, daemon: Any, owner: dict[str, Any], registration_id: str,
                       arguments: argparse.Namespace, directory: Any, profiled: bool) -> dict[str, Any]:
    """One load generator run against the daemon; its figures with the
    daemon's CPU per request (all threads, and its reactor thread)."""
    pid = daemon.process.pid
    profile = directory / "pyspy.txt"
    spy = harness.start_pyspy(pid, profile, arguments.seconds) if profiled else None
    cpu_before = harness.cpu_seconds(pid)
    reactor_cpu_before = harness.main_thread_cpu_seconds(pid)
    main_run = loadgen(daemon.port, owner, registration_id, arguments.rate, arguments.seconds)
    if spy is not None:
        spy.wait()
        for share, name in harness.top_self_time(profile):
            progress("  profile %5.1f%% %s", 100 * share, name)
    await harness.sleep(reactor, 2)  # let the deliveries of this run finish
    requests = max(1, main_run["requests"])
    main_run["cpu_ms_per_request"] = round(1000 * (harness.cpu_seconds(pid) - cpu_before) / requests, 3)
    main_run["reactor_cpu_ms_per_request"] = round(
        1000 * (harness.main_thread_cpu_seconds(pid) - reactor_cpu_before) / requests, 3)
    progress("daemon CPU per request (its deliveries included): %.2f ms, of which its reactor thread %.2f ms",
             main_run["cpu_ms_per_request"], main_run["reactor_cpu_ms_per_request"])
    progress("at %g req/s: achieved %s, p50 %s ms, p99 %s ms, statuses %s", arguments.rate,
             main_run["achieved_rate"], main_run["p50_ms"], main_run["p99_ms"], main_run["statuses"])
    progress("  %s", ", ".join("%s p50 %s ms, p99 %s ms" % (kind, figures["p50_ms"], figures["p99_ms"])
                               for kind, figures in zip(("triggers", "lists"), main_run["by_request"])))
    return main_run


if __name__ == "__main__":
    harness.run(main)
