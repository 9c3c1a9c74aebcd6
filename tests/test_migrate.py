"""
An older store's tables (a sighting a row per client name and SHA256) brought to today's at
start-up, on SQLite and on MariaDB: every sighting still there, read as before; the sightings
by day on MariaDB, old days dropped whole.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from ethtwisted.protocol import Block, block_json, payload_hash
from ethtwisted.records import Received
from ethtwisted.storage import StartupError
from ethtwisted.storage.sql_pool import DatabaseURL, parse_db_url
from ethtwisted.storage.sql_store import SQLStore
from tests.services import MySQLDatabase

DAY = 86400
CLIENTS = ("node-a", "Node-A", "node-b", "old-client", "x" * 255)
VIAS = ("subscription", "poll", "backfill", "unknown")

OLDER_SQLITE = [
    "CREATE TABLE ethereum_data (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " hash VARCHAR(64) NOT NULL UNIQUE, payload TEXT)",
    "CREATE TABLE eth_blocks (hash VARCHAR(64) NOT NULL PRIMARY KEY, first_seen DOUBLE NOT NULL,"
    " client VARCHAR(255) NOT NULL, chain_id BIGINT, number BIGINT, block_hash VARCHAR(66),"
    " parent_hash VARCHAR(66), block_time BIGINT)",
    "CREATE INDEX eth_blocks_first_seen ON eth_blocks (first_seen)",
    "CREATE INDEX eth_blocks_chain"
    " ON eth_blocks (chain_id, number, block_hash, parent_hash, first_seen, hash)",
    "CREATE TABLE eth_sightings (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " client VARCHAR(255) NOT NULL, hash VARCHAR(64) NOT NULL, chain_id BIGINT, number BIGINT,"
    " block_hash VARCHAR(66), seen_at DOUBLE NOT NULL, received DOUBLE NOT NULL,"
    " via VARCHAR(16) NOT NULL, UNIQUE (client, hash))",
    "CREATE INDEX eth_sightings_hash ON eth_sightings (hash, seen_at)",
    "CREATE INDEX eth_sightings_client ON eth_sightings (client, seen_at)",
    "CREATE INDEX eth_sightings_received ON eth_sightings (received)",
]
OLDER_MYSQL = [
    "CREATE TABLE ethereum_data (id INTEGER PRIMARY KEY AUTO_INCREMENT,"
    " hash VARCHAR(64) NOT NULL UNIQUE, payload TEXT) DEFAULT CHARSET = utf8mb4",
    "CREATE TABLE eth_blocks (hash VARCHAR(64) NOT NULL PRIMARY KEY, first_seen DOUBLE NOT NULL,"
    " client VARCHAR(255) NOT NULL, chain_id BIGINT, number BIGINT, block_hash VARCHAR(66),"
    " parent_hash VARCHAR(66), block_time BIGINT, INDEX eth_blocks_first_seen (first_seen),"
    " INDEX eth_blocks_chain (chain_id, number, block_hash, parent_hash, first_seen, hash))"
    " DEFAULT CHARSET = utf8mb4",
    "CREATE TABLE eth_sightings (id BIGINT PRIMARY KEY AUTO_INCREMENT,"
    " client VARCHAR(255) COLLATE utf8mb4_bin NOT NULL, hash VARCHAR(64) NOT NULL,"
    " chain_id BIGINT, number BIGINT, block_hash VARCHAR(66), seen_at DOUBLE NOT NULL,"
    " received DOUBLE NOT NULL, via VARCHAR(16) NOT NULL,"
    " UNIQUE INDEX eth_sightings_client_hash (client, hash),"
    " INDEX eth_sightings_hash (hash, seen_at), INDEX eth_sightings_client (client, seen_at),"
    " INDEX eth_sightings_received (received)) DEFAULT CHARSET = utf8mb4",
]


class Older:
    """A database as an older server left it, to fill and to open."""

    def __init__(
        self, url: DatabaseURL, run: Callable[[str, tuple[Any, ...]], list[Any]], p: str
    ) -> None:
        self.url = url
        self.run = run
        self.p = p

    def fill(self, now: float, blocks: int = 12) -> list[tuple[str, str, float, str]]:
        """
        The older tables with C{blocks} blocks over the last four days, each seen by some of
        the clients; the sightings as (SHA256, client, seen_at, via).
        """
        for statement in OLDER_SQLITE if self.p == "?" else OLDER_MYSQL:
            self.run(statement, ())
        p, sightings = self.p, []
        for n in range(blocks):
            block = Block(1, n, f"0x{n:064x}", f"0x{n + 1:064x}", 1_600_000_000 + n)
            payload = block_json(block).decode()
            sha256 = payload_hash(payload.encode())
            first = now - (3 - n * 4 // blocks) * DAY - 100 + n
            self.run(f"INSERT INTO ethereum_data (hash, payload) VALUES ({p}, {p})",
                     (sha256, payload))  # fmt: skip
            self.run(
                "INSERT INTO eth_blocks (hash, first_seen, client, chain_id, number, block_hash,"
                f" parent_hash, block_time) VALUES ({', '.join([p] * 8)})",
                (sha256, first, CLIENTS[0], 1, n, block.hash, block.parent_hash, 0),
            )
            for c, client in enumerate(CLIENTS[: 2 + n % 4]):
                seen, via = first + c * 0.125 + 0.001, VIAS[(n + c) % 4]
                self.run(
                    "INSERT INTO eth_sightings (client, hash, chain_id, number, block_hash,"
                    f" seen_at, received, via) VALUES ({', '.join([p] * 8)})",
                    (client, sha256, 1, n, block.hash, seen, seen + 0.5, via),
                )
                sightings.append((sha256, client, seen, via))
        return sightings

    def tables(self) -> set[str]:
        if self.p == "?":
            rows = self.run("SELECT name FROM sqlite_master WHERE type = 'table'", ())
        else:
            rows = self.run("SHOW TABLES", ())
        return {name for (name,) in rows}

    async def start(self) -> SQLStore:
        store = SQLStore(self.url, reactor)
        await store.start()
        return store


@pytest_twisted.async_yield_fixture(params=["sqlite", "mysql"])
async def older(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Older]:
    """An empty database of each dialect, reached as an older server would."""
    if request.param == "sqlite":
        path = tmp_path / "older.sqlite"

        def run(statement: str, args: tuple[Any, ...]) -> list[Any]:
            with sqlite3.connect(path) as db:
                return db.execute(statement, args).fetchall()

        yield Older(parse_db_url(f"sqlite:///{path}"), run, "?")
    else:
        db: MySQLDatabase = request.getfixturevalue("mysql_db")
        yield Older(parse_db_url(db.url).with_password(db.password), db.query, "%s")


async def stored(store: SQLStore, hashes: set[str]) -> list[tuple[str, str, float, str]]:
    """Every sighting of C{hashes} as the ledger reads it back."""
    found = []
    for sha256 in sorted(hashes):
        for s in await store.ledger.sightings(sha256, 100):
            found.append((sha256, s.client, s.seen_at, s.via))
    return found


@pytest_twisted.ensureDeferred
async def test_an_older_store_is_migrated_at_start_up_with_every_sighting(older: Older) -> None:
    """
    Over an older store's tables, start-up gives each block its payload's id and moves every
    sighting into today's table (its time to the millisecond, how it came, its client, names
    differing only in case apart), drops the older table once they are all there, and reads
    each payload's sightings as before; new sightings join them; starting again changes
    nothing.
    """
    now = reactor.seconds()
    before = await deferToThread(older.fill, now)
    hashes = {h for h, *_ in before}
    store = await older.start()
    try:
        expected = sorted((h, c, pytest.approx(t, abs=0.0005), v) for h, c, t, v in before)
        assert sorted(await stored(store, hashes)) == expected
        assert "eth_sightings_old" not in await deferToThread(older.tables)
        ((count,),) = await store._query("SELECT COUNT(*) FROM eth_sightings")
        assert count == len(before)
        (missing,) = await store._query("SELECT COUNT(*) FROM eth_blocks WHERE id IS NULL")
        assert missing == (0,)
    finally:
        await store.close()
    again = await older.start()
    try:
        assert sorted(await stored(again, hashes)) == expected
        late = Received(before[0][0], "", "127.0.0.1", "newcomer", now, None)
        await again.store([late])
        assert len(await stored(again, hashes)) == len(before) + 1
    finally:
        await again.close()


@pytest_twisted.ensureDeferred
async def test_sightings_without_their_payload_stop_the_migration(older: Older) -> None:
    """
    An older sighting whose payload is not stored cannot be moved: start-up stops with a
    message saying so, and the older table stays, every row in it.
    """
    before = await deferToThread(older.fill, reactor.seconds(), 2)
    await deferToThread(older.run, f"DELETE FROM eth_blocks WHERE hash = {older.p}",
                        (before[0][0],))  # fmt: skip
    store = SQLStore(older.url, reactor)
    try:
        with pytest.raises(StartupError, match="eth_sightings_old"):
            await store.start()
    finally:
        await store.close()
    rows = await deferToThread(older.run, "SELECT COUNT(*) FROM eth_sightings_old", ())
    assert rows == [(len(before),)]


@pytest_twisted.ensureDeferred
async def test_mysql_keeps_the_sightings_by_day_and_drops_old_days_whole(
    mysql_db: MySQLDatabase,
) -> None:
    """
    On MariaDB the sightings are partitioned by the day their payload was first seen, the
    days ahead made at start-up; pruning drops the days before the cut whole (and makes the
    days ahead again), and leaves the rest.
    """
    older = Older(parse_db_url(mysql_db.url).with_password(mysql_db.password), mysql_db.query,
                  "%s")  # fmt: skip
    now = reactor.seconds()
    before = await deferToThread(older.fill, now)
    store = await older.start()
    try:
        today = int(now // DAY)
        names = await deferToThread(
            mysql_db.query,
            "SELECT partition_name FROM information_schema.partitions"
            " WHERE table_schema = DATABASE() AND table_name = 'eth_sightings'",
        )
        days = {name for (name,) in names}
        assert {f"d{today - 3}", f"d{today}", f"d{today + 2}", "pmax"} <= days
        recent = [s for s in before if s[2] >= (today - 1) * DAY]
        assert 0 < len(recent) < len(before)
        await store.ledger.prune_sightings((today - 1) * DAY, 1)
        ((count,),) = await store._query("SELECT COUNT(*) FROM eth_sightings")
        assert count == len(recent)
        names = await deferToThread(
            mysql_db.query,
            "SELECT partition_name FROM information_schema.partitions"
            " WHERE table_schema = DATABASE() AND table_name = 'eth_sightings'",
        )
        assert f"d{today - 2}" not in {name for (name,) in names}
    finally:
        await store.close()
