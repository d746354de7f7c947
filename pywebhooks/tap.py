"""``twist pywebhooks``: the options and the composition root of the daemon.

Every setting is a ``usage.Options`` parameter.  The configuration file
(``--config``, INI, section ``[pywebhooks]``, keys = the long option names)
and the environment (``PYWEBHOOKS_<NAME>``, e.g. ``PYWEBHOOKS_RETRY_DELAYS``)
are read in ``Options.parseOptions`` only: their text values replace the
defaults (file first, then environment), then the command line is parsed
over them, and ``postOptions`` coerces and checks whatever won.  So the
precedence is command line > environment > configuration file > defaults,
and every source goes through the same validation.

``makeService`` is the only place of the package that imports the global
reactor.
"""

from __future__ import annotations

import configparser
import dataclasses
import gc
import getopt
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from pywebhooks.settings import Settings
from pywebhooks.targets import TargetPolicy, parse_cidr_list

#: The section of the configuration file that holds the options.
CONFIG_SECTION = "pywebhooks"

#: Prefix of the environment variables that set options.
ENV_PREFIX = "PYWEBHOOKS_"

#: Options that only the command line may give: ``initdb`` wipes the
#: database, so it must never come from a file or a variable left behind.
_COMMAND_LINE_ONLY = ("initdb", "config")

_DEFAULTS = Settings()


def _format_delays(delays: Sequence[float]) -> str:
    return ",".join("%g" % (delay,) for delay in delays)


# -- coercions: each takes the option's text and raises ValueError with a
# -- sentence that finishes "--name ...".


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number, not %r" % (text,)) from None
    if not math.isfinite(value):
        raise ValueError("must be a finite number, not %r" % (text,))
    return value


def _positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise ValueError("must be greater than 0, not %r" % (text,))
    return value


def _non_negative_number(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise ValueError("must be 0 or more, not %r" % (text,))
    return value


def _positive_integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("must be a whole number, not %r" % (text,)) from None
    if value < 1:
        raise ValueError("must be 1 or more, not %r" % (text,))
    return value


def _targets(text: str) -> tuple[str, ...]:
    return tuple(parse_cidr_list(text))


def _delays(text: str) -> tuple[float, ...]:
    if not text.strip():
        return ()
    try:
        return tuple(_non_negative_number(part.strip()) for part in text.split(","))
    except ValueError:
        raise ValueError(
            "must be comma-separated seconds (0 or more), like 120,120,3600, not %r" % (text,)
        ) from None


def _listen(text: str) -> str:
    # Parsing an endpoint description only builds the endpoint object; no
    # reactor is used until it listens, so a placeholder is enough here.
    try:
        serverFromString(object(), text)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError("is not a valid Twisted endpoint description (%s): %r" % (error, text)) from None
    return text


def _database(text: str) -> str:
    if text.startswith("sqlite:"):
        if not text[len("sqlite:"):].lstrip("/"):
            raise ValueError("needs a file path: sqlite:PATH, not %r" % (text,))
        return text
    if text.startswith("rethinkdb://"):
        from pywebhooks.store.rethinkdb import parse_url

        try:
            parse_url(text)
        except ValueError as error:
            raise ValueError("must be rethinkdb://HOST:PORT/DBNAME (%s), not %r" % (error, text)) from None
        return text
    raise ValueError("must be sqlite:PATH or rethinkdb://HOST:PORT/DBNAME, not %r" % (text,))


def _redis(text: str) -> str | None:
    # (ledger.redis.RedisAddress parses it for good, but importing that
    # module imports txredisapi, which installs the global reactor before
    # twist has chosen one.)
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme != "redis":
        raise ValueError("must be redis://HOST:PORT/DB, not %r" % (text,))
    try:
        parts.port
    except ValueError:
        raise ValueError("has an invalid port: redis://HOST:PORT/DB, not %r" % (text,)) from None
    if not parts.hostname:
        raise ValueError("needs a host: redis://HOST:PORT/DB, not %r" % (text,))
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError("must end with a database number: redis://HOST:PORT/DB, not %r" % (text,))
    return text


def _access_log(text: str) -> str:
    """``-``, ``off`` or a file path (not checked here: the daemon opens it when it starts)."""
    text = text.strip()
    if not text:
        raise ValueError("must be '-', 'off' or a file path")
    return text


_COERCIONS: dict[str, Callable[[str], Any]] = {
    "listen": _listen,
    "database": _database,
    "redis": _redis,
    "retry-delays": _delays,
    "request-timeout": _positive_number,
    "max-failed-count": _positive_integer,
    "max-body-size": _positive_integer,
    "apikey-reset-limit": _positive_integer,
    "apikey-reset-window": _positive_number,
    "max-in-flight": _positive_integer,
    "lease-seconds": _positive_number,
    "shutdown-grace": _non_negative_number,
    "max-registrations-per-account": _positive_integer,
    "max-subscriptions-per-account": _positive_integer,
    "deny-targets": _targets,
    "allow-targets": _targets,
    "client-timeout": _positive_number,
    "access-log": _access_log,
}


class _CommandLine(usage.Options):
    """The options themselves, parsed from one list of arguments."""

    synopsis = "[options]"
    longdesc = (
        "Run the PyWebhooks daemon. Options may also come from a configuration file "
        "(--config, section [pywebhooks], keys = the long option names) and from "
        "PYWEBHOOKS_<NAME> environment variables (e.g. PYWEBHOOKS_RETRY_DELAYS; "
        "PYWEBHOOKS_CONFIG names the file); the command line wins over the "
        "environment, which wins over the file. --initdb is read from the command line only."
    )

    optFlags = [
        ["private-listings", None, "Non-admins see only their own records in the two 'all records' lists."],
        ["initdb", None, "Drop and recreate the database, create the admin account, "
                         "print its keys as one JSON line and exit."],
    ]

    optParameters = [
        ["config", "c", None, "An INI configuration file with a [pywebhooks] section."],
        ["listen", None, _DEFAULTS.listen, "Twisted endpoint description to listen on."],
        ["database", None, _DEFAULTS.database, "sqlite:PATH or rethinkdb://HOST:PORT/DBNAME."],
        ["redis", None, None, "redis://HOST:PORT/DB: keep pending retries in Redis (default: in the database)."],
        ["retry-delays", None, _format_delays(_DEFAULTS.retry_delays),
         "Seconds before each retry after a failed first attempt, comma-separated."],
        ["request-timeout", None, "%g" % (_DEFAULTS.request_timeout,),
         "Seconds an outbound request (delivery, echo, key reset) may take."],
        ["max-failed-count", None, str(_DEFAULTS.max_failed_count),
         "Failed attempts in a row after which a subscriber gets no new deliveries."],
        ["max-body-size", None, str(_DEFAULTS.max_body_size), "Largest request body accepted, in bytes."],
        ["apikey-reset-limit", None, str(_DEFAULTS.apikey_reset_limit),
         "Api-key resets allowed per account per window."],
        ["apikey-reset-window", None, "%g" % (_DEFAULTS.apikey_reset_window,),
         "The api-key reset window, in seconds."],
        ["max-in-flight", None, str(_DEFAULTS.max_in_flight), "Most delivery attempts made at the same time."],
        ["lease-seconds", None, "%g" % (_DEFAULTS.lease_seconds,),
         "How long a claimed delivery stays reserved for this daemon (more than --request-timeout)."],
        ["shutdown-grace", None, "%g" % (_DEFAULTS.shutdown_grace,),
         "Seconds to wait for attempts in flight when stopping."],
        ["max-registrations-per-account", None, str(_DEFAULTS.max_registrations_per_account),
         "Most registrations one account may own."],
        ["max-subscriptions-per-account", None, str(_DEFAULTS.max_subscriptions_per_account),
         "Most subscriptions one account may hold."],
        ["deny-targets", None, "",
         "Comma-separated CIDR networks that outbound calls may never reach, added to the built-in "
         "link-local/metadata/unspecified list; 'private' adds loopback and the private ranges."],
        ["allow-targets", None, "", "Comma-separated CIDR networks allowed even if a deny entry covers them."],
        ["client-timeout", None, "%g" % (_DEFAULTS.client_timeout,),
         "Seconds a client may take to send a request before the connection is dropped."],
        ["access-log", None, _DEFAULTS.access_log,
         "Where each HTTP request is logged: '-' (the daemon's log), 'off', or a file of its own "
         "(combined log format, appended)."],
    ]

    def postOptions(self) -> None:
        """Coerce every value to its type and check it (a ``UsageError`` says which)."""
        for name, coerce in _COERCIONS.items():
            value = self[name]
            if isinstance(value, str):
                try:
                    self[name] = coerce(value)
                except ValueError as error:
                    raise usage.UsageError("--%s %s" % (name, error)) from None
        for name, _, _ in self.optFlags:
            self[name] = bool(self[name])

    def settings(self) -> Settings:
        """The validated values as ``Settings``."""
        fields = {field.name for field in dataclasses.fields(Settings)}
        return Settings(**{
            name.replace("-", "_"): value for name, value in self.items() if name.replace("-", "_") in fields
        })


class Options(_CommandLine):
    """The options of ``twist pywebhooks``, from the command line, the
    environment and the configuration file.

    ``environ`` defaults to ``os.environ``; tests pass their own.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse the file, the environment and ``options`` (default ``sys.argv[1:]``)."""
        command_line = list(sys.argv[1:] if options is None else options)
        layers = [("environment", _environment_values(self._environ))]
        config_path = self._config_path(command_line)
        if config_path is not None:
            layers.insert(0, ("configuration file %s" % (config_path,), _config_values(config_path)))
        for origin, values in layers:
            _check(origin, values)
            self.update(values)
        super().parseOptions(command_line)

    def postOptions(self) -> None:
        """Coerce and check every value, then the values against each other."""
        super().postOptions()
        if self["lease-seconds"] <= self["request-timeout"]:
            raise usage.UsageError(
                "--lease-seconds (%g) must be greater than --request-timeout (%g): an attempt "
                "still running could otherwise be taken over and sent twice"
                % (self["lease-seconds"], self["request-timeout"])
            )
        try:
            TargetPolicy.with_defaults(self["deny-targets"], self["allow-targets"])
        except ValueError as error:
            raise usage.UsageError("--allow-targets/--deny-targets: %s" % (error,)) from None

    def _config_path(self, command_line: list[str]) -> str | None:
        """``--config`` from the command line, else ``PYWEBHOOKS_CONFIG``."""
        try:
            found, _ = getopt.getopt(command_line, self.shortOpt, self.longOpt)
        except getopt.GetoptError as error:
            raise usage.UsageError(str(error)) from None
        path = self._environ.get(ENV_PREFIX + "CONFIG") or None
        for name, value in found:
            if name in ("--config", "-c"):
                path = value
        return path


def _check(origin: str, values: dict[str, Any]) -> None:
    """Validate one source of values alone, so that an error names its source."""
    checked = _CommandLine()
    checked.update(values)
    try:
        checked.postOptions()
    except usage.UsageError as error:
        raise usage.UsageError("in the %s: %s" % (origin, error)) from None


def _option_names() -> list[str]:
    """Every long option that a file or the environment may set."""
    names = [flag[0] for flag in _CommandLine.optFlags] + [param[0] for param in _CommandLine.optParameters]
    return [name for name in names if name not in _COMMAND_LINE_ONLY]




_FLAG_NAMES = frozenset(flag[0] for flag in _CommandLine.optFlags)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _value(name: str, text: str, origin: str) -> Any:
    """The option value ``text`` stands for: a bool for a flag, else the text."""
    if name not in _FLAG_NAMES:
        return text
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise usage.UsageError("%s must be true or false, not %r" % (origin, text))


def _environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The options set by ``PYWEBHOOKS_<NAME>`` variables."""
    values: dict[str, Any] = {}
    for name in _option_names():
        variable = ENV_PREFIX + name.upper().replace("-", "_")
        if variable in environ:
            values[name] = _value(name, environ[variable], variable)
    if ENV_PREFIX + "INITDB" in environ:
        raise usage.UsageError("%sINITDB is not read: --initdb is only accepted on the command line" % (ENV_PREFIX,))
    return values


def _config_values(path: str) -> dict[str, Any]:
    """The options set by the ``[pywebhooks]`` section of the file at ``path``."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as config_file:
            parser.read_file(config_file)
    except OSError as error:
        raise usage.UsageError("cannot read the configuration file %s: %s" % (path, error.strerror)) from None
    except configparser.Error as error:
        raise usage.UsageError("the configuration file %s is not valid INI: %s" % (path, error)) from None
    if not parser.has_section(CONFIG_SECTION):
        raise usage.UsageError("the configuration file %s has no [%s] section" % (path, CONFIG_SECTION))
    known = _option_names()
    values: dict[str, Any] = {}
    for key, text in parser.items(CONFIG_SECTION):
        if key in _COMMAND_LINE_ONLY:
            raise usage.UsageError("%s: '%s' is only accepted on the command line" % (path, key))
        if key not in known:
            raise usage.UsageError("%s: unknown option '%s' in [%s]" % (path, key, CONFIG_SECTION))
        values[key] = _value(key, text, "%s: %s" % (path, key))
    return values


class ProcessExit(MultiService):
    """Runs one service as the ``twist`` process and decides how the process ends.

    - SIGTERM stops the reactor, so that every service stops cleanly, and
      the process exits with status 0.  (Twisted's own handler makes
      ``twist`` kill itself with the signal again once the reactor has
      stopped, which supervisors and shells report as a failure.)
    - When ``ready`` (a Deferred) fails, the service has already logged why;
      the reactor stops, every service stops, and the process exits with
      status 1.  ``twist`` offers no way to choose an exit status, so this
      is the one place that calls ``os._exit``: after the services have
      stopped, with stdout and stderr flushed (the log file observer
      flushes after every event).
    - With ``stop_when_ready``, the reactor stops once ``ready`` fires (a
      one-shot job such as ``--initdb``) and the process exits with 0.
    """

    log = Logger()

    def __init__(self, reactor: Any, service: IService, ready: Deferred[Any],
                 stop_when_ready: bool = False) -> None:
        super().__init__()
        self._reactor = reactor
        self._ready = ready
        self._stop_when_ready = stop_when_ready
        self.exit_code = 0
        service.setServiceParent(self)

    def startService(self) -> None:
        """Start the service; take over SIGTERM once the reactor runs."""
        self._reactor.addSystemEventTrigger("after", "shutdown", self._after_shutdown)
        self._reactor.callWhenRunning(self._handle_sigterm)
        super().startService()
        self._ready.addCallbacks(self._succeeded, self._failed)

    def _handle_sigterm(self) -> None:
        signal.signal(signal.SIGTERM, self._sigterm)

    def _sigterm(self, number: int, frame: Any) -> None:
        self.log.info("Received SIGTERM, shutting down.")
        self._reactor.callFromThread(self._stop_reactor)

    def _succeeded(self, result: object) -> None:
        if self._stop_when_ready:
            self._stop_reactor()

    def _failed(self, failure: Failure) -> None:
        self.exit_code = 1
        self.log.info("stopping: the process will exit with status {code}", code=self.exit_code)
        self._stop_reactor()

    def _stop_reactor(self) -> None:
        if not self._reactor.running:
            self._reactor.callWhenRunning(self._reactor.stop)
            return
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass  # already shutting down (a second SIGTERM)

    def _after_shutdown(self) -> None:
        # Every service has stopped: a SIGTERM repeated now (while Python
        # finalises, when it would kill the process) has nothing left to do.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.exit_code == 0:
            return
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        os._exit(self.exit_code)


def makeService(options: Options) -> IService:
    """The daemon, or with ``--initdb`` the one-shot database initialisation."""
    from twisted.internet import reactor

    from pywebhooks.service import InitializeDatabase, PyWebhooksService

    settings = options.settings()
    # Once logging starts, twist replaces sys.stdout with a logger: the admin
    # keys go to the real standard output, never to the log.
    out = sys.__stdout__
    if options["initdb"]:
        _log_to_stderr_if_stdout(options)
        job = InitializeDatabase(reactor, settings, out=out)
        return ProcessExit(reactor, job, job.done, stop_when_ready=True)
    service = PyWebhooksService(reactor, settings, out=out)
    # (a failed start is logged and handled by ProcessExit)
    service.when_started().addCallbacks(lambda _: freeze_startup_heap(), lambda _: None)
    return ProcessExit(reactor, service, service.when_started())


def freeze_startup_heap() -> None:
    """Take what is alive once the daemon has started (modules, classes, the
    routes, the open store) out of the garbage collector's reach.

    A full collection then walks only the objects made since: its pauses,
    which stall the reactor, went from about 35 ms to about 1 ms under API
    load (``bench/RESULTS.md``).  Only the ``twist`` daemon does this; an
    embedding program decides for its own heap.
    """
    gc.collect()
    gc.freeze()


def _log_to_stderr_if_stdout(options: Options) -> None:
    """``--initdb`` promises exactly one line on stdout: when twist would log
    there (its default), it logs to stderr instead."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return
    log_file = parent.get("logFile")
    if any(log_file is stream for stream in (sys.stdout, sys.__stdout__)):
        parent["logFile"] = sys.stderr
