"""The README's curl walkthrough, replayed word for word against a live daemon.

The daemon is a real ``twist pywebhooks`` process, the receiver is the
example receiver that ships with the package (``python -m
pywebhooks.examples.receiver``), and every command is the README's own,
run by ``bash`` with ``curl``: if the README and the service disagree, this
test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.daemon import Daemon, daemon_environment
from tests.support.processes import free_port
from tests.support.rethinkdb_server import require_rethinkdb, shared_server
from tests.support.walkthrough import walkthrough_steps

README = Path(__file__).resolve().parent.parent / "README.rst"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the walkthrough needs curl")


class ExampleReceiver:
    """``python -m pywebhooks.examples.receiver`` as a process on a free port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.output = directory / "receiver.out"
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pywebhooks.examples.receiver", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=daemon_environment(),
            )
        self.wait_for(lambda event: event.get("event") == "listening")

    def events(self) -> list[dict[str, Any]]:
        """Every JSON line it printed."""
        return [json.loads(line) for line in self.output.read_text().splitlines() if line.startswith("{")]

    def wait_for(self, matches: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first printed event that ``matches``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if matches(event):
                    return event
            time.sleep(0.05)
        raise AssertionError("receiver never printed the event; it printed %r" % (self.events(),))

    def stop(self) -> None:
        """Stop the process."""
        self.process.kill()
        self.process.wait()


@pytest.fixture
def example_receiver(tmp_path: Path) -> Iterator[ExampleReceiver]:
    """The example receiver, stopped after the test."""
    receiver = ExampleReceiver(tmp_path)
    try:
        yield receiver
    finally:
        receiver.stop()


def run_curl(command: str, variables: dict[str, str], receiver_port: int, body_file: Path) -> tuple[int, str]:
    """Run one README ``curl`` command; its status code and body."""
    command = command.replace("127.0.0.1:9090", "127.0.0.1:%d" % (receiver_port,))
    assert command.startswith("curl ")
    command += " -o '%s' -w '%%{http_code}'" % (body_file,)
    environ = dict(os.environ, **variables)
    finished = subprocess.run(["bash", "-c", command], env=environ, capture_output=True, text=True, timeout=30)
    assert finished.returncode == 0, finished.stderr
    return int(finished.stdout), body_file.read_text() if body_file.exists() else ""


@pytest.fixture(params=["sqlite", "rethinkdb"])
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    """A stopped daemon on the default embedded store, or on a new database of
    a real RethinkDB server (skipped, with the reason, when there is none)."""
    made = Daemon(reactor, tmp_path / "daemon")
    if request.param == "rethinkdb":
        require_rethinkdb()
        made.database = shared_server().url("walkthrough_" + uuid.uuid4().hex[:12])
    try:
        yield made
    finally:
        made.kill_now()


async def start_with_admin(daemon: Daemon) -> str:
    """Start the daemon (after ``--initdb`` where the store needs it); the admin's api key."""
    if daemon.database.startswith("rethinkdb:"):
        code, stdout, stderr = await daemon.run_once("--initdb", timeout=60)
        assert code == 0, stderr
        api_key = json.loads(stdout.splitlines()[-1])["api_key"]
        await daemon.start()
        return str(api_key)
    await daemon.start()
    assert daemon.admin_keys is not None
    return daemon.admin_keys[0]


@pytest_twisted.ensureDeferred
async def test_every_walkthrough_command_answers_as_the_readme_says(
    daemon: Daemon, example_receiver: ExampleReceiver, tmp_path: Path
) -> None:
    """Each curl command of the README answers the status it documents, and the
    receiver gets the firing with both signatures valid."""
    admin_key = await start_with_admin(daemon)
    variables = {"PW": daemon.url("").rstrip("/"), "ADMIN_KEY": admin_key}
    last_answer: Any = None
    replayed = 0
    for step in walkthrough_steps(README):
        if step.command.startswith("export PW="):
            continue
        if step.exports:
            for name, field in step.exports.items():
                variables[name] = last_answer[field]
            continue
        status, body = run_curl(step.command, variables, example_receiver.port, tmp_path / "body")
        assert status == step.status, "%s\nanswered %s %s" % (step.command, status, body)
        last_answer = json.loads(body) if body else None
        replayed += 1
        if "/v1/webhook/triggered/" in step.command and status == 201 and "event_data" not in step.command:
            delivery = example_receiver.wait_for(lambda event: event.get("event") == "mywebhook.event")
            assert delivery["pywebhooks_signature_ok"] is True
            assert delivery["standard_signature_ok"] is True
            assert json.loads(delivery["body"])["message"] == "hello world"
    assert replayed >= 20
    override = example_receiver.wait_for(lambda event: "just this once" in (event.get("body") or ""))
    assert override["standard_signature_ok"] is True
