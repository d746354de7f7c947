"""The REAL daemon as a child process, for black-box tests.

It runs ``python -m twisted --log-format=json --log-file=<dir>/log.json
pywebhooks --listen tcp:<port>:interface=127.0.0.1 --database
sqlite:<dir>/db.sqlite3 ...`` with ``PYTHONPATH`` = the repository root (so
the working copy and its ``twisted/plugins`` are what runs) and the working
directory ``<dir>``.  Its stdout and stderr go to files in ``<dir>``, one
pair per start, so reading them never blocks and nothing is lost.

Every wait polls with ``deferLater``: the test's reactor keeps serving (a
receiver in the test process gets the daemon's deliveries meanwhile)::

    daemon = Daemon(reactor, tmp_path, "--retry-delays", "1,1,1")
    await daemon.start()
    api = daemon.api()
    reply = await api.call("GET", "/v1/accounts?start=0&limit=10", account=daemon.admin)
    assert await daemon.terminate() == 0

The ``daemon`` fixture below gives a stopped ``Daemon`` in ``tmp_path``
and kills it (SIGKILL) after the test if it is still running.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from treq.client import HTTPClient
from twisted.internet.task import deferLater
from twisted.logger import eventsFromJSONLogFile
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.processes import free_port

#: The repository root (the directory that holds ``pywebhooks/``).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: How often the helper looks at the process and its port.
POLL_INTERVAL = 0.02


class DaemonError(AssertionError):
    """The daemon did not do what the test waited for (its output is in the message)."""


def daemon_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a daemon: this one without ``PYWEBHOOKS_*``, plus
    ``PYTHONPATH`` = the repository root, plus ``extra``."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("PYWEBHOOKS_")}
    environ["PYTHONPATH"] = str(REPO_ROOT)
    environ["PYTHONUNBUFFERED"] = "1"
    environ.update(extra or {})
    return environ


class Daemon:
    """One ``twist pywebhooks`` process that can be started, stopped, killed
    and restarted on the same port and database."""

    def __init__(self, reactor: Any, directory: Path, *options: str,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self._reactor = reactor
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if port is None else port
        self.database = "sqlite:%s" % (self.directory / "db.sqlite3",)
        self.options = list(options)
        self.env = dict(env or {})
        self.log_file = self.directory / "log.json"
        #: the options of ``twist`` itself
        self.twist_options = ["--log-format=json", "--log-file=%s" % (self.log_file,)]
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._last_run = ""
        #: the keys printed by the last start or ``--initdb`` that printed some
        self.admin_keys: tuple[str, str] | None = None
        self.returncode: int | None = None

    # -- the command --------------------------------------------------------

    def command(self, *extra: str) -> list[str]:
        """The command line of the daemon (with ``extra`` options after the others)."""
        return [
            sys.executable, "-m", "twisted", *self.twist_options,
            "pywebhooks",
            "--listen", "tcp:%d:interface=127.0.0.1" % (self.port,),
            "--database", self.database,
            *self.options, *extra,
        ]

    def _output_paths(self, name: str) -> tuple[Path, Path]:
        return self.directory / ("%s.stdout" % (name,)), self.directory / ("%s.stderr" % (name,))

    def _spawn(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        stdout_path, stderr_path = self._output_paths(name)
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            return subprocess.Popen(
                self.command(*extra), cwd=self.directory, env=daemon_environment(self.env),
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            )

    # -- running ------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    async def start(self, timeout: float = 15.0) -> None:
        """Start the daemon and wait until its port accepts connections."""
        assert not self.running, "the daemon is already running"
        self.starts += 1
        name = self._last_run = "start%d" % (self.starts,)
        self.process = self._spawn(name)
        self.returncode = None
        deadline = self._reactor.seconds() + timeout
        while not self._accepts_connections():
            if self.process.poll() is not None:
                self.returncode = self.process.returncode
                raise DaemonError("the daemon exited with %s while starting\n%s"
                                  % (self.returncode, self.diagnostics()))
            if self._reactor.seconds() > deadline:
                self.kill_now()
                raise DaemonError("the daemon did not listen within %ss\n%s" % (timeout, self.diagnostics()))
            await self.sleep(POLL_INTERVAL)
        keys = self.printed_keys(name)
        if keys:
            self.admin_keys = keys[-1]

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    async def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit; its exit status."""
        assert self.process is not None, "the daemon was never started"
        deadline = self._reactor.seconds() + timeout
        while self.process.poll() is None:
            if self._reactor.seconds() > deadline:
                self.kill_now()
                raise DaemonError("the daemon did not exit within %ss\n%s" % (timeout, self.diagnostics()))
            await self.sleep(POLL_INTERVAL)
        self.returncode = self.process.returncode
        return self.returncode

    async def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit; its exit status."""
        assert self.process is not None, "the daemon was never started"
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> int:
        """SIGKILL (a crash), then wait for the exit."""
        self.kill_now()
        assert self.returncode is not None
        return self.returncode

    def kill_now(self) -> None:
        """SIGKILL and reap the process without waiting on the reactor (for clean-ups)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.returncode = self.process.wait()

    async def restart(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, start again (same port, same database)."""
        if self.running:
            await self.terminate(timeout)
        await self.start(timeout)

    async def run_once(self, *extra: str, timeout: float = 15.0) -> tuple[int, str, str]:
        """Run the daemon's command with ``extra`` options (e.g. ``--initdb``)
        to completion: ``(exit status, stdout, stderr)``."""
        assert not self.running, "stop the daemon first"
        self.starts += 1
        name = self._last_run = "run%d" % (self.starts,)
        self.process = self._spawn(name, *extra)
        code = await self.wait(timeout)
        stdout_path, stderr_path = self._output_paths(name)
        stdout, stderr = stdout_path.read_text(), stderr_path.read_text()
        keys = self.printed_keys(name)
        if keys:
            self.admin_keys = keys[-1]
        return code, stdout, stderr

    def sleep(self, seconds: float) -> Any:
        """A Deferred that fires after ``seconds`` on the test's reactor."""
        return deferLater(self._reactor, seconds, lambda: None)

    # -- what it said ---------------------------------------------------------

    def url(self, path: str) -> str:
        """The URL of ``path`` on the daemon."""
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def api(self) -> ApiClient:
        """A client of the daemon's API."""
        return ApiClient(self._reactor, self.url(""))

    @property
    def admin(self) -> dict[str, str]:
        """The admin's credentials, from the keys it printed."""
        assert self.admin_keys is not None, "the daemon printed no admin keys"
        return {"username": "admin", "api_key": self.admin_keys[0], "secret_key": self.admin_keys[1]}

    def stdout(self, name: str | None = None) -> str:
        """The standard output of the last run (or of the run called ``name``)."""
        return self._output_paths(name or self._last_run)[0].read_text()

    def stderr(self, name: str | None = None) -> str:
        """The standard error of the last run (or of the run called ``name``)."""
        return self._output_paths(name or self._last_run)[1].read_text()

    def printed_keys(self, name: str | None = None) -> list[tuple[str, str]]:
        """Every ``{"api_key", "secret_key"}`` line of a start's standard output."""
        found = []
        for line in self.stdout(name).splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict) and set(value) == {"api_key", "secret_key"}:
                found.append((value["api_key"], value["secret_key"]))
        return found

    def log_text(self) -> str:
        """Everything the daemon has logged so far (every start), as text."""
        return self.log_file.read_text() if self.log_file.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log as a list of events."""
        if not self.log_file.exists():
            return []
        with open(self.log_file) as log_file:
            return [dict(event) for event in eventsFromJSONLogFile(log_file)]

    def diagnostics(self) -> str:
        """The output and the log of the daemon, for an error message."""
        parts = []
        for path in sorted(self.directory.glob("*.std*")) + [self.log_file]:
            if path.exists():
                parts.append("--- %s ---\n%s" % (path.name, path.read_text()[-6000:]))
        return "\n".join(parts)


@dataclasses.dataclass
class Reply:
    """One answer of the API: status and body (JSON decoded, None when empty)."""

    status: int
    body: Any


class ApiClient:
    """Calls a PyWebhooks API at ``base_url`` with treq, one connection per
    request (so a killed daemon leaves no stale pooled connection)."""

    def __init__(self, reactor: Any, base_url: str, timeout: float = 10.0) -> None:
        self._reactor = reactor
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    async def call(self, method: str, path: str, body: Any = None,
                   account: Mapping[str, Any] | None = None) -> Reply:
        """``method path`` with ``body`` as JSON, as ``account`` (its username and,
        if it has one, its api_key)."""
        headers = {"Content-Type": ["application/json"]}
        if account is not None:
            headers["username"] = [account["username"]]
            if "api_key" in account:
                headers["api-key"] = [account["api_key"]]
        data = None if body is None else json.dumps(body).encode()
        response = await self._client.request(
            method, self.base_url + path, headers=headers, data=data,
            allow_redirects=False, timeout=self._timeout,
        )
        content = await response.content()
        return Reply(response.code, json.loads(content) if content else None)

    async def create_account(self, username: str, endpoint: str) -> dict[str, Any]:
        """A new account (through the echo challenge); its record with the plaintext api_key."""
        reply = await self.call("POST", "/v1/account", {"username": username, "endpoint": endpoint})
        assert reply.status == 201, reply
        return dict(reply.body)

    async def register(self, account: Mapping[str, Any], event: str, event_data: Any) -> dict[str, Any]:
        """A new registration of ``account``."""
        reply = await self.call("POST", "/v1/webhook/registration",
                                {"event": event, "description": "test " + event, "event_data": event_data},
                                account)
        assert reply.status == 201, reply
        return dict(reply.body)

    async def subscribe(self, account: Mapping[str, Any], registration_id: str) -> dict[str, Any]:
        """``account`` subscribes to the registration."""
        reply = await self.call("POST", "/v1/webhook/subscription/" + registration_id, None, account)
        assert reply.status == 201, reply
        return dict(reply.body)

    async def publisher_and_subscriber(
        self, url: Callable[[str], str], event: str, event_data: Any, publisher: str = "publisher",
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Accounts ``publisher`` and ``subscriber`` (endpoints ``url("/<name>")``), a
        registration of the publisher's, and the subscriber subscribed to it:
        ``(publisher, subscriber, registration)``."""
        owner = await self.create_account(publisher, url("/" + publisher))
        subscriber = await self.create_account("subscriber", url("/subscriber"))
        registration = await self.register(owner, event, event_data)
        await self.subscribe(subscriber, registration["id"])
        return owner, subscriber, registration

    async def trigger(self, account: Mapping[str, Any], registration_id: str) -> dict[str, Any]:
        """``account`` fires the registration."""
        reply = await self.call("POST", "/v1/webhook/triggered/" + registration_id, None, account)
        assert reply.status == 201, reply
        return dict(reply.body)


def verify_delivery(headers: Mapping[str, str], body: bytes, secret_key: str) -> Any:
    """Check both signatures of a delivery made with ``secret_key`` (the original's
    HMAC-SHA1 and Standard Webhooks); the decoded payload."""
    expected = hmac.new(secret_key.encode("utf-8"), body, hashlib.sha1).hexdigest()
    assert headers["pywebhooks-signature"] == expected, "bad pywebhooks-signature"
    return Webhook(secret_key.encode("utf-8")).verify(body, dict(headers))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A stopped ``Daemon`` in ``tmp_path`` (add options with ``daemon.options``),
    killed after the test if it still runs."""
    from twisted.internet import reactor

    made = Daemon(reactor, tmp_path / "daemon")
    try:
        yield made
    finally:
        made.kill_now()
