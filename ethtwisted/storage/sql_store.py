"""
The durable store: SQLite or MySQL/MariaDB through L{twisted.enterprise.adbapi}.

The older servers' C{ethereum_data} table keeps its shape; C{eth_blocks} and C{eth_clients}
beside it record when each payload was first seen and what each client reported.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorCore
from zope.interface import implementer

from ethtwisted.interfaces import IBlockStore, Received
from ethtwisted.protocol import Block

DEFAULT_DB_URL = "sqlite:///ethtwisted.sqlite"
MYSQL_TEXT_BYTES = 65535
_TIMEOUT = 30


@dataclass(frozen=True)
class DatabaseURL:
    """
    A parsed C{--db} URL.  Its C{str} never shows a password.
    """

    dialect: str
    """C{"sqlite"} or C{"mysql"}."""
    path: str = ""
    user: str = ""
    password: str | None = None
    host: str = ""
    port: int = 3306
    database: str = ""

    def __str__(self) -> str:
        if self.dialect == "sqlite":
            return f"sqlite:///{self.path}"
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"

    def with_password(self, password: str | None) -> DatabaseURL:
        return DatabaseURL(
            self.dialect, self.path, self.user, password, self.host, self.port, self.database
        )


def parse_db_url(url: str) -> DatabaseURL:
    """
    Parse C{sqlite:///relative.sqlite}, C{sqlite:////absolute/path.sqlite} or
    C{mysql://user[:password]@host[:port]/database}; raise L{ValueError} saying what is wrong
    (never quoting a password).
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError("a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        return DatabaseURL("sqlite", path=rest[1:])
    if scheme in ("mysql", "mariadb"):
        parts = urlsplit(url)
        try:
            port = parts.port or 3306
        except ValueError:
            raise ValueError("the MySQL URL has a bad port") from None
        database = parts.path.lstrip("/")
        if not parts.hostname or not parts.username or not database or "/" in database:
            raise ValueError("a MySQL URL is mysql://user@host[:port]/database")
        return DatabaseURL(
            "mysql",
            user=unquote(parts.username),
            password=unquote(parts.password) if parts.password is not None else None,
            host=parts.hostname,
            port=port,
            database=database,
        )
    raise ValueError("the database URL must start with sqlite:// or mysql://")


class _Dialect:
    """
    The statements that differ between SQLite and MySQL.
    """

    def __init__(self, name: str, placeholder: str, ignore: str, upsert: str) -> None:
        self.name = name
        p = ", ".join([placeholder] * 2)
        self.insert_data = f"{ignore} INTO ethereum_data (hash, payload) VALUES ({p})"
        p = ", ".join([placeholder] * 8)
        self.insert_block = (
            f"{ignore} INTO eth_blocks (hash, first_seen, client, chain_id, number,"
            f" block_hash, parent_hash, block_time) VALUES ({p})"
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
    "INSERT OR IGNORE",
    "ON CONFLICT (client) DO UPDATE SET address = excluded.address,"
    " messages = messages + excluded.messages, last_seen = excluded.last_seen,"
    " chain_id = COALESCE(excluded.chain_id, chain_id),"
    " last_block = COALESCE(excluded.last_block, last_block)",
)
MYSQL = _Dialect(
    "mysql",
    "%s",
    "INSERT IGNORE",
    "ON DUPLICATE KEY UPDATE address = VALUES(address),"
    " messages = messages + VALUES(messages), last_seen = VALUES(last_seen),"
    " chain_id = COALESCE(VALUES(chain_id), chain_id),"
    " last_block = COALESCE(VALUES(last_block), last_block)",
)


def _sqlite_open(connection: sqlite3.Connection) -> None:
    # WAL lets eth-stats read while eth-server writes; FULL keeps a commit durable.
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")


def connection_pool(url: DatabaseURL, reactor: IReactorCore) -> adbapi.ConnectionPool:
    """
    An adbapi pool for C{url}: one connection for SQLite (one writer at a time anyway),
    a few for MySQL; every blocking call has a timeout.
    """
    if url.dialect == "sqlite":
        return adbapi.ConnectionPool(
            "sqlite3",
            url.path,
            timeout=_TIMEOUT,
            # adbapi closes connections from the reactor thread at shutdown.
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_sqlite_open,
            cp_reconnect=True,
            cp_reactor=reactor,
        )
    return adbapi.ConnectionPool(
        "pymysql",
        host=url.host,
        port=url.port,
        user=url.user,
        password=url.password or "",
        database=url.database,
        charset="utf8mb4",
        connect_timeout=10,
        read_timeout=_TIMEOUT,
        write_timeout=_TIMEOUT,
        cp_min=1,
        cp_max=3,
        cp_reconnect=True,
        cp_reactor=reactor,
    )


def _block_columns(block: Block | int | None) -> tuple[Any, ...]:
    if isinstance(block, Block):
        return (block.chain_id, block.number, block.hash, block.parent_hash, block.timestamp)
    return (None, block, None, None, None)


@implementer(IBlockStore)
class SQLStore:
    """
    L{IBlockStore} over an adbapi pool.
    """

    def __init__(self, url: DatabaseURL, reactor: IReactorCore) -> None:
        self.url = url
        self.dialect = SQLITE if url.dialect == "sqlite" else MYSQL
        self.max_payload_bytes = MYSQL_TEXT_BYTES if url.dialect == "mysql" else 2**30
        self.pool = connection_pool(url, reactor)

    def start(self) -> Deferred[None]:
        return self.pool.runInteraction(self._create)

    def _create(self, txn: Any) -> None:
        for statement in self.dialect.schema():
            txn.execute(statement)

    def store(self, batch: Sequence[Received]) -> Deferred[int]:
        return self.pool.runInteraction(self._store, batch)

    def _store(self, txn: Any, batch: Sequence[Received]) -> int:
        first: dict[str, Received] = {}
        clients: dict[str, list[Any]] = {}
        for r in batch:
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
        txn.executemany(self.dialect.insert_data, [(h, first[h].payload) for h in hashes])
        new = max(txn.rowcount, 0)
        txn.executemany(
            self.dialect.insert_block,
            [
                (h, first[h].received, first[h].client, *_block_columns(first[h].block))
                for h in hashes
            ],
        )
        txn.executemany(self.dialect.upsert_client, [clients[c] for c in sorted(clients)])
        return new

    def close(self) -> Deferred[None]:
        self.pool.close()
        return succeed(None)
