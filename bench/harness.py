"""What the daemon benchmarks share: processes, set-up through the API, output.

Every benchmark runs on the Twisted reactor (``run(main)``) and starts what
it needs as child processes on loopback:

- ``start_receiver(...)``: ``bench/receiver.py`` (echo, counts POSTs);
- ``ListeningProcess("bare_web.py", ...)``: any ``bench/`` server script;
- ``start_redis(directory)``: a real redis-server (``tests.support.redis_server``);
- ``start_daemon(reactor, directory, ...)``: ``twist pywebhooks``
  (``tests.support.daemon.Daemon``: ``python -m twisted pywebhooks ...``).

Output: ``progress()`` lines on stderr while it runs, ``summary()`` prints
the human summary and one ``BENCH-JSON {...}`` line on stdout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import psutil  # noqa: E402
from treq.client import HTTPClient  # noqa: E402
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults  # noqa: E402
from twisted.internet.task import deferLater, react  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

from tests.support.daemon import ApiClient, Daemon  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

from pywebhooks.delivery.signing import signature_headers  # noqa: E402

_STARTED = time.monotonic()
_CHILDREN: list[Callable[[], None]] = []


def progress(message: str, *args: Any) -> None:
    """One progress line on stderr, with the seconds since the start."""
    text = message % args if args else message
    sys.stderr.write("[%7.2fs] %s\n" % (time.monotonic() - _STARTED, text))
    sys.stderr.flush()


def summary(name: str, lines: list[str], figures: dict[str, Any]) -> None:
    """The final summary and its machine-readable JSON line on stdout."""
    print("== %s ==" % (name,))
    for line in lines:
        print("  " + line)
    print("BENCH-JSON " + json.dumps({"bench": name, **figures}, sort_keys=True))
    sys.stdout.flush()


def run(main: Callable[[Any], Awaitable[Any]]) -> None:
    """Run ``main(reactor)`` on the reactor; kill every child process at the end."""
    def start(reactor: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(main(reactor))
    try:
        react(start)
    finally:
        cleanup()


def cleanup() -> None:
    """Stop every child process started here (newest first)."""
    while _CHILDREN:
        stop = _CHILDREN.pop()
        with contextlib.suppress(Exception):
            stop()


def workdir(prefix: str) -> Path:
    """A fresh temporary directory for one benchmark's files."""
    return Path(tempfile.mkdtemp(prefix="pywebhooks-bench-%s-" % (prefix,)))


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    """Wait ``seconds`` on the reactor."""
    return deferLater(reactor, seconds, lambda: None)


# -- child processes ---------------------------------------------------------


class ListeningProcess:
    """A ``bench/`` server script that prints ``listening PORT`` once ready."""

    def __init__(self, script: str, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "bench" / script), "--port", "0", *options],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening "):
            raise RuntimeError("%s did not start: %r" % (script, line))
        self.port = int(line.split()[1])
        _CHILDREN.append(self.stop)

    def stop(self) -> None:
        """Kill it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class ReceiverProcess(ListeningProcess):
    """A ``bench/receiver.py`` process."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        super().__init__("receiver.py", "--status", str(status), "--delay", str(delay))

    def url(self, path: str = "/hook") -> str:
        """An endpoint URL on this receiver."""
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stats(self) -> dict[str, Any]:
        """``{"posts", "bytes", "first", "last"}`` (a blocking loopback call)."""
        with urllib.request.urlopen(self.url("/_stats"), timeout=10) as reply:
            return dict(json.load(reply))

    def reset(self) -> None:
        """Zero the counters."""
        with urllib.request.urlopen(self.url("/_reset"), timeout=10) as reply:
            reply.read()


def start_receiver(status: int = 200, delay: float = 0.0) -> ReceiverProcess:
    """A running receiver process on a free loopback port."""
    return ReceiverProcess(status, delay)


def start_redis(directory: Path) -> RedisServer:
    """A running redis-server (append-only, like the tests) in ``directory``."""
    server = RedisServer(directory / "redis")
    server.start()
    _CHILDREN.append(server.stop)
    return server


async def start_daemon(reactor: Any, directory: Path, *options: str, database: str | None = None) -> Daemon:
    """A running ``twist pywebhooks`` in ``directory`` (``database``: share a store file)."""
    daemon = Daemon(reactor, directory, *options)
    daemon.twist_options = ["--log-format=text", "--log-file=%s" % (directory / "log.txt",)]
    if database is not None:
        daemon.database = database
    prelude = os.environ.get("BENCH_DAEMON_PRELUDE", "")
    interval = os.environ.get("BENCH_SWITCH_INTERVAL")
    if interval:
        prelude += "; import sys; sys.setswitchinterval(%s)" % (float(interval),)
    if prelude:
        # Experiment: run Python code (GIL switch interval, gc settings...)
        # in the daemon's process before twist starts.
        plain = daemon.command

        def command(*extra: str) -> list[str]:
            line = plain(*extra)
            return [line[0], "-c", "%s; import runpy, sys; sys.argv[0] = 'twisted'; "
                    "runpy.run_module('twisted', run_name='__main__', alter_sys=True)" % (prelude.strip("; "),),
                    *line[3:]]
        daemon.command = command  # type: ignore[method-assign]
    await daemon.start(timeout=60)
    _CHILDREN.append(daemon.kill_now)
    return daemon


def start_pyspy(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes]:
    """``py-spy record`` of process ``pid`` for ``seconds`` into ``output`` (collapsed stacks).

    Only the thread holding the GIL is sampled: that is what bounds one
    Python process, whatever its other threads wait for."""
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--duration",
               str(max(1, int(seconds))), "--format", "raw", "--output", str(output), "--nonblocking",
               "--gil", "--rate", "250"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_self_time(collapsed: Path, count: int = 25) -> list[tuple[float, str]]:
    """The functions with the most samples on top of the stack (share, name) in a py-spy raw file."""
    totals: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    grand = 0
    for line in collapsed.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        samples = int(number)
        grand += samples
        frames = stack.split(";")
        totals[frames[-1]] = totals.get(frames[-1], 0) + samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:count]
    return [(samples / max(1, grand), "self %s (incl %.0f%%)" % (name, 100 * inclusive[name] / max(1, grand)))
            for name, samples in ranked]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB."""
    return psutil.Process(pid).memory_info().rss / 2 ** 20


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, every core summed."""
    times = psutil.cpu_times()
    total = sum(times)
    return total - times.idle - getattr(times, "iowait", 0.0), total


def machine_busy_share(before: tuple[float, float]) -> float:
    """How busy the machine's cores were since ``machine_cpu_seconds()`` gave ``before`` (0-1)."""
    busy, total = machine_cpu_seconds()
    return (busy - before[0]) / max(1e-9, total - before[1])


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by the main thread of process
    ``pid``: in a Twisted program, the reactor's."""
    for thread in psutil.Process(pid).threads():
        if thread.id == pid:
            return thread.user_time + thread.system_time
    raise RuntimeError("process %d has no main thread" % (pid,))


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds; keeps the peak."""

    def __init__(self, reactor: Any, pid: int, interval: float = 0.25) -> None:
        from twisted.internet.task import LoopingCall

        self.pid = pid
        self.peak = 0.0
        self.samples: list[float] = []
        self._loop = LoopingCall(self.sample)
        self._loop.clock = reactor
        self._loop.start(interval)

    def sample(self) -> None:
        """Take one sample."""
        with contextlib.suppress(psutil.Error):
            value = rss_mb(self.pid)
            self.samples.append(value)
            self.peak = max(self.peak, value)

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        if self._loop.running:
            self._loop.stop()
        return self.peak


# -- the reference sender -------------------------------------------------------

#: The event data every benchmark fires.
EVENT_DATA = {"order": 12345, "items": ["a", "b", "c"], "note": "x" * 200}


@dataclasses.dataclass(frozen=True)
class LoopFigures:
    """What a bare treq loop did: POSTs per second, and this process's CPU per POST."""

    per_s: float
    cpu_ms_per_post: float


async def bare_treq_loop(reactor: Any, url: str, count: int, concurrency: int) -> LoopFigures:
    """POST ``count`` times with ``concurrency`` workers on one pool."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max(2, concurrency)
    client = HTTPClient(Agent(reactor, pool=pool))
    body = json.dumps(EVENT_DATA, sort_keys=True)
    headers = signature_headers("s" * 40, "0" * 36, int(time.time()), body, "bench.event")
    data = body.encode()
    remaining = [count]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            response = await client.post(url, data=data, headers=headers, allow_redirects=False,
                                         unbuffered=True, reactor=reactor, timeout=10)
            await response.content()
            if response.code != 200:
                raise RuntimeError("receiver answered %d" % (response.code,))

    started = time.monotonic()
    cpu_started = time.process_time()
    machine_before = machine_cpu_seconds()
    await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(concurrency)], consumeErrors=True)
    elapsed = time.monotonic() - started
    cpu_ms = 1000 * (time.process_time() - cpu_started) / count
    progress("bare treq loop: %.3f ms CPU per POST; the machine's cores %.0f %% busy",
             cpu_ms, 100 * machine_busy_share(machine_before))
    await pool.closeCachedConnections()
    return LoopFigures(count / elapsed, cpu_ms)


# -- set-up through the API ----------------------------------------------------


async def bounded(concurrency: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the coroutine functions ``jobs`` at most ``concurrency`` at a time."""
    semaphore = DeferredSemaphore(concurrency)
    return list(await gatherResults(
        [semaphore.run(lambda job=job: Deferred.fromCoroutine(job())) for job in jobs],
        consumeErrors=True,
    ))


async def make_fanout(api: ApiClient, admin: dict[str, str], endpoint_for: Callable[[int], str],
                      accounts: int, subscriptions: int, concurrency: int = 20) -> tuple[dict[str, Any], str]:
    """An owner account with one registration and ``subscriptions`` subscriptions
    to it, spread over ``accounts`` subscriber accounts (duplicates are allowed);
    ``(owner, registration_id)``. Everything goes through the HTTP API."""
    owner = await api.create_account("bench-owner", endpoint_for(-1))
    registration = await api.register(owner, "bench.event", EVENT_DATA)
    made = await bounded(concurrency, [
        (lambda i=i: api.create_account("bench-sub-%d" % (i,), endpoint_for(i)))
        for i in range(accounts)
    ])
    progress("created %d subscriber accounts", len(made))
    jobs = [(lambda a=made[i % accounts]: api.subscribe(a, registration["id"])) for i in range(subscriptions)]
    done = 0
    for start in range(0, len(jobs), 1000):
        await bounded(concurrency, jobs[start:start + 1000])
        done += len(jobs[start:start + 1000])
        progress("subscribed %d/%d", done, subscriptions)
    return owner, registration["id"]


async def wait_for_posts(reactor: Any, receivers: list[ReceiverProcess], expected: int,
                         timeout: float, label: str = "posts") -> tuple[int, float]:
    """Poll the receivers until they have ``expected`` POSTs in all (or ``timeout``);
    ``(posts, last POST wall time)``."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        stats = [receiver.stats() for receiver in receivers]
        posts = sum(item["posts"] for item in stats)
        last = max(item["last"] for item in stats)
        if posts >= expected or time.monotonic() > deadline:
            return posts, last
        if time.monotonic() - last_report > 1.0:
            progress("%s: %d/%d", label, posts, expected)
            last_report = time.monotonic()
        await sleep(reactor, 0.05)


def median(values: Iterable[float]) -> float | None:
    """The median of ``values`` (the mean of the middle two of an even count),
    rounded to 3 places; None if there are none.  The summary of ``--repeat`` rounds."""
    values = list(values)
    return round(statistics.median(values), 3) if values else None


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as took: ...``; ``took[0]`` = seconds."""
    took: list[float] = []
    started = time.monotonic()
    try:
        yield took
    finally:
        took.append(time.monotonic() - started)


def run_wrk(url: str, connections: int, seconds: float, threads: int = 1, script: str | None = None,
            headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``wrk`` (blocking) and return ``{"requests_per_s", "p50_ms", "p99_ms", "output"}``."""
    command = ["wrk", "-t%d" % (threads,), "-c%d" % (connections,), "-d%ds" % (max(1, int(seconds)),),
               "--latency"]
    for name, value in (headers or {}).items():
        command += ["-H", "%s: %s" % (name, value)]
    if script:
        command += ["-s", script]
    command.append(url)
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    figures: dict[str, Any] = {"output": output}
    for line in output.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            figures["requests_per_s"] = float(parts[1])
        elif parts[:1] == ["50%"]:
            figures["p50_ms"] = _wrk_ms(parts[1])
        elif parts[:1] == ["99%"]:
            figures["p99_ms"] = _wrk_ms(parts[1])
    return figures


def _wrk_ms(text: str) -> float:
    for suffix, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


__all__ = ["ApiClient", "Daemon"]
