"""
An older store brought to today's tables at start-up, nothing lost.  On MySQL,
L{check_charset} refuses tables that cannot hold every payload as sent, and
L{upgrade_chain_index} gives C{eth_blocks} the chain reads' index.  L{before_schema} gives
C{eth_blocks} the payloads' ids and puts the older C{eth_sightings} (a row per client name and
SHA256) aside as C{eth_sightings_old}; the schema then creates today's tables; L{after_schema}
moves every older sighting into them, a chunk per transaction, checks that each one is there,
and only then drops the older table.  Each step looks at what is there first, so a start-up
that was interrupted, or another server doing the same at the same time, just goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ethtwisted.logs import Logger
from ethtwisted.storage import StartupError, partitions

log = Logger(namespace="ethtwisted.storage")

CHUNK = 50_000
"""Older sightings moved per transaction (by their id)."""
_OLD_INDEXES = ("eth_sightings_hash", "eth_sightings_client", "eth_sightings_received")
_VIA = "CASE o.via WHEN 'subscription' THEN 1 WHEN 'poll' THEN 2 WHEN 'backfill' THEN 3 ELSE 0 END"


def check_charset(txn: Any, tables: Sequence[str]) -> None:
    """
    Raise L{StartupError} if one of our tables keeps text in a character set other than
    utf8mb4 (an older server's latin1 table): MySQL would refuse, or change, what it cannot
    represent, and the stored payload would no longer match its SHA256.
    """
    txn.execute(
        "SELECT table_name, MIN(character_set_name) FROM information_schema.columns"
        " WHERE table_schema = DATABASE()"
        f" AND table_name IN ({', '.join(['%s'] * len(tables))})"
        " AND character_set_name IS NOT NULL AND character_set_name <> 'utf8mb4'"
        " GROUP BY table_name ORDER BY table_name",
        tables,
    )
    rows = txn.fetchall()
    if rows:
        tables = ", ".join(f"{t} ({charset})" for t, charset in rows)
        fix = "; ".join(f"ALTER TABLE {t} CONVERT TO CHARACTER SET utf8mb4" for t, _ in rows)
        raise StartupError(f"tables not in utf8mb4: {tables}; convert them first: {fix}")


CHAIN_INDEX = "chain_id, number, block_hash, parent_hash, first_seen, hash"
"""The columns of C{eth_blocks_chain}, as schema/mysql.sql creates it."""


def upgrade_chain_index(txn: Any) -> None:
    """
    Give an older C{eth_blocks} the chain reads' index C{eth_blocks_chain} in place of
    C{eth_blocks_chain_number}, its first two columns (MySQL builds it while the table stays in
    use).  A server starting at the same time may do it first; only a change that has not
    happened in the end is an error.
    """
    changes = [
        ("eth_blocks_chain", True, f"ADD INDEX eth_blocks_chain ({CHAIN_INDEX})"),
        ("eth_blocks_chain_number", False, "DROP INDEX eth_blocks_chain_number"),
    ]
    for name, wanted, change in changes:
        if _has_index(txn, name) == wanted:
            continue
        try:
            txn.execute(f"ALTER TABLE eth_blocks {change}")
        except Exception:
            if _has_index(txn, name) != wanted:
                raise


def _columns(cursor: Any, dialect: str, table: str) -> set[str]:
    if dialect == "sqlite":
        cursor.execute(f"PRAGMA table_info({table})")
        return {row[1] for row in cursor.fetchall()}
    cursor.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = DATABASE() AND table_name = %s",
        (table,),
    )
    return {row[0].lower() for row in cursor.fetchall()}


def _tolerant(cursor: Any, statement: str, done: Any) -> None:
    """Run C{statement}; if it fails, it is an error only if C{done()} is still false."""
    try:
        cursor.execute(statement)
    except Exception:
        if not done():
            raise


def before_schema(connection: Any, dialect: str) -> None:
    """
    What must change before today's schema can be created over an older store.
    """
    cursor = connection.cursor()
    blocks = _columns(cursor, dialect, "eth_blocks")
    if blocks and "id" not in blocks:
        log.info("giving eth_blocks the payloads' ids")
        _tolerant(
            cursor,
            "ALTER TABLE eth_blocks ADD COLUMN id INTEGER",
            lambda: "id" in _columns(cursor, dialect, "eth_blocks"),
        )
        if dialect == "sqlite":
            cursor.execute(
                "UPDATE eth_blocks SET id = (SELECT d.id FROM ethereum_data d"
                " WHERE d.hash = eth_blocks.hash) WHERE id IS NULL"
            )
        else:
            cursor.execute(
                "UPDATE eth_blocks b JOIN ethereum_data d ON d.hash = b.hash"
                " SET b.id = d.id WHERE b.id IS NULL"
            )
        connection.commit()
    if dialect != "sqlite" and blocks and not _has_index(cursor, "eth_blocks_id"):
        # (SQLite's schema creates it.)
        _tolerant(
            cursor,
            "ALTER TABLE eth_blocks ADD UNIQUE INDEX eth_blocks_id (id, number)",
            lambda: _has_index(cursor, "eth_blocks_id"),
        )
    if "client" in _columns(cursor, dialect, "eth_sightings"):
        log.info("moving the older eth_sightings aside as eth_sightings_old")
        if dialect == "sqlite":
            # SQLite's index names are the database's: today's table uses some of them.
            for name in _OLD_INDEXES:
                cursor.execute(f"DROP INDEX IF EXISTS {name}")
        _tolerant(
            cursor,
            "ALTER TABLE eth_sightings RENAME TO eth_sightings_old",
            lambda: "client" not in _columns(cursor, dialect, "eth_sightings"),
        )
    connection.commit()


def _has_index(cursor: Any, name: str) -> bool:
    """Whether C{eth_blocks} has the index C{name} (MySQL)."""
    cursor.execute(
        "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE()"
        " AND table_name = 'eth_blocks' AND index_name = %s LIMIT 1",
        (name,),
    )
    return bool(cursor.fetchall())


def after_schema(connection: Any, dialect: str, day: str, today: int) -> None:
    """
    Move the sightings of C{eth_sightings_old}, if there is one, into today's tables; C{day}
    is the dialect's expression of the day of C{first_seen}, C{today} today's day.
    """
    cursor = connection.cursor()
    if not _columns(cursor, dialect, "eth_sightings_old"):
        return
    sqlite = dialect == "sqlite"
    cursor.execute(
        "INSERT INTO eth_client_ids (client) SELECT DISTINCT o.client FROM eth_sightings_old o"
        " WHERE NOT EXISTS (SELECT 1 FROM eth_client_ids c WHERE c.client = o.client)"
    )
    connection.commit()
    if not sqlite:
        cursor.execute(f"SELECT MIN({day}) FROM eth_blocks")
        (oldest,) = cursor.fetchone()
        first = (
            today if oldest is None else max(int(oldest), today - partitions.MAX_NEW_PARTITIONS)
        )
        partitions.ensure(cursor, min(first, today), today + partitions.DAYS_AHEAD)
    cursor.execute("SELECT MIN(id), MAX(id), COUNT(*) FROM eth_sightings_old")
    low, high, count = cursor.fetchone()
    log.info("moving {count} older sightings into eth_sightings", count=int(count))
    skip = "ON CONFLICT DO NOTHING" if sqlite else "ON DUPLICATE KEY UPDATE via = VALUES(via)"
    p = "?" if sqlite else "%s"
    for start in range(int(low or 0), int(high or 0) + 1, CHUNK):
        cursor.execute(
            "INSERT INTO eth_sightings (block_id, client_id, day, seen_at_ms, via)"
            f" SELECT b.id, c.id, {day}, ROUND(o.seen_at * 1000), {_VIA}"
            " FROM eth_sightings_old o JOIN eth_blocks b ON b.hash = o.hash"
            " JOIN eth_client_ids c ON c.client = o.client"
            f" WHERE o.id >= {p} AND o.id < {p} AND b.id IS NOT NULL {skip}",
            (start, start + CHUNK),
        )
        connection.commit()
    cursor.execute(
        "SELECT COUNT(*) FROM eth_sightings_old o WHERE NOT EXISTS (SELECT 1 FROM eth_sightings s"
        " JOIN eth_blocks b ON b.id = s.block_id JOIN eth_client_ids c ON c.id = s.client_id"
        " WHERE b.hash = o.hash AND c.client = o.client)"
    )
    (lost,) = cursor.fetchone()
    if lost:
        raise StartupError(
            f"{lost} sightings of eth_sightings_old have no payload in ethereum_data and"
            " eth_blocks to be stored under; the table is kept: give them one, or drop it"
        )
    cursor.execute("DROP TABLE IF EXISTS eth_sightings_old")
    connection.commit()
    log.info("moved the older sightings; eth_sightings_old is dropped")
