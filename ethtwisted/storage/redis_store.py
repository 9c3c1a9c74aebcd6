"""
The counters, in Redis through txredisapi: the sorted set C{eth:hashes} (payload SHA256 → unix
time first seen, set only if absent) and the hash C{eth:ip_addresses} (client IP → messages
sent), as the older servers kept them.

txredisapi queues commands for as long as Redis is away; every call here has a timeout so
that the caller sees the outage instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ethtwisted.interfaces import IStatsStore, Received

DEFAULT_PREFIX = "eth:"
TIMEOUT = 5.0


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


def parse_redis_url(url: str) -> RedisURL:
    """
    Parse C{redis://[:password@]host[:port][/db]}; raise L{ValueError} saying what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError("a Redis URL is redis://host[:port][/db]")
    try:
        port = parts.port or 6379
        db = int(parts.path.lstrip("/") or 0)
    except ValueError:
        raise ValueError("the Redis URL has a bad port or database number") from None
    password = unquote(parts.password) if parts.password is not None else None
    return RedisURL(parts.hostname, port, db, password)


@implementer(IStatsStore)
class RedisStats:
    """
    L{IStatsStore} in Redis, with a configurable key prefix.
    """

    def __init__(self, url: RedisURL, reactor: IReactorTime, prefix: str = DEFAULT_PREFIX) -> None:
        self.url = url
        self.reactor = reactor
        self.hashes_key = f"{prefix}hashes"
        self.addresses_key = f"{prefix}ip_addresses"
        # txredisapi takes the global reactor when imported: import it only once it is used.
        import txredisapi

        self.redis: Any = txredisapi.lazyConnection(
            url.host,
            url.port,
            dbid=url.db,
            password=url.password,
            reconnect=True,
            connectTimeout=TIMEOUT,
            replyTimeout=TIMEOUT,
        )

    def command(self, *args: Any) -> Deferred[Any]:
        """
        One Redis command, failing after L{TIMEOUT} seconds rather than waiting for Redis.
        """
        d: Deferred[Any] = self.redis.execute_command(*args)
        return d.addTimeout(TIMEOUT, self.reactor)

    def record(self, batch: Sequence[Received]) -> Deferred[None]:
        first_seen: dict[str, float] = {}
        for r in batch:
            first_seen.setdefault(r.sha256, r.received)
        # Commands issued in one turn of the reactor leave in one write: a pipeline.
        scored = [x for sha, when in first_seen.items() for x in (when, sha)]
        calls = [self.redis.execute_command("ZADD", self.hashes_key, "NX", *scored)]
        for address, count in Counter(r.address for r in batch).items():
            calls.append(self.redis.execute_command("HINCRBY", self.addresses_key, address, count))
        d: Deferred[Any] = gatherResults(calls, consumeErrors=True)
        d.addTimeout(TIMEOUT, self.reactor)
        return d.addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        d: Deferred[Any] = self.redis.disconnect()
        return d.addCallback(lambda _: None)
