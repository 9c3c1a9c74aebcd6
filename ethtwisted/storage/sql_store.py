"""
The durable store: SQLite or MySQL/MariaDB through L{twisted.enterprise.adbapi}.

The older servers' C{ethereum_data} table keeps its shape; C{eth_blocks} and C{eth_clients}
beside it record when each payload was first seen and what each client reported.  The same
store reads them back for the stats API; opened read-only (eth-stats), it never creates or
changes anything.  Its URL and connection pool are L{ethtwisted.storage.sql_pool}.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from importlib.resources import files
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorCore, IReactorTime
from zope.interface import implementer

from ethtwisted.interfaces import IBlockReader, IBlockStore, ICounterReader
from ethtwisted.protocol import Block
from ethtwisted.records import BlockRecord, ClientRecord, Head, Received, StatusReport
from ethtwisted.storage import (
    RejectedError,
    chunks,
    deliveries,
    fleet,
    ledger,
    migrate,
    partitions,
    row_problem,
)
from ethtwisted.storage.sql_chains import SQLChainRows
from ethtwisted.storage.sql_pool import DatabaseURL, connection_pool

MYSQL_TEXT_BYTES = 65535
_TABLES = (
    "ethereum_data",
    "eth_blocks",
    "eth_clients",
    *ledger.TABLES,
    *fleet.TABLES,
    *deliveries.TABLES,
)
CLIENT_NAMES = 500
"""The most names one statement of L{SQLStore.clients} asks for (SQLite allows 32,766
placeholders; a page needs few)."""
_BLOCK_COLUMNS = "hash, first_seen, client, chain_id, number, block_hash, parent_hash, block_time"


class _Dialect:
    """
    The statements that differ between SQLite and MySQL.
    """

    def __init__(
        self,
        name: str,
        placeholder: str,
        skip_duplicate: str,
        set_id: str,
        upsert: str,
        bucket: str,
    ) -> None:
        self.name = name
        self.placeholder = placeholder
        self.bucket = bucket
        """The start of the C{{bucket}}-second interval holding C{first_seen}, in this dialect."""
        # Only a duplicate hash is skipped; any other problem with a row is an error (SQLite's
        # OR IGNORE and MySQL's INSERT IGNORE would hide, or silently change, much more).
        p = ", ".join([placeholder] * 2)
        self.insert_data = (
            f"INSERT INTO ethereum_data (hash, payload) VALUES ({p}) {skip_duplicate}"
        )
        p = ", ".join([placeholder] * 9)
        # A row an older server stored while this one migrated the table has no id yet.
        self.insert_block = (
            "INSERT INTO eth_blocks (hash, first_seen, client, chain_id, number,"
            f" block_hash, parent_hash, block_time, id) VALUES ({p}) {set_id}"
        )
        p = ", ".join([placeholder] * 7)
        self.upsert_client = (
            "INSERT INTO eth_clients (client, address, messages, first_seen, last_seen,"
            f" chain_id, last_block) VALUES ({p}) {upsert}"
        )

    def schema(self) -> list[str]:
        text = files("ethtwisted.storage").joinpath(f"schema/{self.name}.sql").read_text()
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
        return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


SQLITE = _Dialect(
    "sqlite",
    "?",
    "ON CONFLICT (hash) DO NOTHING",
    "ON CONFLICT (hash) DO UPDATE SET id = COALESCE(id, excluded.id)",
    "ON CONFLICT (client) DO UPDATE SET address = excluded.address,"
    " messages = messages + excluded.messages, last_seen = excluded.last_seen,"
    " chain_id = COALESCE(excluded.chain_id, chain_id),"
    " last_block = COALESCE(excluded.last_block, last_block)",
    "CAST(first_seen / {bucket} AS INTEGER) * {bucket}",
)
MYSQL = _Dialect(
    "mysql",
    "%s",
    "ON DUPLICATE KEY UPDATE hash = hash",
    "ON DUPLICATE KEY UPDATE id = COALESCE(id, VALUES(id))",
    "ON DUPLICATE KEY UPDATE address = VALUES(address),"
    " messages = messages + VALUES(messages), last_seen = VALUES(last_seen),"
    " chain_id = COALESCE(VALUES(chain_id), chain_id),"
    " last_block = COALESCE(VALUES(last_block), last_block)",
    "FLOOR(first_seen / {bucket}) * {bucket}",
)


def _block_columns(block: Block | int | None) -> tuple[Any, ...]:
    if isinstance(block, Block):
        return (block.chain_id, block.number, block.hash, block.parent_hash, block.timestamp)
    return (None, block, None, None, None)


def _block_record(row: Sequence[Any]) -> BlockRecord:
    return BlockRecord(
        sha256=row[0],
        first_seen=float(row[1]),
        client=row[2],
        chain_id=_int(row[3]),
        number=_int(row[4]),
        block_hash=row[5],
        parent_hash=row[6],
        block_time=_int(row[7]),
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@implementer(IBlockStore, ICounterReader, IBlockReader)
class SQLStore:
    """
    L{IBlockStore} over an adbapi pool, and its readers for the stats API.  With
    C{read_only}, L{start} only checks that the tables are there.
    """

    def __init__(self, url: DatabaseURL, reactor: IReactorCore, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        self.dialect = SQLITE if url.dialect == "sqlite" else MYSQL
        self.max_payload_bytes = MYSQL_TEXT_BYTES if url.dialect == "mysql" else 2**30
        self.pool = connection_pool(url, reactor, read_only)
        # The reactor tells the day: the partitions of the sightings are made from it.
        self.clock = cast(IReactorTime, reactor)
        self.ledger = ledger.SQLLedger(self.pool, url.dialect, self.clock)
        self.fleet = fleet.SQLFleet(self.pool, url.dialect)
        self.deliveries = deliveries.SQLDeliveries(self.pool, url.dialect)
        self.chain_source = SQLChainRows(self.pool, self.dialect.placeholder)

    def start(self) -> Deferred[None]:
        if self.read_only:
            return self.pool.runInteraction(self._check_tables)
        return self.pool.runWithConnection(self._create)

    def _check_tables(self, txn: Any) -> None:
        for table in _TABLES:
            txn.execute(f"SELECT 1 FROM {table} WHERE 1 = 0")
            txn.fetchall()

    def _create(self, connection: Any) -> None:
        """
        Create the tables, and bring an older store's to today's (L{migrate}); commits as it
        goes.
        """
        name = self.dialect.name
        migrate.before_schema(connection, name)
        txn = connection.cursor()
        for statement in self.dialect.schema():
            txn.execute(statement)
        if self.dialect is MYSQL:
            migrate.check_charset(txn, _TABLES)
            migrate.upgrade_chain_index(txn)
        connection.commit()
        # The older sightings first: their days are made from the oldest one on.
        today = int(self.clock.seconds() // ledger.SECONDS_A_DAY)
        migrate.after_schema(connection, name, self.ledger.statements.day, today)
        if self.dialect is MYSQL:
            partitions.ensure(txn, today, today + partitions.DAYS_AHEAD)

    def store(self, batch: Sequence[Received | StatusReport]) -> Deferred[int]:
        return self.pool.runInteraction(self._store, batch)

    def _store(self, txn: Any, batch: Sequence[Received | StatusReport]) -> int:
        first: dict[str, Received] = {}
        clients: dict[str, list[Any]] = {}
        for r in batch:
            if not isinstance(r, Received):
                continue
            problem = row_problem(r, self.max_payload_bytes)
            if problem is not None:
                raise RejectedError(problem)
            first.setdefault(r.sha256, r)
            chain_id, number = _block_columns(r.block)[:2]
            row = clients.get(r.client)
            if row is None:
                clients[r.client] = [r.client, r.address, 1, r.received, r.received, chain_id,
                                     number]  # fmt: skip
            else:
                row[1], row[2], row[4] = r.address, row[2] + 1, r.received
                if number is not None:
                    row[5], row[6] = chain_id, number
        # Sorted keys take row locks in one order, so concurrent servers cannot deadlock.
        hashes = sorted(first)
        new, payloads = self._payloads(txn, hashes, first) if hashes else (0, {})
        if clients:
            txn.executemany(self.dialect.upsert_client, [clients[c] for c in sorted(clients)])
        self.ledger.write(txn, batch, payloads)
        return new

    def _payloads(
        self, txn: Any, hashes: list[str], first: dict[str, Received]
    ) -> tuple[int, dict[str, tuple[int, int]]]:
        """
        Store the payloads of C{hashes} not stored yet, each with its block row; how many were
        new, and each one's id and day (SHA256 → both), as its sightings are stored under.
        """
        ids, stored = self._known(txn, hashes)
        todo = [h for h in hashes if h not in ids]
        if not todo:
            return 0, ids
        lacking = [h for h in todo if h not in stored]
        new = 0
        lock = self.ledger.statements.locked
        if lacking:
            txn.executemany(self.dialect.insert_data, [(h, first[h].payload) for h in lacking])
            new = max(txn.rowcount, 0)
            statement = "SELECT hash, id FROM ethereum_data WHERE hash IN ({hashes})" + lock
            stored.update((h, int(i)) for h, i in self._rows_for(txn, statement, lacking))
        txn.executemany(
            self.dialect.insert_block,
            [
                (h, first[h].received, first[h].client, *_block_columns(first[h].block),
                 stored[h])
                for h in todo
            ],
        )  # fmt: skip
        # Another server may have stored one first: the day is that of the row stored.
        day = self.ledger.statements.day
        statement = f"SELECT hash, id, {day} FROM eth_blocks WHERE hash IN ({{hashes}})" + lock
        ids.update((h, (int(i), int(d))) for h, i, d in self._rows_for(txn, statement, todo))
        return new, ids

    def _known(
        self, txn: Any, hashes: list[str]
    ) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
        """
        Of the payloads of C{hashes}, the id and day of those stored with a block row that has
        its id, and the id of each one stored in C{ethereum_data}: one read.
        """
        ids: dict[str, tuple[int, int]] = {}
        stored: dict[str, int] = {}
        for h, data_id, block_id, day in self._rows_for(
            txn,
            f"SELECT d.hash, d.id, b.id, {self.ledger.statements.day} FROM ethereum_data d"
            " LEFT JOIN eth_blocks b ON b.hash = d.hash WHERE d.hash IN ({hashes})",
            hashes,
        ):
            stored[h] = int(data_id)
            if block_id is not None:
                ids[h] = (int(block_id), int(day))
        return ids, stored

    def _rows_for(self, txn: Any, statement: str, hashes: list[str]) -> list[Any]:
        """
        The rows of C{statement} for C{hashes}, which it lists as C{{hashes}}: a statement per
        L{partitions.IN_LIMIT} of them.
        """
        p = self.dialect.placeholder
        rows: list[Any] = []
        for chunk in chunks(hashes, partitions.IN_LIMIT):
            txn.execute(statement.format(hashes=", ".join([p] * len(chunk))), chunk)
            rows += txn.fetchall()
        return rows

    def close(self) -> Deferred[None]:
        self.pool.close()
        return succeed(None)

    # -- reading back (ICounterReader, IBlockReader) --------------------------------------------

    def _query(self, statement: str, *args: Any) -> Deferred[list[Any]]:
        p = self.dialect.placeholder
        d: Deferred[list[Any]] = self.pool.runQuery(statement.replace("?", p), args)
        return d.addCallback(list)

    def ping(self) -> Deferred[None]:
        return self._query("SELECT 1").addCallback(lambda _: None)

    def latest_hashes(self, limit: int) -> Deferred[list[tuple[str, float]]]:
        d = self._query(
            "SELECT hash, first_seen FROM eth_blocks ORDER BY first_seen DESC, hash DESC LIMIT ?",
            limit,
        )
        return d.addCallback(lambda rows: [(h, float(t)) for h, t in rows])

    def address_counts(self, limit: int) -> Deferred[list[tuple[str, int]]]:
        d = self._query(
            "SELECT address, SUM(messages) AS n FROM eth_clients GROUP BY address"
            " ORDER BY n DESC, address LIMIT ?",
            limit,
        )
        return d.addCallback(
            lambda rows: sorted(((a, int(n)) for a, n in rows), key=lambda r: (-r[1], r[0]))
        )

    def payload(self, sha256: str) -> Deferred[str | None]:
        d = self._query("SELECT payload FROM ethereum_data WHERE hash = ?", sha256)
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    def blocks(self, limit: int, before: str | None = None) -> Deferred[list[BlockRecord] | None]:
        return self.pool.runInteraction(self._blocks, limit, before)

    def _blocks(self, txn: Any, limit: int, before: str | None) -> list[BlockRecord] | None:
        p = self.dialect.placeholder
        select = f"SELECT {_BLOCK_COLUMNS} FROM eth_blocks"
        order = f"ORDER BY first_seen DESC, hash DESC LIMIT {p}"
        if before is None:
            txn.execute(f"{select} {order}", (limit,))
        else:
            txn.execute(f"SELECT first_seen FROM eth_blocks WHERE hash = {p}", (before,))
            row = txn.fetchone()
            if row is None:
                return None
            txn.execute(
                f"{select} WHERE first_seen < {p} OR (first_seen = {p} AND hash < {p}) {order}",
                (row[0], row[0], before, limit),
            )
        return [_block_record(r) for r in txn.fetchall()]

    def block(self, sha256: str) -> Deferred[BlockRecord | None]:
        d = self._query(
            f"SELECT {_BLOCK_COLUMNS} FROM eth_blocks WHERE hash = ?",
            sha256,
        )
        return d.addCallback(lambda rows: _block_record(rows[0]) if rows else None)

    def clients(
        self,
        limit: int,
        after: str | None = None,
        chain_id: int | None = None,
        names: Collection[str] | None = None,
    ) -> Deferred[list[ClientRecord]]:
        wanted = (
            None if names is None else sorted(n for n in set(names) if after is None or n > after)
        )
        return self.pool.runInteraction(self._clients, limit, after, chain_id, wanted)

    def _clients(
        self,
        txn: Any,
        limit: int,
        after: str | None,
        chain_id: int | None,
        names: list[str] | None,
    ) -> list[ClientRecord]:
        p = self.dialect.placeholder
        where: list[str] = []
        args: list[Any] = []
        if chain_id is not None:
            where.append(f"chain_id = {p}")
            args.append(chain_id)
        # The names compare by code point in both dialects (utf8mb4_bin, SQLite's BINARY), as
        # Python compares them, so a page given by names continues where the cursor says.
        if names is None:
            if after is not None:
                where.append(f"client > {p}")
                args.append(after)
            return self._client_rows(txn, where, args, limit)
        records: list[ClientRecord] = []
        for start in range(0, len(names), CLIENT_NAMES):
            if len(records) >= limit:
                break
            chunk = names[start : start + CLIENT_NAMES]
            records += self._client_rows(
                txn, [f"client IN ({', '.join([p] * len(chunk))})", *where],
                [*chunk, *args], limit - len(records),
            )  # fmt: skip
        return records

    def _client_rows(
        self, txn: Any, where: Sequence[str], args: Sequence[Any], limit: int
    ) -> list[ClientRecord]:
        p = self.dialect.placeholder
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        txn.execute(
            "SELECT client, address, messages, first_seen, last_seen, chain_id, last_block"
            f" FROM eth_clients{clause} ORDER BY client LIMIT {p}",
            (*args, limit),
        )
        return [
            ClientRecord(c, a, int(m), float(f), float(s), _int(ch), _int(b))
            for c, a, m, f, s, ch, b in txn.fetchall()
        ]

    def heads(self, limit: int) -> Deferred[list[Head]]:
        return self.chain_source.heads(limit)

    def first_seen(self) -> Deferred[float | None]:
        d = self._query("SELECT MIN(first_seen) FROM eth_blocks")
        return d.addCallback(lambda rows: None if rows[0][0] is None else float(rows[0][0]))

    def arrivals(self, since: float, bucket: int) -> Deferred[list[tuple[float, int]]]:
        start = self.dialect.bucket.format(bucket=int(bucket))
        d = self._query(
            f"SELECT {start} AS b, COUNT(*) FROM eth_blocks WHERE first_seen >= ?"
            " GROUP BY b ORDER BY b",
            since,
        )
        return d.addCallback(lambda rows: [(float(b), int(n)) for b, n in rows])
