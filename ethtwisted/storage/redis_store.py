"""
The counters, in Redis through txredisapi: the sorted set C{eth:hashes} (payload SHA256 → unix
time first seen, set only if absent) and the hash C{eth:ip_addresses} (client IP → messages
sent), as the older servers kept them; each group of messages is counted once, by a script
that first sets C{eth:group:<id>} (kept for ten minutes).

txredisapi queues commands for as long as Redis is away; every call here has a timeout so
that the caller sees the outage instead.  Through Sentinel (a C{sentinel://} URL), the
counters follow the master the Sentinels name (L{sentinel}), and each group counted waits for
a replica to confirm it, so that a failover right after an acknowledgement loses no count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel
from zope.interface import implementer

from ethtwisted.interfaces import ICounterReader, ICounterStore
from ethtwisted.logs import Logger, Trouble
from ethtwisted.records import Received

log = Logger()

DEFAULT_PREFIX = "eth:"
TIMEOUT = 5.0
SCAN_LIMIT = 10000
"""The most client addresses read for one answer of L{RedisCounters.address_counts}."""
GROUP_TTL = 600
"""Seconds a counted group is remembered, so that counting it again changes nothing."""
DEFAULT_SENTINEL_PORT = 26379
REPLICA_WAIT_MS = 1000
"""Through Sentinel: milliseconds a counted group waits for a replica to confirm it (C{WAIT});
a group no replica confirms in time (none is up) is acknowledged all the same, said once."""

_COUNT_GROUP = """
-- KEYS: the group's marker, the first-seen sorted set, the per-address counts.
-- ARGV: the marker's TTL, n, then n (score, member) pairs, then (address, count) pairs.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
    return 0
end
local n = tonumber(ARGV[2])
for i = 3, 2 + 2 * n, 2 do
    redis.call('ZADD', KEYS[2], 'NX', ARGV[i], ARGV[i + 1])
end
for i = 3 + 2 * n, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
return 1
"""


@dataclass(frozen=True)
class RedisURL:
    """
    A parsed C{--redis} URL.  Its C{str} never shows a password.
    """

    host: str
    port: int = 6379
    db: int = 0
    password: str | None = None

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True)
class SentinelURL:
    """
    A parsed C{--redis sentinel://} URL: the Sentinels to ask, the name they know the master
    by, the database number and the master's password.  Its C{str} never shows a password.
    """

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None

    def __str__(self) -> str:
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        return f"sentinel://{hosts}/{self.master}/{self.db}"


def parse_redis_url(url: str) -> RedisURL | SentinelURL:
    """
    Parse C{redis://[:password@]host[:port][/db]} or
    C{sentinel://[:password@]host[:port][,host[:port]...]/master[/db]}; raise L{ValueError}
    saying what is wrong.
    """
    if url.lower().startswith("sentinel://"):
        return _parse_sentinel_url(url)
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(
            "a Redis URL is redis://host[:port][/db] or sentinel://host[:port][,...]/master[/db]"
        )
    try:
        port = parts.port or 6379
        db = int(parts.path.lstrip("/") or 0)
    except ValueError:
        raise ValueError("the Redis URL has a bad port or database number") from None
    password = unquote(parts.password) if parts.password is not None else None
    return RedisURL(parts.hostname, port, db, password)


def _parse_sentinel_url(url: str) -> SentinelURL:
    usage = "a Sentinel URL is sentinel://host[:port][,host[:port]...]/master[/db]"
    rest = url[len("sentinel://") :]
    where, _, path = rest.partition("/")
    credentials, at, hosts = where.rpartition("@")
    password = None
    if at:
        # As in redis://: a password alone (the master's), or user:password of which only the
        # password counts.
        password = unquote(credentials.partition(":")[2] or credentials) or None
    sentinels = []
    for item in hosts.split(","):
        parts = urlsplit("//" + item)
        try:
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError("the Sentinel URL has a bad port") from None
        if not parts.hostname or parts.username is not None or parts.path:
            raise ValueError(usage)
        sentinels.append((parts.hostname, port))
    master, _, db_text = path.partition("/")
    master = unquote(master)
    if not master or any(c.isspace() for c in master) or "/" in db_text:
        raise ValueError(usage)
    try:
        db = int(db_text or 0)
    except ValueError:
        raise ValueError("the Sentinel URL has a bad database number") from None
    if db < 0:
        raise ValueError("the Sentinel URL has a bad database number")
    return SentinelURL(tuple(sentinels), master, db, password)


@implementer(ICounterStore, ICounterReader)
class RedisCounters:
    """
    L{ICounterStore} in Redis, with a configurable key prefix, and its L{ICounterReader}.
    """

    def __init__(
        self, url: RedisURL | SentinelURL, reactor: IReactorTime, prefix: str = DEFAULT_PREFIX
    ) -> None:
        self.url = url
        self.reactor = reactor
        self.hashes_key = f"{prefix}hashes"
        self.addresses_key = f"{prefix}ip_addresses"
        self.group_prefix = f"{prefix}group:"
        self.unconfirmed = Trouble(
            log, LogLevel.warn, "Redis: {reason}", "Redis: a replica confirms the counts again"
        )
        """Through Sentinel: said while the groups counted are confirmed by no replica."""
        self.sentinels: Any = None
        # txredisapi takes the global reactor when imported: import it only once it is used.
        if isinstance(url, SentinelURL):
            from ethtwisted.storage.sentinel import Sentinels

            self.sentinels = Sentinels(url.sentinels, reactor, TIMEOUT)
            self.redis: Any = self.sentinels.master_for(
                url.master,
                dbid=url.db,
                password=url.password,
                replyTimeout=TIMEOUT,
                convertNumbers=False,
            )
            return
        import txredisapi

        self.redis = txredisapi.lazyConnection(
            url.host,
            url.port,
            dbid=url.db,
            password=url.password,
            reconnect=True,
            connectTimeout=TIMEOUT,
            replyTimeout=TIMEOUT,
            # Members and fields are text: a SHA256 of digits only must not become a number.
            convertNumbers=False,
        )

    def command(self, *args: Any) -> Deferred[Any]:
        """
        One Redis command, failing after L{TIMEOUT} seconds rather than waiting for Redis.
        """
        d: Deferred[Any] = self.redis.execute_command(*args)
        return d.addTimeout(TIMEOUT, self.reactor)

    def record(self, batch: Sequence[Received], group: str) -> Deferred[None]:
        # One script, run atomically by Redis: a group whose reply was lost (a timeout) and that
        # is therefore counted again finds its marker and changes nothing.
        first_seen: dict[str, float] = {}
        for r in batch:
            first_seen.setdefault(r.sha256, r.received)
        scored = [x for sha, when in first_seen.items() for x in (when, sha)]
        counts = [x for pair in Counter(r.address for r in batch).items() for x in pair]
        keys = [self.group_prefix + group, self.hashes_key, self.addresses_key]
        args = [GROUP_TTL, len(first_seen), *scored, *counts]
        d: Deferred[Any] = maybeDeferred(self.redis.eval, _COUNT_GROUP, keys, args)
        d.addTimeout(TIMEOUT, self.reactor)
        if self.sentinels is None:
            return d.addCallback(lambda _: None)
        # Sent at once behind the script, on the same connection: WAIT counts the replicas that
        # have what this connection wrote, the group included.
        confirmed = self.command("WAIT", 1, REPLICA_WAIT_MS)
        both = gatherResults([d, confirmed], consumeErrors=True)
        return both.addCallback(lambda replies: self._confirmed(int(replies[1])))

    def _confirmed(self, replicas: int) -> None:
        if replicas >= 1:
            self.unconfirmed.ended()
        else:
            self.unconfirmed.say(
                f"no replica confirmed the counts within {REPLICA_WAIT_MS} ms:"
                " a failover now would lose them"
            )

    def close(self) -> Deferred[None]:
        closing: list[Deferred[Any]] = [self.redis.disconnect()]
        if self.sentinels is not None:
            closing.append(self.sentinels.disconnect())
        return gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)

    # -- reading back (ICounterReader) ------------------------------------------------------------

    def ping(self) -> Deferred[None]:
        return self.command("PING").addCallback(lambda _: None)

    def latest_hashes(self, limit: int) -> Deferred[list[tuple[str, float]]]:
        if limit < 1:
            return succeed([])  # ZREVRANGE would read "0 to -1" as everything
        d = self.command("ZREVRANGE", self.hashes_key, 0, limit - 1, "WITHSCORES")
        return d.addCallback(_pairs, float)

    def address_counts(self, limit: int) -> Deferred[list[tuple[str, int]]]:
        return Deferred.fromCoroutine(self._address_counts(limit))

    async def _address_counts(self, limit: int) -> list[tuple[str, int]]:
        # HSCAN rather than HGETALL: however many addresses there are, one answer reads at most
        # SCAN_LIMIT of them.
        counts: dict[str, int] = {}
        cursor: Any = 0
        while True:
            cursor, fields = await self.command("HSCAN", self.addresses_key, cursor, "COUNT", 1000)
            counts.update(_pairs(fields, int))
            if str(cursor) == "0" or len(counts) >= SCAN_LIMIT:
                break
        return sorted(counts.items(), key=lambda r: (-r[1], r[0]))[:limit]


def _pairs(flat: Sequence[Any], convert: Any) -> list[tuple[str, Any]]:
    """
    C{[a, 1, b, 2]} as C{[(a, convert(1)), (b, convert(2))]}, with text keys.
    """
    keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in flat[::2]]
    return [(k, convert(v)) for k, v in zip(keys, flat[1::2], strict=True)]
