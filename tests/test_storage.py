"""
The stores as they are, on SQLite, MariaDB and Redis: what they refuse (the same on both SQL
backends, never silently changed), which failures are outages and which are rejections, an
older server's latin1 table and its block index at start-up, and a group counted once in Redis
however often it is sent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pymysql
import pytest
import pytest_twisted
import txredisapi
from twisted.enterprise.adbapi import ConnectionLost
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from ethtwisted.logs import set_verbose
from ethtwisted.protocol import Block, payload_hash
from ethtwisted.records import Received
from ethtwisted.storage import RejectedError, StartupError, is_conflict, is_rejection, wait_for
from ethtwisted.storage.migrate import CHAIN_INDEX
from ethtwisted.storage.redis_store import RedisCounters, parse_redis_url
from ethtwisted.storage.sql_pool import parse_db_url
from ethtwisted.storage.sql_store import SQLITE, SQLStore
from tests.services import MySQLDatabase, Redis

HASH = "0x" + "ab" * 32


def received(text: str, client: str = "node", block: Block | int | None = None) -> Received:
    return Received(payload_hash(text.encode("utf-8", "surrogatepass")), text, "127.0.0.1",
                    client, 1700000000.5, block)  # fmt: skip


OUTAGE, REJECTION, CONFLICT = "outage", "rejection", "conflict"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (sqlite3.OperationalError("database is locked"), OUTAGE),
        (sqlite3.OperationalError("disk I/O error"), OUTAGE),
        (sqlite3.OperationalError("attempt to write a readonly database"), OUTAGE),
        (sqlite3.OperationalError("unable to open database file"), OUTAGE),
        (sqlite3.IntegrityError("CHECK constraint failed: x"), REJECTION),
        (sqlite3.DataError("string or blob too big"), REJECTION),
        (sqlite3.OperationalError("string or blob too big"), REJECTION),
        (OverflowError("Python int too large to convert to SQLite INTEGER"), REJECTION),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), REJECTION),
        (RejectedError("payload over 65535 bytes"), REJECTION),
        (pymysql.err.OperationalError(2003, "Can't connect to MySQL server"), OUTAGE),
        (pymysql.err.OperationalError(2006, "MySQL server has gone away"), OUTAGE),
        (
            pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"),
            OUTAGE,
        ),
        (
            pymysql.err.OperationalError(1290, "The MariaDB server is running with --read-only"),
            OUTAGE,
        ),
        (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), CONFLICT),
        (pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"), CONFLICT),
        (pymysql.err.OperationalError(1040, "Too many connections"), OUTAGE),
        (
            pymysql.err.OperationalError(
                1047, "WSREP has not yet prepared node for application use"
            ),
            OUTAGE,
        ),
        (pymysql.err.InterfaceError(0, ""), OUTAGE),
        (pymysql.err.DataError(1406, "Data too long for column 'block_hash' at row 1"), REJECTION),
        (
            pymysql.err.DataError(1264, "Out of range value for column 'number' at row 1"),
            REJECTION,
        ),
        (pymysql.err.DataError(1366, "Incorrect string value: '\\xE2\\x98\\x83'"), REJECTION),
        (pymysql.err.OperationalError(4025, "CONSTRAINT `CONSTRAINT_1` failed"), REJECTION),
        (ConnectionLost(), OUTAGE),
        (defer.TimeoutError(5.0, "Deferred"), OUTAGE),
        (TimeoutError(), OUTAGE),
        (ConnectionRefusedError(), OUTAGE),
        (txredisapi.ConnectionError("Not connected"), OUTAGE),
        (txredisapi.TimeoutError("Connection timeout"), OUTAGE),
        (
            txredisapi.ResponseError("READONLY You can't write against a read only replica."),
            OUTAGE,
        ),
        (txredisapi.ResponseError("LOADING Redis is loading the dataset in memory"), OUTAGE),
        (txredisapi.ResponseError("BUSY Redis is busy running a script."), OUTAGE),
        (
            txredisapi.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
            OUTAGE,
        ),
        (
            txredisapi.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
            OUTAGE,
        ),
        (txredisapi.ResponseError("ERR hash value is not an integer"), REJECTION),
        (txredisapi.InvalidData("Error encoding unicode value"), REJECTION),
    ],
    ids=lambda v: repr(v)[:60] if isinstance(v, Exception) else str(v),
)
def test_outage_rejection_or_conflict(error: Exception, kind: str) -> None:
    """
    Connection refused, lost or timed out, a read-only or locked or busy store is an outage
    (worth retrying); a value out of range, too long, not encodable or against a constraint is
    a rejection of the data; a deadlock or lock wait timeout (how Galera reports a lost
    certification too) is a conflict with a concurrent transaction; unknown trouble counts as
    an outage.  Also when wrapped as the first failure of a Deferred list.
    """
    wrapped = defer.FirstError(Failure(error), 0)
    for form in (error, Failure(error), Failure(wrapped)):
        assert (is_rejection(form), is_conflict(form)) == (kind == REJECTION, kind == CONFLICT)


@pytest_twisted.async_yield_fixture(params=["sqlite", "mysql"])
async def sql_store(request: Any, tmp_path: Path) -> AsyncIterator[SQLStore]:
    if request.param == "sqlite":
        url = parse_db_url(f"sqlite:///{tmp_path / 's.sqlite'}")
    else:
        db: MySQLDatabase = request.getfixturevalue("mysql_db")
        url = parse_db_url(db.url).with_password(db.password)
    store = SQLStore(url, reactor)
    await store.start()
    yield store
    await store.close()


async def rows(store: SQLStore) -> list[tuple[Any, ...]]:
    return await store._query(
        "SELECT d.hash, d.payload, b.client, b.block_hash, b.block_time, c.client"
        " FROM ethereum_data d JOIN eth_blocks b ON b.hash = d.hash"
        " JOIN eth_clients c ON c.client = b.client ORDER BY d.hash"
    )


@pytest.mark.parametrize(
    "bad",
    [
        received("long hash", block=Block(1, 2, HASH + "ab" * 18, HASH, 3)),
        received("far future", block=Block(1, 2, HASH, HASH, 10**26)),
        received("huge number", block=10**20),
        received("long name", client="n" * 256),
        received("lone \ud800 surrogate"),
        received("surrogate name", client="node \udfff"),
        replace(received("long address"), address="f" * 65),
    ],
    ids=[
        "block_hash of 102",
        "timestamp 1e26",
        "number 1e20",
        "client of 256",
        "payload surrogate",
        "client surrogate",
        "address of 65",
    ],
)
@pytest_twisted.ensureDeferred
async def test_both_backends_refuse_what_a_column_cannot_hold(
    sql_store: SQLStore, bad: Received
) -> None:
    """
    A value one backend could not hold as it is (a block hash of 102 characters, a timestamp
    of 10^26, a client name over VARCHAR(255), a lone surrogate)
    is refused as a rejection on SQLite and MySQL alike, and nothing of its transaction is
    stored; neither backend truncates, clamps or replaces it.
    """
    good = received("good", block=Block(1, 2, HASH, HASH, 3))
    with pytest.raises(Exception) as info:
        await sql_store.store([good, bad])
    assert is_rejection(info.value), info.value
    assert await rows(sql_store) == []
    assert await sql_store.store([good]) == 1
    assert [r[:2] for r in await rows(sql_store)] == [(good.sha256, "good")]


@pytest_twisted.ensureDeferred
async def test_mysql_refuses_to_start_on_a_latin1_table(mysql_db: MySQLDatabase) -> None:
    """
    An older server's ethereum_data in latin1 stops start-up at once (not after --wait) with
    one line saying how to convert it, instead of acknowledging payloads stored as "?".
    """
    await deferToThread(
        mysql_db.query,
        "CREATE TABLE ethereum_data (id INTEGER PRIMARY KEY AUTO_INCREMENT,"
        " hash VARCHAR(64) NOT NULL UNIQUE, payload TEXT) DEFAULT CHARSET = latin1",
    )
    store = SQLStore(parse_db_url(mysql_db.url).with_password(mysql_db.password), reactor)
    started = reactor.seconds()
    try:
        with pytest.raises(StartupError) as info:
            await wait_for(store.start, "MySQL", 30, reactor)
    finally:
        await store.close()
    assert reactor.seconds() - started < 10
    message = str(info.value)
    assert "\n" not in message
    assert "ethereum_data (latin1)" in message
    assert "ALTER TABLE ethereum_data CONVERT TO CHARACTER SET utf8mb4" in message


@pytest_twisted.ensureDeferred
async def test_mysql_never_hides_more_than_the_duplicate(mysql_db: MySQLDatabase) -> None:
    """
    On MariaDB, a payload a latin1 table cannot hold (converted after start-up) and a value too
    long for a narrower column are errors that reject the transaction, not warnings with the
    value changed; a payload over TEXT's 65,535 bytes is refused and one of exactly that size
    kept whole; a duplicate hash is still skipped and counted as not new.
    """
    store = SQLStore(parse_db_url(mysql_db.url).with_password(mysql_db.password), reactor)
    await store.start()
    try:
        assert await store.store([received("plain")]) == 1
        assert await store.store([received("plain"), received("other")]) == 1
        await deferToThread(
            mysql_db.query, "ALTER TABLE ethereum_data CONVERT TO CHARACTER SET latin1"
        )
        with pytest.raises(pymysql.err.DataError) as info:
            await store.store([received("snow ☃")])
        assert is_rejection(info.value) and "Incorrect string value" in str(info.value)
        await deferToThread(mysql_db.query, "ALTER TABLE eth_blocks MODIFY client VARCHAR(8)")
        with pytest.raises(pymysql.err.DataError) as info:
            await store.store([received("named", client="a-long-name")])
        assert is_rejection(info.value) and "Data too long" in str(info.value)
        whole = "☃" * 21845  # 65,535 bytes: what TEXT holds, and the server's cap on MySQL
        assert store.max_payload_bytes == 65535
        with pytest.raises(RejectedError):
            await store.store([received(whole + "x")])
        await deferToThread(
            mysql_db.query, "ALTER TABLE ethereum_data CONVERT TO CHARACTER SET utf8mb4"
        )
        assert await store.store([received(whole)]) == 1
        payloads = await deferToThread(mysql_db.query, "SELECT payload FROM ethereum_data")
        assert sorted(p for (p,) in payloads) == ["other", "plain", whole]
    finally:
        await store.close()


async def block_indexes(store: SQLStore) -> dict[str, list[str]]:
    """The indexes of eth_blocks other than its primary key, each with its columns in order."""
    if store.dialect is SQLITE:
        statement = (
            "SELECT il.name, ii.name FROM pragma_index_list('eth_blocks') il"
            " JOIN pragma_index_info(il.name) ii ORDER BY il.name, ii.seqno"
        )
    else:
        statement = (
            "SELECT index_name, column_name FROM information_schema.statistics"
            " WHERE table_schema = DATABASE() AND table_name = 'eth_blocks'"
            " ORDER BY index_name, seq_in_index"
        )
    indexes: dict[str, list[str]] = {}
    for index, column in await store._query(statement):
        if index.startswith("eth_blocks_"):
            indexes.setdefault(index, []).append(column)
    return indexes


@pytest_twisted.ensureDeferred
async def test_an_older_block_table_gets_the_chain_index(sql_store: SQLStore) -> None:
    """
    eth_blocks as an older server left it, with the index eth_blocks_chain_number (chain_id,
    number), gets at start-up the chain reads' index, the same as a new table has, in its
    place; its rows stay; starting again changes nothing.
    """
    new = await block_indexes(sql_store)
    assert new == {
        "eth_blocks_first_seen": ["first_seen"],
        "eth_blocks_chain": CHAIN_INDEX.split(", "),
        "eth_blocks_id": ["id", "number"],
    }
    block = Block(1, 7, HASH, HASH, 3)
    await sql_store.store([received("seven", block=block)])
    if sql_store.dialect is SQLITE:
        older = [
            "DROP INDEX eth_blocks_chain",
            "CREATE INDEX eth_blocks_chain_number ON eth_blocks (chain_id, number)",
        ]
    else:
        older = [
            "ALTER TABLE eth_blocks DROP INDEX eth_blocks_chain,"
            " ADD INDEX eth_blocks_chain_number (chain_id, number)"
        ]
    for statement in older:
        await sql_store._query(statement)
    assert "eth_blocks_chain" not in await block_indexes(sql_store)
    for _ in range(2):
        again = SQLStore(sql_store.url, reactor)
        try:
            await again.start()
            assert await block_indexes(again) == new
            assert [r[3] for r in await rows(again)] == [HASH]
        finally:
            await again.close()


@pytest_twisted.ensureDeferred
async def test_redis_counts_a_group_once(redis: Redis) -> None:
    """
    Recording a group again under its name (a retry after the reply was lost) counts nothing
    more; another group with the same messages is counted again; first sightings keep their
    first time.
    """
    counters = RedisCounters(parse_redis_url(redis.url), reactor)
    try:
        batch = [received("a"), received("b"), replace(received("a"), received=1800000000.0)]
        await counters.record(batch, "g1")
        await counters.record(batch, "g1")
        assert redis.execute("HGET", "eth:ip_addresses", "127.0.0.1") == b"3"
        await counters.record(batch[:1], "g2")
        assert redis.execute("HGET", "eth:ip_addresses", "127.0.0.1") == b"4"
        assert redis.execute("ZCARD", "eth:hashes") == 2
        assert float(redis.execute("ZSCORE", "eth:hashes", batch[0].sha256)) == 1700000000.5
        assert 0 < redis.execute("TTL", "eth:group:g1") <= 600
    finally:
        await counters.close()


@pytest_twisted.ensureDeferred
async def test_start_up_tries_a_conflict_again_quietly() -> None:
    """
    While the stores start, a conflict with another server's transaction (Galera's deadlock
    at certification) is tried again after the usual backoff and logged at debug only; an
    outage among the attempts is still said once, as a warning.
    """
    clock = Clock()
    errors: list[Exception] = [
        pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"),
        pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"),
        pymysql.err.OperationalError(2003, "Can't connect to MySQL server"),
    ]

    def start() -> defer.Deferred[None]:
        return defer.fail(errors.pop(0)) if errors else defer.succeed(None)

    set_verbose(True)
    try:
        with capturedLogs() as events:
            waiting = defer.ensureDeferred(wait_for(start, "MySQL", 30, clock))
            for _ in range(10):
                if waiting.called:
                    break
                clock.advance(5)
    finally:
        set_verbose(False)
    assert waiting.called and waiting.result is None
    said = [(e["log_level"], formatEvent(e)) for e in events]
    assert [text for level, text in said if level >= LogLevel.warn] == [
        'waiting for MySQL: (2003, "Can\'t connect to MySQL server")'
    ]
    assert sum("Deadlock" in text for level, text in said if level == LogLevel.debug) == 2
    assert not clock.getDelayedCalls()
