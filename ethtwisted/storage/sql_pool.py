"""
The database URL (C{--db}) and the adbapi connection pool for it: SQLite or MySQL/MariaDB through
PyMySQL, every blocking call with a timeout.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.enterprise import adbapi
from twisted.internet.interfaces import IReactorCore

DEFAULT_DB_URL = "sqlite:///ethtwisted.sqlite"
MYSQL_MODE = "TRADITIONAL"
"""Strict: a value a column cannot hold is an error, never a warning and a changed value."""
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


def _sqlite_open(connection: sqlite3.Connection) -> None:
    # WAL lets eth-stats read while eth-server writes; FULL keeps a commit durable.
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")


def _sqlite_open_read_only(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA query_only = ON")


def _mysql_open_read_only(connection: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION READ ONLY")


def connection_pool(
    url: DatabaseURL, reactor: IReactorCore, read_only: bool = False
) -> adbapi.ConnectionPool:
    """
    An adbapi pool for C{url}: one connection for SQLite (one writer at a time anyway),
    a few for MySQL; every blocking call has a timeout.  A read-only pool cannot write, and
    does not create a missing SQLite file.
    """
    if url.dialect == "sqlite":
        if read_only:
            # mode=rw: the file must exist; WAL readers still write its shared-memory index.
            target = Path(url.path).absolute().as_uri() + "?mode=rw"
            opener = _sqlite_open_read_only
        else:
            target, opener = url.path, _sqlite_open
        return adbapi.ConnectionPool(
            "sqlite3",
            target,
            uri=read_only,
            timeout=_TIMEOUT,
            # adbapi closes connections from the reactor thread at shutdown.
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=opener,
            cp_reconnect=True,
            cp_reactor=reactor,
        )
    extra: dict[str, Any] = {"cp_openfun": _mysql_open_read_only} if read_only else {}
    return adbapi.ConnectionPool(
        "pymysql",
        host=url.host,
        port=url.port,
        user=url.user,
        password=url.password or "",
        database=url.database,
        charset="utf8mb4",
        sql_mode=MYSQL_MODE,
        connect_timeout=10,
        read_timeout=_TIMEOUT,
        write_timeout=_TIMEOUT,
        cp_min=1,
        cp_max=3,
        cp_reconnect=True,
        cp_reactor=reactor,
        **extra,
    )
