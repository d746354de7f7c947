"""``PyWebhooksService``: the whole daemon as one Twisted service.

``twist pywebhooks`` runs it; another Twisted program can embed it::

    service = PyWebhooksService(reactor, Settings(database="sqlite:/var/lib/hooks.sqlite3"),
                                listen=False)
    service.setServiceParent(application)          # started and stopped with the program
    root.putChild(b"hooks", service.api.resource())  # the API under /hooks/v1/...

Everything is built at construction (so ``service.api`` can be mounted
before the service starts); ``startService`` opens the store, creates the
admin account on an empty store, opens the ledger, starts the delivery
scheduler and then, with ``listen=True``, listens on ``settings.listen``.
``when_started()`` tells when all that is done, or why it failed.
``stopService`` undoes it in reverse order: no new requests, the in-flight
attempts finish (up to ``shutdown_grace``), then the ledger and the store
close.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from typing import IO, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from pywebhooks.accounts import create_admin
from pywebhooks.api import PyWebhooksAPI
from pywebhooks.delivery.deliverer import HTTPDeliverer
from pywebhooks.delivery.dispatch import Dispatcher
from pywebhooks.delivery.scheduler import DeliveryScheduler
from pywebhooks.errors import DatabaseMissing, DuplicateUsername, StoreError
from pywebhooks.httpclient import make_connection_pool, make_http_client
from pywebhooks.ledger.interface import ILedger
from pywebhooks.ledger.sqlite import SQLiteLedger
from pywebhooks.outbound import EndpointClient
from pywebhooks.settings import Settings
from pywebhooks.sqlitedb import SQLiteDatabase, sqlite_path
from pywebhooks.store.interface import IStore
from pywebhooks.store.sqlite import SQLiteStore
from pywebhooks.web import GuardedSite, access_log_path

#: The embedded ledger's file (in the working directory) when the store is
#: RethinkDB and no Redis is configured.
RETHINKDB_LEDGER_FILE = "pywebhooks-ledger.sqlite3"

#: A time after every due time and lease expiry: ``drain_ledger`` claims
#: "now = _FOREVER" so that every entry is claimable.
_FOREVER = 1e18


class StartupError(Exception):
    """The daemon cannot start; the message says what to do."""


@dataclasses.dataclass
class Storage:
    """The store and the ledger for one set of settings (not yet open)."""

    store: IStore
    ledger: ILedger
    #: True when a store without its schema is simply initialised at start
    #: (an embedded file); False when that needs ``--initdb`` (a shared cluster)
    create_missing_schema: bool = False
    #: the store's SQLite database, which the embedded ledger shares, if any
    database: SQLiteDatabase | None = None


def build_storage(reactor: Any, settings: Settings) -> Storage:
    """The store named by ``settings.database`` and the ledger that goes with it.

    ``sqlite:PATH`` gives an ``SQLiteStore``; ``rethinkdb://...`` a
    ``RethinkDBStore``.  Pending deliveries go to Redis when
    ``settings.redis`` is set, else to the store's SQLite file (the same
    ``SQLiteDatabase`` object, so one thread and one connection serve both),
    or with RethinkDB to ``RETHINKDB_LEDGER_FILE``.
    """
    database: SQLiteDatabase | None = None
    store: IStore
    if settings.database.startswith("sqlite:"):
        database = SQLiteDatabase(reactor, sqlite_path(settings.database))
        store = SQLiteStore(database)
    elif settings.database.startswith("rethinkdb://"):
        from pywebhooks.store.rethinkdb import RethinkDBStore

        store = RethinkDBStore(settings.database, clock=reactor)
    else:
        raise ValueError("unsupported database URL: %r" % (settings.database,))
    ledger: ILedger
    if settings.redis:
        from pywebhooks.ledger.redis import RedisLedger

        ledger = RedisLedger(settings.redis, clock=reactor)
    elif database is not None:
        ledger = SQLiteLedger(database)
    else:
        ledger = SQLiteLedger(SQLiteDatabase(reactor, RETHINKDB_LEDGER_FILE))
    return Storage(store=store, ledger=ledger, create_missing_schema=database is not None, database=database)


def print_keys(out: IO[str], api_key: str, secret_key: str) -> None:
    """Write the admin keys as one JSON line on ``out`` (never to the log)."""
    out.write(json.dumps({"api_key": api_key, "secret_key": secret_key}, sort_keys=True) + "\n")
    out.flush()


def log_start_failure(log: Logger, failure: Failure) -> None:
    """Log why start-up failed: the message of an expected error, else the traceback."""
    if failure.check(StartupError, StoreError):
        log.critical("PyWebhooks cannot start: {reason}", reason=failure.getErrorMessage())
    else:
        log.failure("PyWebhooks cannot start", failure)


class _Cleanups:
    """What start-up opened, closed again in reverse order."""

    log = Logger()

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], Awaitable[Any] | Any]]] = []

    def push(self, what: str, close: Callable[[], Awaitable[Any] | Any]) -> None:
        """Remember to call ``close`` (named ``what`` in the log)."""
        self._steps.append((what, close))

    async def run(self) -> None:
        """Close everything, newest first; a failure is logged and the rest still close."""
        while self._steps:
            what, close = self._steps.pop()
            try:
                await maybeDeferred(close)
            except Exception:
                self.log.failure("PyWebhooks: closing the {what} failed", what=what)


class PyWebhooksService(MultiService):
    """The PyWebhooks daemon: store, ledger, delivery scheduler and HTTP API.

    ``reactor`` must provide time, threads and TCP; ``out`` (default: the
    ``sys.stdout`` of construction time) receives the admin keys the first
    time the service starts on an empty store.  With ``listen=False`` the
    embedder mounts ``self.api.resource()`` in its own site.  ``storage``
    replaces the store and ledger that ``settings.database`` and
    ``settings.redis`` name (see ``build_storage``).
    """

    log = Logger()

    def __init__(self, reactor: Any, settings: Settings, *, out: IO[str] | None = None,
                 listen: bool = True, storage: Storage | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self.settings = settings
        self._out = sys.stdout if out is None else out
        self._listen = listen
        if storage is None:
            storage = build_storage(reactor, settings)
        self.store = storage.store
        self.ledger = storage.ledger
        self._storage = storage
        self._pool = make_connection_pool(reactor, settings)
        http_client = make_http_client(reactor, settings, pool=self._pool)
        deliverer = HTTPDeliverer(http_client, reactor, settings.request_timeout)
        self.scheduler = DeliveryScheduler(reactor, self.ledger, self.store, deliverer, settings)
        self.dispatcher = Dispatcher(reactor, self.store, self.ledger, self.scheduler, settings)
        endpoints = EndpointClient(http_client, reactor, settings.request_timeout)
        self.api = PyWebhooksAPI(self.store, endpoints, self.dispatcher, settings, reactor)
        self.port: IListeningPort | None = None
        self._cleanups = _Cleanups()
        self._starting: Deferred[None] | None = None
        self._outcome: Failure | None | bool = False
        self._waiters: list[Deferred[None]] = []

    # -- start -------------------------------------------------------------

    def when_started(self) -> Deferred[None]:
        """A Deferred that fires once the service is ready (listening, if it
        listens), or fails with the reason it could not start."""
        waiter: Deferred[None] = Deferred()
        if self._outcome is False:
            self._waiters.append(waiter)
        elif isinstance(self._outcome, Failure):
            waiter.errback(self._outcome)
        else:
            waiter.callback(None)
        return waiter

    def startService(self) -> None:
        """Open everything and start serving (asynchronously; see ``when_started``)."""
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addBoth(self._start_finished)

    async def _start(self) -> None:
        self._cleanups.push("outbound connections", self._pool.closeCachedConnections)
        try:
            await self._open_store()
            await self._ensure_admin()
            await self._open(self.ledger.open(), "ledger", self.ledger.close)
            await maybeDeferred(self.scheduler.startService)
            self._cleanups.push("delivery scheduler", self.scheduler.stopService)
            if self._listen:
                await self._start_listening()
        except BaseException:
            await self._cleanups.run()
            raise

    async def _open(self, opening: Awaitable[Any], what: str, close: Callable[[], Any]) -> None:
        try:
            await opening
        except StoreError as error:
            raise StartupError("cannot open the %s: %s" % (what, error)) from error
        self._cleanups.push(what, close)

    async def _open_store(self) -> None:
        try:
            await self._open(self.store.open(), "store", self.store.close)
        except StartupError as error:
            if not isinstance(error.__cause__, DatabaseMissing):
                raise
            if not self._storage.create_missing_schema:
                raise StartupError(
                    "the database %s is not initialised: run `twist pywebhooks --initdb "
                    "--database %s` once first (it creates the schema and the admin account)"
                    % (self.settings.database, self.settings.database)
                ) from error
            self.log.info("creating the schema of the new database {database}", database=self.settings.database)
            await self._open(self.store.initialize(drop=False), "store", self.store.close)

    async def _ensure_admin(self) -> None:
        if await self.store.count_accounts() > 0:
            return
        try:
            api_key, secret_key = await create_admin(self.store, self._reactor)
        except DuplicateUsername:
            return  # another daemon sharing the store made it first
        self.log.info("created the admin account; its keys are printed on standard output, once")
        print_keys(self._out, api_key, secret_key)

    async def _start_listening(self) -> None:
        access_log = access_log_path(self.settings.access_log)
        if access_log is not None:
            try:
                open(access_log, "a").close()
            except OSError as error:
                raise StartupError("cannot open the access log %s: %s"
                                   % (access_log, error.strerror or error)) from error
        endpoint = serverFromString(self._reactor, self.settings.listen)
        try:
            self.port = await endpoint.listen(GuardedSite(
                self.api.resource(), self.settings.client_timeout, self.settings.max_body_size,
                reactor=self._reactor, access_log=self.settings.access_log,
            ))
        except CannotListenError as error:
            raise StartupError("cannot listen on %s: %s" % (self.settings.listen, error)) from error
        self._cleanups.push("listening port", self._stop_listening)
        self.log.info("PyWebhooks listening on {address}", address=str(self.port.getHost()))

    async def _stop_listening(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            await port.stopListening()

    def _start_finished(self, result: object) -> None:
        if isinstance(result, Failure):
            log_start_failure(self.log, result)
        self._outcome = result if isinstance(result, Failure) else None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    # -- stop --------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """Stop listening, let attempts in flight finish, close the ledger and the store."""
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None:
            # Let a start in progress finish first (its failure is already
            # logged, and it closed what it had opened).
            settled = self.when_started()
            settled.addErrback(lambda _: None)
            await settled
        await self._cleanups.run()
        self.log.info("PyWebhooks stopped")


class InitializeDatabase(Service):
    """``--initdb`` as a service: drop and recreate the store, empty the
    ledger, create the admin account and print its keys on ``out``.

    ``done`` fires when all of that has finished (everything closed again),
    or fails with the reason.
    """

    log = Logger()

    def __init__(self, reactor: Any, settings: Settings, *, out: IO[str] | None = None) -> None:
        self._reactor = reactor
        self.settings = settings
        self._out = sys.stdout if out is None else out
        self.done: Deferred[None] = Deferred()

    def startService(self) -> None:
        """Start the job."""
        super().startService()
        running = Deferred.fromCoroutine(self._run())
        running.addErrback(self._failed)
        running.chainDeferred(self.done)

    def _failed(self, failure: Failure) -> Failure:
        log_start_failure(self.log, failure)
        return failure

    async def _run(self) -> None:
        storage = build_storage(self._reactor, self.settings)
        cleanups = _Cleanups()
        try:
            self.log.info("dropping and recreating the database {database}", database=self.settings.database)
            cleanups.push("store", storage.store.close)
            await storage.store.initialize(drop=True)
            await storage.ledger.open()
            cleanups.push("ledger", storage.ledger.close)
            dropped = await drain_ledger(storage.ledger)
            self.log.info("dropped {count} pending deliveries", count=dropped)
            api_key, secret_key = await create_admin(storage.store, self._reactor)
        finally:
            await cleanups.run()
        self.log.info("created the admin account; its keys are printed on standard output")
        print_keys(self._out, api_key, secret_key)


async def drain_ledger(ledger: ILedger, batch: int = 1000) -> int:
    """Remove every entry of ``ledger`` (through ``ILedger`` only: claim
    everything, finish it); how many there were."""
    removed = 0
    while True:
        entries = await ledger.claim(_FOREVER, batch, 1.0)
        if not entries:
            return removed
        for entry in entries:
            await ledger.finish(entry.id)
        removed += len(entries)
