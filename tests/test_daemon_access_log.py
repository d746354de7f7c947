"""Where the real daemon writes its access log: its own log by default, a
file of its own, or nowhere; an access log it cannot open stops the start."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from tests.support.daemon import Daemon

#: A request each test makes, and the part of its access log line that shows it.
PATH = "/v1/openapi.json?from=access-log-test"
LOGGED = '"GET %s HTTP/1.1" 200' % (PATH,)


def _logged_lines(daemon: Daemon) -> list[str]:
    """The lines the daemon's own (JSON) log holds as written text."""
    return [event["log_io"] for event in daemon.log_events() if "log_io" in event]


async def _started_and_requested(daemon: Daemon) -> None:
    """Start ``daemon``, make the request, stop it (so that its logs are complete)."""
    await daemon.start()
    try:
        reply = await daemon.api().call("GET", PATH)
        assert reply.status == 200, reply
    finally:
        assert await daemon.terminate() == 0, daemon.diagnostics()


@pytest_twisted.ensureDeferred
async def test_by_default_each_request_is_a_line_of_the_daemons_log(tmp_path: Path) -> None:
    """Without ``--access-log`` the request is in the daemon's own (JSON) log."""
    daemon = Daemon(reactor, tmp_path / "d")
    await _started_and_requested(daemon)
    assert len([line for line in _logged_lines(daemon) if LOGGED in line]) == 1


@pytest_twisted.ensureDeferred
async def test_access_log_file_gets_the_lines_instead_of_the_daemons_log(tmp_path: Path) -> None:
    """With ``--access-log PATH`` the line goes to that file (appended across
    starts) and not to the daemon's log."""
    access_log = tmp_path / "access.log"
    access_log.write_text("an older line\n")
    daemon = Daemon(reactor, tmp_path / "d", "--access-log", str(access_log))
    await _started_and_requested(daemon)
    lines = access_log.read_text().splitlines()
    assert lines[0] == "an older line"
    assert [line for line in lines if LOGGED in line] == [lines[-1]]
    assert lines[-1].startswith('"127.0.0.1" - - [')
    assert not [line for line in _logged_lines(daemon) if PATH in line]
    assert "PyWebhooks listening on" in daemon.log_text()


@pytest_twisted.ensureDeferred
async def test_access_log_off_logs_no_request(tmp_path: Path) -> None:
    """``--access-log off``: the daemon serves the request and logs it nowhere."""
    daemon = Daemon(reactor, tmp_path / "d", "--access-log", "off")
    await _started_and_requested(daemon)
    assert "PyWebhooks listening on" in daemon.log_text()
    assert PATH not in daemon.log_text()
    assert not (daemon.directory / "off").exists()


@pytest_twisted.ensureDeferred
async def test_an_access_log_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    """A file in a directory that does not exist: exit status 1, and the
    critical log event says which file and why."""
    missing = tmp_path / "no-such-directory" / "access.log"
    daemon = Daemon(reactor, tmp_path / "d", "--access-log", str(missing))
    code, _, stderr = await daemon.run_once()
    assert code == 1, stderr
    critical = [event for event in daemon.log_events() if event["log_level"].name == "critical"]
    assert len(critical) == 1, daemon.diagnostics()
    assert critical[0]["reason"] == "cannot open the access log %s: No such file or directory" % (missing,)
