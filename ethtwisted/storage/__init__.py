"""
Where received payloads go: SQL (durable, L{sql_store}) and Redis (counters, L{redis_store});
L{memory_store} answers as both do, in memory, for tests.
"""

from __future__ import annotations

import itertools
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ethtwisted.frames import Status, SyncProgress
from ethtwisted.logs import Logger, Trouble, describe
from ethtwisted.protocol import MAX_BLOCK_INT, Block, block_problem

if TYPE_CHECKING:
    from ethtwisted.records import Received

log = Logger()

_T = TypeVar("_T")

MAX_CLIENT_LENGTH = 255
"""Characters in a client name (C{VARCHAR(255)})."""
MAX_ADDRESS_LENGTH = 64

_start_delay = backoffPolicy(initialDelay=0.25, maxDelay=5.0, factor=2.0, jitter=lambda: 0.0)
"""The wait after the n-th failed attempt to start a store (0 for the first)."""


class StartupError(Exception):
    """
    A store could not be reached in time, or cannot be used as it is; the message is the one
    line to show.
    """


class RejectedError(Exception):
    """
    A store refused a message for what it holds (not for an outage); the message says why.
    """


_MYSQL_REJECTIONS = frozenset({1048, 1264, 1265, 1292, 1300, 1366, 1406, 4025})
"""MySQL errors about a value: NULL in a NOT NULL column, out of range, truncated, incorrect
value or string, too long, CHECK constraint failed."""

_REDIS_REJECTIONS = (
    "ERR hash value is not an integer",
    "ERR increment or decrement would overflow",
)
"""Redis error replies about a value (a client's count); any other reply is about Redis."""

_MYSQL_CONFLICTS = frozenset({1205, 1213})
"""MySQL errors about a concurrent transaction: lock wait timeout, and deadlock, which is also
how a Galera node reports a transaction that lost certification to one committed on another
node."""


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """
    C{items} in order, C{size} at a time (the last chunk may hold fewer): the values of one
    statement each, under a database's limit of placeholders or subqueries.
    """
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _cause(error: Failure | BaseException) -> Any:
    value: Any = error.value if isinstance(error, Failure) else error
    while hasattr(value, "subFailure"):  # the first failure of a Deferred list
        value = value.subFailure.value
    return value


def is_conflict(error: Failure | BaseException) -> bool:
    """
    Whether C{error}, from the SQL store, says that a concurrent transaction got in the way
    (MySQL's deadlock or lock wait timeout, a Galera certification failure): neither about the
    data nor an outage, the same transaction tried again at once is expected to succeed.
    """
    value = _cause(error)
    mysql = sys.modules.get("pymysql.err")
    return (
        mysql is not None
        and isinstance(value, mysql.MySQLError)
        and bool(value.args)
        and value.args[0] in _MYSQL_CONFLICTS
    )


def is_rejection(error: Failure | BaseException) -> bool:
    """
    Whether C{error}, from the SQL store or Redis, refuses the data it was given (retrying the
    same data cannot succeed) rather than tells of an outage (connection refused, lost or timed
    out, read-only, locked, busy: worth retrying).  What is not known to be about the data is
    an outage: retrying it is what the collector always did.
    """
    value = _cause(error)
    if isinstance(value, RejectedError | UnicodeError | OverflowError):
        # Our own checks; a lone surrogate cannot be encoded; an int too large to bind.
        return True
    if isinstance(value, sqlite3.DataError | sqlite3.IntegrityError):
        return True
    if isinstance(value, sqlite3.Error):
        # Binding a value the driver cannot take, a text over SQLite's length limit.
        text = str(value)
        return "binding parameter" in text or "too big" in text
    mysql = sys.modules.get("pymysql.err")
    if mysql is not None and isinstance(value, mysql.MySQLError):
        if isinstance(value, mysql.DataError | mysql.IntegrityError):
            return True
        return bool(value.args) and value.args[0] in _MYSQL_REJECTIONS
    redis = sys.modules.get("txredisapi")
    if redis is not None and isinstance(value, redis.InvalidData):
        return True
    if redis is not None and isinstance(value, redis.ResponseError):
        return str(value).startswith(_REDIS_REJECTIONS)
    return False


def row_problem(r: Received, max_payload_bytes: int) -> str | None:
    """
    Why C{r} cannot be stored as it is, or L{None}: what a column of one backend could not
    hold, refused alike by every store (SQLite would keep it, MySQL would refuse it).
    """
    try:
        size = len(r.payload.encode("utf-8"))
        r.client.encode("utf-8")
    except UnicodeEncodeError:
        return "text that is not valid Unicode (a lone surrogate)"
    if size > max_payload_bytes:
        return f"payload over {max_payload_bytes} bytes"
    if not 0 < len(r.client) <= MAX_CLIENT_LENGTH:
        return f"client name not 1 to {MAX_CLIENT_LENGTH} characters"
    if len(r.address) > MAX_ADDRESS_LENGTH:
        return f"address over {MAX_ADDRESS_LENGTH} characters"
    if isinstance(r.block, Block):
        return block_problem(r.block)
    if isinstance(r.block, int) and not 0 <= r.block <= MAX_BLOCK_INT:
        return "number is out of range"
    return None


def status_events(old: Status | None, new: Status) -> list[tuple[str, str]]:
    """
    The changes from a client's status C{old} (L{None}: it reported none yet) to C{new}, as
    (kind, detail) pairs of L{ethtwisted.records.EVENT_KINDS}: only between values both
    report (a value the node does not say is no change).
    """
    if old is None:
        return []
    events = []
    if None not in (old.client_version, new.client_version) and (
        old.client_version != new.client_version
    ):
        events.append(("version_changed", f"{old.client_version} -> {new.client_version}"))
    if old.chain_id is not None and new.chain_id is not None and old.chain_id != new.chain_id:
        events.append(("chain_changed", f"{old.chain_id} -> {new.chain_id}"))
    if old.syncing is not None and new.syncing is not None:
        was, now = isinstance(old.syncing, SyncProgress), isinstance(new.syncing, SyncProgress)
        if now and not was:
            assert isinstance(new.syncing, SyncProgress)
            p = new.syncing
            events.append(("sync_started", f"at {p.current} of {p.highest}"))
        elif was and not now:
            events.append(("sync_finished", ""))
    if old.peers is not None and new.peers is not None:
        if old.peers > 0 and new.peers == 0:
            events.append(("peers_lost", f"{old.peers} -> 0"))
        elif old.peers == 0 and new.peers > 0:
            events.append(("peers_back", f"0 -> {new.peers}"))
    return events


FINALIZED_REPORT_AGE = 60.0
"""Seconds a node's status counts for its chain's finalized number (L{fleet_finalized}): a client
sends it every C{--status-interval} (15 s by default) while its node answers, and one heard
nothing from for this long is C{silent} in the fleet view by default."""


def fleet_finalized(
    reports: Iterable[tuple[int | None, int | None]], limit: int
) -> dict[int, int]:
    """
    Per chain id (the first C{limit} by id), the finalized number of the fleet from C{reports},
    one (chain id, finalized number) per client that reported a status lately: the largest N
    that at least max(2, ceil(k/2)) of the chain's k reporting clients reach, so that one node
    far ahead (or a minority of them) marks nothing finalized.  With k = 1 that one's number,
    as nothing can be checked against it.  A report lacking either number counts for nothing.
    """
    numbers: dict[int, list[int]] = {}
    for chain_id, finalized in reports:
        if chain_id is not None and finalized is not None:
            numbers.setdefault(chain_id, []).append(finalized)
    quorum: dict[int, int] = {}
    for chain_id in sorted(numbers)[:limit]:
        ranked = sorted(numbers[chain_id], reverse=True)
        k = len(ranked)
        quorum[chain_id] = ranked[min(max(2, (k + 1) // 2), k) - 1]
    return quorum


async def wait_for(
    start: Callable[[], Deferred[None]], what: str, wait: float, reactor: IReactorTime
) -> None:
    """
    Call C{start} until it succeeds, with capped backoff, for up to C{wait} seconds; then raise
    L{StartupError} with the last reason.  A L{StartupError} from C{start} itself (a store that
    answers but cannot be used) ends the wait at once.  A conflict with another server's
    transaction (L{is_conflict}: several servers creating the tables at once on Galera) is no
    outage: it is tried again as quietly as during ingest, at debug.
    """
    deadline = reactor.seconds() + wait
    trouble = Trouble(log, LogLevel.warn, "waiting for {what}: {reason}")
    for attempt in itertools.count():
        delay = _start_delay(attempt)
        try:
            await start()
            return
        except (CancelledError, StartupError):
            raise
        except Exception as e:
            reason, conflict = describe(e), is_conflict(e)
        if reactor.seconds() + delay > deadline:
            raise StartupError(f"cannot reach {what} within {wait:g} s: {reason}")
        if conflict:
            log.debug("starting {what}: {reason}; trying again", what=what, reason=reason)
        else:
            trouble.say(reason, what=what)
        await deferLater(reactor, delay)
