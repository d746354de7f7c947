"""Every tunable of the daemon, with the defaults of the spec (§4)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Settings:
    """The daemon's configuration, as validated by ``tap.Options``.

    The API, the dispatcher and the scheduler each read the fields they need;
    tests build one with ``Settings(**overrides)``.
    """

    listen: str = "tcp:8081"
    database: str = "sqlite:pywebhooks.sqlite3"
    redis: str | None = None
    retry_delays: tuple[float, ...] = (120.0, 120.0, 3600.0)
    request_timeout: float = 5.0
    max_failed_count: int = 250
    private_listings: bool = False
    max_body_size: int = 1024 * 1024
    apikey_reset_limit: int = 3
    apikey_reset_window: float = 3600.0
    max_in_flight: int = 100
    lease_seconds: float = 60.0
    shutdown_grace: float = 5.0
    max_registrations_per_account: int = 1000
    max_subscriptions_per_account: int = 10000
    #: CIDR networks outbound calls may never reach, on top of the built-in
    #: link-local, metadata and unspecified addresses (``private`` adds
    #: loopback and the private ranges).
    deny_targets: tuple[str, ...] = ()
    #: CIDR networks allowed even when a deny entry covers them.
    allow_targets: tuple[str, ...] = ()
    #: Seconds a client may take to send its request before it is dropped.
    client_timeout: float = 30.0
    #: Where each HTTP request is logged: ``-`` (the daemon's own log),
    #: ``off`` (nowhere) or the path of a file of its own.
    access_log: str = "-"
