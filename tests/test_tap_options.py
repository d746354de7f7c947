"""``twist pywebhooks`` options: defaults, config file, environment, validation, plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python import usage
from twisted.python.usage import UsageError

from pywebhooks import tap
from pywebhooks.settings import Settings
from tests.support.daemon import REPO_ROOT, daemon_environment

#: Every option of the spec (§4) and of the settings.
ALL_OPTIONS = (
    "listen", "database", "redis", "retry-delays", "request-timeout", "max-failed-count",
    "private-listings", "initdb", "config", "max-body-size", "apikey-reset-limit",
    "apikey-reset-window", "max-in-flight", "lease-seconds", "shutdown-grace",
    "max-registrations-per-account", "max-subscriptions-per-account",
    "deny-targets", "allow-targets", "client-timeout", "access-log",
)


def parse(argv: list[str], environ: dict[str, str] | None = None) -> tap.Options:
    """Options parsed from ``argv`` with only ``environ`` as the environment."""
    options = tap.Options(environ=environ or {})
    options.parseOptions(argv)
    return options


def write_config(path: Path, body: str) -> str:
    path.write_text("[pywebhooks]\n" + body)
    return str(path)


def test_defaults_are_the_spec_defaults() -> None:
    """With no options the daemon listens on tcp:8081 with pywebhooks.sqlite3 and the spec's retry delays."""
    options = parse([])
    assert options.settings() == Settings()
    assert options["listen"] == "tcp:8081"
    assert options["database"] == "sqlite:pywebhooks.sqlite3"
    assert options["redis"] is None
    assert options["retry-delays"] == (120.0, 120.0, 3600.0)
    assert options["initdb"] is False
    assert options["private-listings"] is False


def test_every_option_is_parsed_and_coerced() -> None:
    """Each command-line option ends up, typed, in the settings the daemon runs with."""
    options = parse([
        "--listen", "tcp:0:interface=127.0.0.1", "--database", "sqlite:/tmp/x.sqlite3",
        "--redis", "redis://127.0.0.1:6390/2", "--retry-delays", "1, 2.5,0",
        "--request-timeout", "2.5", "--max-failed-count", "7", "--private-listings",
        "--max-body-size", "2048", "--apikey-reset-limit", "5", "--apikey-reset-window", "60",
        "--max-in-flight", "9", "--lease-seconds", "30", "--shutdown-grace", "0",
        "--max-registrations-per-account", "11", "--max-subscriptions-per-account", "12",
        "--access-log", "/var/log/pywebhooks-access.log", "--initdb",
    ])
    assert options["initdb"] is True
    assert options.settings() == Settings(
        listen="tcp:0:interface=127.0.0.1", database="sqlite:/tmp/x.sqlite3",
        redis="redis://127.0.0.1:6390/2", retry_delays=(1.0, 2.5, 0.0), request_timeout=2.5,
        max_failed_count=7, private_listings=True, max_body_size=2048, apikey_reset_limit=5,
        apikey_reset_window=60.0, max_in_flight=9, lease_seconds=30.0, shutdown_grace=0.0,
        max_registrations_per_account=11, max_subscriptions_per_account=12,
        access_log="/var/log/pywebhooks-access.log",
    )


def test_rethinkdb_url_and_empty_retry_delays_are_accepted() -> None:
    """A RethinkDB database URL is accepted, and an empty --retry-delays means no retries."""
    options = parse(["--database", "rethinkdb://db.local:28015/hooks", "--retry-delays", ""])
    assert options["database"] == "rethinkdb://db.local:28015/hooks"
    assert options["retry-delays"] == ()


@pytest.mark.parametrize(("argv", "message"), [
    (["--request-timeout", "soon"], "--request-timeout must be a number"),
    (["--request-timeout", "0"], "--request-timeout must be greater than 0"),
    (["--request-timeout", "nan"], "--request-timeout must be a finite number"),
    (["--max-failed-count", "2.5"], "--max-failed-count must be a whole number"),
    (["--max-in-flight", "0"], "--max-in-flight must be 1 or more"),
    (["--retry-delays", "120,-1"], "--retry-delays must be comma-separated seconds"),
    (["--retry-delays", "120,,3600"], "--retry-delays must be comma-separated seconds"),
    (["--shutdown-grace", "-1"], "--shutdown-grace must be 0 or more"),
    (["--listen", "carrier-pigeon:8081"], "--listen is not a valid Twisted endpoint"),
    (["--listen", "tcp:eighty"], "--listen is not a valid Twisted endpoint"),
    (["--database", "mysql://localhost/x"], "--database must be sqlite:PATH or rethinkdb://"),
    (["--database", "sqlite:"], "--database needs a file path"),
    (["--database", "rethinkdb://:28015/x"], "--database must be rethinkdb://HOST:PORT/DBNAME"),
    (["--database", "rethinkdb://db:port/x"], "--database must be rethinkdb://HOST:PORT/DBNAME"),
    (["--redis", "redis:///0"], "--redis needs a host"),
    (["--redis", "http://127.0.0.1:6379/0"], "--redis must be redis://HOST:PORT/DB"),
    (["--redis", "redis://127.0.0.1:port/0"], "--redis has an invalid port"),
    (["--redis", "redis://127.0.0.1:6379/zero"], "--redis must end with a database number"),
    (["--lease-seconds", "5", "--request-timeout", "5"], "--lease-seconds (5) must be greater than --request-timeout (5)"),
    (["--access-log", " "], "--access-log must be '-', 'off' or a file path"),
    (["--no-such-option"], "no-such-option not recognized"),
    (["surplus"], "Wrong number of arguments"),
])
def test_bad_values_are_usage_errors(argv: list[str], message: str) -> None:
    """A bad value stops the daemon with a usage error that names the option and says what is wrong."""
    with pytest.raises(UsageError) as raised:
        parse(argv)
    assert message in str(raised.value)


def test_config_file_sets_options(tmp_path: Path) -> None:
    """Keys of the [pywebhooks] section set the options of the same name."""
    config = write_config(tmp_path / "hooks.ini", (
        "listen = tcp:9000:interface=127.0.0.1\n"
        "retry-delays = 1,1,1\n"
        "private-listings = yes\n"
        "redis = redis://127.0.0.1:6400/1\n"
    ))
    options = parse(["--config", config])
    assert options["listen"] == "tcp:9000:interface=127.0.0.1"
    assert options["retry-delays"] == (1.0, 1.0, 1.0)
    assert options["private-listings"] is True
    assert options["redis"] == "redis://127.0.0.1:6400/1"
    assert options["request-timeout"] == 5.0


def test_command_line_beats_environment_beats_config_file(tmp_path: Path) -> None:
    """The command line wins over PYWEBHOOKS_* variables, which win over the configuration file."""
    config = write_config(tmp_path / "hooks.ini", (
        "request-timeout = 7\n"
        "max-failed-count = 70\n"
        "max-in-flight = 700\n"
        "private-listings = true\n"
    ))
    environ = {
        "PYWEBHOOKS_CONFIG": config,
        "PYWEBHOOKS_MAX_FAILED_COUNT": "80",
        "PYWEBHOOKS_MAX_IN_FLIGHT": "800",
        "PYWEBHOOKS_PRIVATE_LISTINGS": "false",
    }
    options = parse(["--max-in-flight", "900"], environ)
    assert options["request-timeout"] == 7.0          # file only
    assert options["max-failed-count"] == 80          # environment over file
    assert options["max-in-flight"] == 900            # command line over both
    assert options["private-listings"] is False       # environment turns the file's flag off
    assert parse(["--private-listings"], environ)["private-listings"] is True


def test_config_option_on_the_command_line_beats_the_environment_one(tmp_path: Path) -> None:
    """--config on the command line is read instead of the file named by PYWEBHOOKS_CONFIG."""
    chosen = write_config(tmp_path / "chosen.ini", "max-failed-count = 3\n")
    ignored = write_config(tmp_path / "ignored.ini", "max-failed-count = 4\n")
    assert parse(["-c", chosen], {"PYWEBHOOKS_CONFIG": ignored})["max-failed-count"] == 3
    assert parse([], {"PYWEBHOOKS_CONFIG": ignored})["max-failed-count"] == 4


@pytest.mark.parametrize(("body", "message"), [
    ("request-timeout = never\n", "in the configuration file"),
    ("colour = blue\n", "unknown option 'colour'"),
    ("initdb = true\n", "'initdb' is only accepted on the command line"),
    ("private-listings = perhaps\n", "must be true or false"),
])
def test_bad_config_files_are_usage_errors(tmp_path: Path, body: str, message: str) -> None:
    """A bad configuration file stops the daemon with a usage error naming the file and the key."""
    config = write_config(tmp_path / "bad.ini", body)
    with pytest.raises(UsageError) as raised:
        parse(["--config", config])
    assert message in str(raised.value)
    assert "bad.ini" in str(raised.value) or "configuration file" in str(raised.value)


def test_missing_or_sectionless_config_file_is_a_usage_error(tmp_path: Path) -> None:
    """A config file that does not exist, or has no [pywebhooks] section, is a usage error."""
    with pytest.raises(UsageError, match="cannot read the configuration file"):
        parse(["--config", str(tmp_path / "absent.ini")])
    other = tmp_path / "other.ini"
    other.write_text("[server]\nlisten = tcp:1\n")
    with pytest.raises(UsageError, match=r"has no \[pywebhooks\] section"):
        parse(["--config", str(other)])


def test_bad_environment_value_is_a_usage_error_naming_the_environment() -> None:
    """A bad PYWEBHOOKS_* value is reported as coming from the environment."""
    with pytest.raises(UsageError, match="in the environment: --max-body-size must be a whole number"):
        parse([], {"PYWEBHOOKS_MAX_BODY_SIZE": "big"})
    with pytest.raises(UsageError, match="only accepted on the command line"):
        parse([], {"PYWEBHOOKS_INITDB": "1"})


def test_example_config_documents_every_option_with_its_default(tmp_path: Path) -> None:
    """etc/pywebhooks.ini shows every option (but --config and --initdb) with the default value."""
    example = (REPO_ROOT / "etc" / "pywebhooks.ini").read_text()
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line for line in example.splitlines()
    )
    config = tmp_path / "uncommented.ini"
    config.write_text(uncommented)
    for name in ALL_OPTIONS:
        if name not in ("config", "initdb"):
            assert "# %s =" % (name,) in example, name
    assert parse(["--config", str(config)]).settings() == Settings()
    assert parse(["--config", str(REPO_ROOT / "etc" / "pywebhooks.ini")]).settings() == Settings()


def test_make_service_builds_the_daemon(tmp_path: Path) -> None:
    """makeService gives the daemon service: store, ledger, scheduler and API, listening on --listen."""
    from pywebhooks.ledger.sqlite import SQLiteLedger
    from pywebhooks.service import PyWebhooksService
    from pywebhooks.store.sqlite import SQLiteStore

    options = parse(["--database", "sqlite:%s" % (tmp_path / "db.sqlite3",),
                     "--listen", "tcp:0:interface=127.0.0.1"])
    service = tap.makeService(options)
    assert isinstance(service, tap.ProcessExit)
    (daemon,) = list(service)
    assert isinstance(daemon, PyWebhooksService)
    assert isinstance(daemon.store, SQLiteStore)
    assert isinstance(daemon.ledger, SQLiteLedger)
    assert daemon.settings == options.settings()
    assert daemon.api.resource() is not None
    assert not service.running


def test_make_service_with_initdb_builds_the_one_shot_job(tmp_path: Path) -> None:
    """With --initdb, makeService gives the database initialisation job instead of the daemon."""
    from pywebhooks.service import InitializeDatabase

    options = parse(["--database", "sqlite:%s" % (tmp_path / "db.sqlite3",), "--initdb"])
    service = tap.makeService(options)
    (job,) = list(service)
    assert isinstance(job, InitializeDatabase)
    assert not (tmp_path / "db.sqlite3").exists()


def _installed_twist() -> str:
    return str(Path(sys.executable).parent / "twist")


def test_installed_twist_lists_the_plugin_and_every_option(tmp_path: Path) -> None:
    """After installation, `twist --help` lists pywebhooks and `twist pywebhooks --help` every option."""
    environ = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    listing = subprocess.run([_installed_twist(), "--help"], cwd=tmp_path, env=environ,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "pywebhooks" in listing.stdout
    helped = subprocess.run([_installed_twist(), "pywebhooks", "--help"], cwd=tmp_path, env=environ,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    for name in ALL_OPTIONS:
        assert "--%s" % (name,) in helped.stdout, name


def test_working_copy_usage_error_exits_non_zero(tmp_path: Path) -> None:
    """A bad option makes `twist pywebhooks` exit with a usage status and a clear message."""
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "pywebhooks", "--retry-delays", "soon"],
        cwd=tmp_path, env=daemon_environment(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 64
    assert "--retry-delays must be comma-separated seconds" in result.stdout + result.stderr


def test_parsing_options_leaves_the_reactor_choice_to_twist() -> None:
    """Parsing every option (Redis and RethinkDB URLs included) installs no reactor, so --reactor still works."""
    script = (
        "import sys\n"
        "from pywebhooks.tap import Options\n"
        "Options(environ={}).parseOptions(['--redis', 'redis://127.0.0.1:6379/0',"
        " '--database', 'rethinkdb://127.0.0.1:28015/hooks'])\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'a reactor was installed'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=daemon_environment(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_target_lists_are_parsed_and_checked() -> None:
    """--deny-targets/--allow-targets take comma-separated CIDRs (and 'private'),
    and a malformed network or an allowed 'private' is a usage error."""
    options = parse(["--deny-targets", "private, 203.0.113.0/24", "--allow-targets", "127.0.0.1"])
    assert options.settings().deny_targets == ("private", "203.0.113.0/24")
    assert options.settings().allow_targets == ("127.0.0.1/32",)
    with pytest.raises(usage.UsageError, match="10.0.0.1/8"):
        parse(["--deny-targets", "10.0.0.1/8"])
    with pytest.raises(usage.UsageError, match="allow-targets"):
        parse(["--allow-targets", "private"])


def test_the_startup_heap_is_frozen_out_of_the_collectors_reach() -> None:
    """After start-up the daemon freezes its heap, so a full collection no
    longer walks every module and class (the long reactor stalls under load)."""
    import gc

    before = gc.get_freeze_count()
    try:
        tap.freeze_startup_heap()
        assert gc.get_freeze_count() > max(before, 1000)
    finally:
        gc.unfreeze()
