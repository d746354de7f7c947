"""``RedisLedger``: pending deliveries in Redis (``--redis``), shareable by daemons.

Four keys under a prefix:

- ``<prefix>pending``: sorted set, delivery id -> due time;
- ``<prefix>leased``: sorted set, delivery id -> lease expiry (claimed entries);
- ``<prefix>payloads``: hash, delivery id -> the ``PendingDelivery`` as JSON;
- ``<prefix>holders``: hash, leased delivery id -> the ledger (daemon) holding
  the lease, a random id per ``RedisLedger``.

Every change is one Lua script, so it is atomic however many daemons share
the keys (``finish`` and ``reschedule`` are group-committed, many entries
per script call, when attempts end together): a claim moves the earliest entries whose due time or lease expiry
has passed from either set into ``leased`` in one step, which is how two
daemons never get the same entry and how a killed daemon's leased entries
are taken over once their lease expires.  A release or a reschedule only
acts on entries whose lease is still the caller's: one that comes late,
after another daemon took the entry over, leaves that daemon's lease
alone.  Durability is Redis's own: run it with ``appendonly yes``.

txredisapi always uses the global reactor; it keeps reconnecting on its own
(with a short back-off) after Redis goes away.  While no connection is up
every call fails at once with ``StoreUnavailable`` instead of waiting.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
import uuid
from typing import Any, Iterable

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from pywebhooks.batching import GroupCommit
from pywebhooks.errors import StoreUnavailable
from pywebhooks.ledger.interface import ILedger, PendingDelivery

# Adds and finishes name many entries at once (a fan-out, a group commit):
# each Redis command takes a chunk of them rather than one entry each, so
# Redis dispatches (and appends to its log) a few commands per chunk instead
# of four per entry (a variadic HSET needs Redis 4.0 or later).  A chunk
# stays well under Lua's limit of values that ``unpack`` can pass.
_ADD = """
local lease, holder, chunk = ARGV[1], ARGV[2], 1000
for first = 3, #ARGV, 3 * chunk do
  local payloads, ids, scores, holders = {}, {}, {}, {}
  for i = first, math.min(first + 3 * chunk - 1, #ARGV), 3 do
    local id = ARGV[i]
    payloads[#payloads + 1] = id
    payloads[#payloads + 1] = ARGV[i + 2]
    ids[#ids + 1] = id
    scores[#scores + 1] = lease == '' and ARGV[i + 1] or lease
    scores[#scores + 1] = id
    if lease ~= '' then
      holders[#holders + 1] = id
      holders[#holders + 1] = holder
    end
  end
  redis.call('HSET', KEYS[3], unpack(payloads))
  if lease == '' then
    redis.call('ZREM', KEYS[2], unpack(ids))
    redis.call('HDEL', KEYS[4], unpack(ids))
    redis.call('ZADD', KEYS[1], unpack(scores))
  else
    redis.call('ZREM', KEYS[1], unpack(ids))
    redis.call('ZADD', KEYS[2], unpack(scores))
    redis.call('HSET', KEYS[4], unpack(holders))
  end
end
return (#ARGV - 2) / 3
"""

_CLAIM = """
local now, limit, expiry, holder = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local picked = {}
local i, j = 1, 1
while #picked < limit and (i <= #due or j <= #lapsed) do
  if j > #lapsed or (i <= #due and tonumber(due[i + 1]) <= tonumber(lapsed[j + 1])) then
    picked[#picked + 1] = due[i]
    i = i + 2
  else
    picked[#picked + 1] = lapsed[j]
    j = j + 2
  end
end
local payloads = {}
for _, id in ipairs(picked) do
  redis.call('ZREM', KEYS[1], id)
  local payload = redis.call('HGET', KEYS[3], id)
  if payload then
    redis.call('ZADD', KEYS[2], expiry, id)
    redis.call('HSET', KEYS[4], id, holder)
    payloads[#payloads + 1] = payload
  else
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[4], id)
  end
end
return payloads
"""

_RESCHEDULE = """
local holder, stored = ARGV[1], 0
for i = 2, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[4], ARGV[i])
  if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1 and (not current or current == holder) then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('HDEL', KEYS[4], ARGV[i])
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    stored = stored + 1
  end
end
return stored
"""

_FINISH = """
local chunk = 1000
for first = 1, #ARGV, chunk do
  local last = math.min(first + chunk - 1, #ARGV)
  redis.call('HDEL', KEYS[3], unpack(ARGV, first, last))
  redis.call('ZREM', KEYS[1], unpack(ARGV, first, last))
  redis.call('ZREM', KEYS[2], unpack(ARGV, first, last))
  redis.call('HDEL', KEYS[4], unpack(ARGV, first, last))
end
return #ARGV
"""

_RELEASE = """
local holder, released = ARGV[1], 0
for i = 2, #ARGV do
  local current = redis.call('HGET', KEYS[4], ARGV[i])
  if (not current or current == holder) and redis.call('ZREM', KEYS[2], ARGV[i]) == 1 then
    redis.call('HDEL', KEYS[4], ARGV[i])
    local payload = redis.call('HGET', KEYS[3], ARGV[i])
    if payload then
      redis.call('ZADD', KEYS[1], cjson.decode(payload)['due'], ARGV[i])
      released = released + 1
    end
  end
end
return released
"""

_NEXT_DUE = """
local due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local lapsed = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {due[2] or false, lapsed[2] or false}
"""

_COUNT = "return redis.call('HLEN', KEYS[3])"


@dataclasses.dataclass(frozen=True)
class RedisAddress:
    """Where ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` points."""

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """Parse a ``redis://`` URL; ``ValueError`` if it is not one."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError("not a redis:// URL: %r" % (parts.scheme + "://" + (parts.hostname or ""),))
        path = parts.path.strip("/")
        try:
            port = parts.port or 6379
            db = int(path) if path else 0
        except ValueError as error:
            raise ValueError("invalid redis:// URL port or database number") from error
        return cls(
            host=parts.hostname or "localhost",
            port=port,
            db=db,
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
        )


#: Seconds between looks at the pool while ``open()`` waits for a connection.
_CONNECT_POLL = 0.02


def _score(value: float) -> str:
    """A sorted-set score that round-trips a float exactly."""
    return repr(float(value))


@implementer(ILedger)
class RedisLedger:
    """The ledger in Redis through a txredisapi connection pool."""

    log = Logger()

    #: Connections kept open (commands are pipelined on them).
    pool_size = 2
    #: Reconnection back-off after Redis went away, first and longest delay.
    reconnect_initial_delay = 0.2
    reconnect_max_delay = 2.0

    def __init__(self, url: str, key_prefix: str = "pywebhooks:", *,
                 clock: IReactorTime | None = None, timeout: float = 5.0) -> None:
        self.address = RedisAddress.parse(url)
        self._keys = [key_prefix + "pending", key_prefix + "leased", key_prefix + "payloads",
                      key_prefix + "holders"]
        #: who holds the leases this ledger takes, as opposed to other daemons'
        self.holder = uuid.uuid4().hex
        self._clock = clock
        self._timeout = timeout
        self._redis: Any = None
        self._finishes: GroupCommit[str, None] = GroupCommit(self._finish_all)
        self._reschedules: GroupCommit[PendingDelivery, None] = GroupCommit(self._reschedule_all)

    async def open(self) -> None:
        """Start the connection pool and wait (up to the timeout, given a
        ``clock``) for the first connection; ``StoreUnavailable`` if none."""
        address = self.address
        self._redis = txredisapi.lazyConnectionPool(
            host=address.host, port=address.port, dbid=address.db, poolsize=self.pool_size,
            reconnect=True, password=address.password, username=address.username,
            connectTimeout=self._timeout, replyTimeout=self._timeout, convertNumbers=False,
        )
        # The pool's factory owns the back-off and knows how many connections are up.
        factory = self._redis._factory
        factory.initialDelay = self.reconnect_initial_delay
        factory.maxDelay = self.reconnect_max_delay
        if self._clock is None:
            return  # calls fail with StoreUnavailable until the pool has connected
        deadline = self._clock.seconds() + self._timeout
        while not self.connected and self._clock.seconds() < deadline:
            await deferLater(self._clock, _CONNECT_POLL, lambda: None)
        if not self.connected:
            await self.close()
            raise StoreUnavailable("Redis at %s:%d is unreachable" % (address.host, address.port))

    async def close(self) -> None:
        """Close every connection and stop reconnecting."""
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.disconnect()

    @property
    def connected(self) -> bool:
        """True while at least one connection to Redis is up."""
        return self._redis is not None and self._redis._factory.size > 0

    async def _run(self, script: str, args: list[Any]) -> Any:
        if not self.connected:
            raise StoreUnavailable("Redis is unreachable")
        try:
            return await self._redis.eval(script, self._keys, args)
        except txredisapi.RedisError as error:
            self.log.warn("redis ledger call failed: {error}", error=str(error))
            raise StoreUnavailable("Redis failed: %s" % (error,)) from error

    async def add(self, entries: Iterable[PendingDelivery], leased_until: float | None = None) -> None:
        """Add (or replace) entries atomically; already leased until
        ``leased_until`` if given (the caller attempts them itself)."""
        args: list[Any] = ["" if leased_until is None else _score(leased_until), self.holder]
        for entry in entries:
            args.extend((entry.id, _score(entry.due), entry.to_json()))
        if len(args) > 2:
            await self._run(_ADD, args)

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[PendingDelivery]:
        """Lease up to ``limit`` entries due (or whose lease lapsed) at ``now``."""
        if limit <= 0:
            return []
        payloads = await self._run(_CLAIM, [_score(now), limit, _score(now + lease_seconds), self.holder])
        return [PendingDelivery.from_json(payload) for payload in payloads or []]

    def reschedule(self, entry: PendingDelivery) -> Deferred[None]:
        """Store the entry's new attempt and due time and drop its lease
        (group-committed with other reschedules); nothing if another ledger
        holds the lease now."""
        return self._reschedules.submit(entry)

    async def _reschedule_all(self, entries: list[PendingDelivery]) -> None:
        args: list[Any] = [self.holder]
        for entry in entries:
            args.extend((entry.id, _score(entry.due), entry.to_json()))
        await self._run(_RESCHEDULE, args)

    def finish(self, delivery_id: str) -> Deferred[None]:
        """Remove the entry (group-committed with other finishes)."""
        return self._finishes.submit(delivery_id)

    async def _finish_all(self, ids: list[str]) -> None:
        await self._run(_FINISH, ids)

    async def release(self, delivery_ids: Iterable[str]) -> None:
        """Drop the leases of these entries (those this ledger still holds):
        due again at once."""
        ids = list(delivery_ids)
        if ids:
            await self._run(_RELEASE, [self.holder, *ids])

    async def next_due(self) -> float | None:
        """The earliest due time or lease expiry, None when empty."""
        scores = await self._run(_NEXT_DUE, [])
        found = [float(score) for score in scores or [] if score is not None]
        return min(found, default=None)

    async def count(self) -> int:
        """How many entries are held (pending and leased)."""
        return int(await self._run(_COUNT, []))
