"""Fixtures over the real services of tests/services.py, and the Hypothesis profiles.

Each service listens on a free port of 127.0.0.1, with its data and log under pytest's
temporary directory; a fixture returns once it answers and stops it at teardown.

- ``mariadb`` (session): one MariaDB server; ``mysql_db`` (function) gives a test its own
  freshly created, empty database on it.
- ``redis`` (function): the session's Redis server (``redis_server``), running and emptied
  with FLUSHALL before the test.
- ``anvil`` (function): a fresh anvil dev node per test; ``anvil_factory`` starts more, with
  extra command-line arguments.
- ``galera`` (session): a 3-node MariaDB Galera cluster (about 11 s to start); ``galera_db``
  (function) gives a test its own empty database, as seen through each node, every node
  running (one a test killed joins again first).
- ``sentinel_group`` (function): a Redis master, its replica and three Sentinels.
- ``clique`` (function): a clique network of EthereumJS nodes (tests/ethereumjs.py), none
  started yet; every node it starts stops at the end.

A missing binary fails the test with a hint: ``make test`` installs every one of them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from itertools import count
from pathlib import Path
from typing import cast

import pymysql
import pytest
import pytest_twisted
from hypothesis import HealthCheck, settings
from twisted.internet.interfaces import IReactorCore
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    capturedLogs,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure

from ethtwisted.storage.sql_pool import parse_db_url
from ethtwisted.storage.sql_store import SQLStore
from tests.ethereumjs import CliqueNetwork
from tests.fleet_reports import Opener
from tests.helpers import Committed, Logs, Server, start_server, the_reactor
from tests.services import (
    Anvil,
    AnvilFactory,
    GaleraCluster,
    MariaDB,
    MissingBinaryError,
    MySQLDatabase,
    Redis,
    SentinelGroup,
    ServiceError,
)
from tests.web import open_sqlite
from tests.webhooks import Running

# Property tests: `make test` runs a fixed, bounded set of examples (the same every run);
# `make fuzz` (HYPOTHESIS_PROFILE=fuzz) runs many more, with fresh random seeds.
settings.register_profile(
    "default",
    derandomize=True,
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    derandomize=False,
    max_examples=5_000,
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "expected_log_errors(*patterns): errors this test may log, each matching one of the"
        " regular expressions (searched in the event's text and its failure's message)",
    )


def error_text(event: LogEvent) -> str | None:
    """The text of an event at error or critical level or with a failure; None for others."""
    failure = event.get("log_failure")
    if failure is None and event.get("log_level") not in (LogLevel.error, LogLevel.critical):
        return None
    text = formatEvent(event)
    if isinstance(failure, Failure):
        kind = failure.type.__name__ if failure.type is not None else "Failure"
        text += f" [{kind}: {failure.getErrorMessage()}]"
    return text


@pytest.fixture(autouse=True)
def no_unexpected_errors_logged(request: pytest.FixtureRequest) -> Iterator[None]:
    """
    Fail a test that logs an error, a critical event or a failure (``log.failure``, an
    unhandled error in a Deferred) that it did not declare with ``expected_log_errors``.

    Observes the global log publisher, which every ``Logger`` ends at, whatever its filters.
    """
    patterns = [
        re.compile(pattern)
        for marker in request.node.iter_markers("expected_log_errors")
        for pattern in marker.args
    ]
    errors: list[str] = []

    def observe(event: LogEvent) -> None:
        text = error_text(event)
        if text is not None and not any(p.search(text) for p in patterns):
            errors.append(text)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observer)
    if errors:
        pytest.fail(
            "errors logged that the test did not expect:\n" + "\n".join(errors), pytrace=False
        )


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """A service whose binary is missing fails the test with the hint, not a traceback."""
    try:
        yield
    except MissingBinaryError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """The session's MariaDB server, with database ``ethtwisted`` and user ``ethtwisted``."""
    with installed():
        server = MariaDB(tmp_path_factory.mktemp("mariadb"))
    try:
        server.setup()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.datadir, ignore_errors=True)
        shutil.rmtree(server.tmpdir, ignore_errors=True)


_database_numbers = count(1)


@pytest.fixture
def mysql_db(mariadb: MariaDB) -> Iterator[MySQLDatabase]:
    """A new, empty database on the session's MariaDB server for this test alone."""
    mariadb.ensure_running()
    database = MySQLDatabase(mariadb, f"test_{next(_database_numbers):04d}")
    mariadb.create_database(database.name)
    yield database
    if mariadb.running:
        mariadb.drop_database(database.name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """The session's Redis server (tests use ``redis``, which empties it first)."""
    with installed():
        server = Redis(tmp_path_factory.mktemp("redis"))
    try:
        server.start_on_free_port()
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis(redis_server: Redis) -> Redis:
    """The session's Redis server, running and emptied (FLUSHALL) for this test."""
    redis_server.ensure_running()
    redis_server.flushall()
    return redis_server


@pytest.fixture(scope="session")
def galera() -> Iterator[GaleraCluster]:
    """The session's Galera cluster of three MariaDB nodes, one user and database on all."""
    with installed():
        cluster = GaleraCluster()
    try:
        cluster.setup()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def galera_db(galera: GaleraCluster) -> Iterator[list[MySQLDatabase]]:
    """A new, empty database on the Galera cluster, as seen through each of its nodes."""
    galera.ensure_running()
    databases = galera.database_on_each(f"test_{next(_database_numbers):04d}")
    yield databases
    with contextlib.suppress(ServiceError, pymysql.MySQLError):
        galera.running_node().drop_database(databases[0].name)


@pytest.fixture
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A Redis master with one replica and three Sentinels watching it, for this test."""
    with installed():
        group = SentinelGroup(tmp_path_factory.mktemp("sentinel"))
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture
def anvil_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilFactory]:
    """Start anvil nodes with extra arguments; all of them stop when the test ends.

    ``anvil_factory("--chain-id", "5", block_time=0.5)`` returns a running ``Anvil``.
    """
    nodes: list[Anvil] = []

    def start(*args: str, block_time: float | None = None) -> Anvil:
        extra = [*args] if block_time is None else [*args, "--block-time", f"{block_time:g}"]
        with installed():
            node = Anvil(tmp_path_factory.mktemp("anvil"), extra)
        nodes.append(node)
        node.start_on_free_port()
        return node

    try:
        yield start
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def anvil(anvil_factory: AnvilFactory) -> Anvil:
    """A fresh anvil node for this test: chain id 31337, block 0, mining on demand."""
    return anvil_factory()


@pytest.fixture
def clique(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliqueNetwork]:
    """A clique network of EthereumJS nodes of its own, its genesis written, no node started."""
    with installed():
        network = CliqueNetwork(tmp_path_factory.mktemp("clique"))
    try:
        yield network
    finally:
        network.stop()


def pytest_report_header(config: pytest.Config) -> str:
    spec = importlib.util.find_spec("ethtwisted")
    where = spec.origin if spec is not None else "not importable"
    return f"ethtwisted under test: {where}"


@pytest.fixture
def logs() -> Iterator[Logs]:
    """What the test logs."""
    with capturedLogs() as events:
        yield Logs(events)


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Server, Committed]]:
    started = await start_server(["--db", f"sqlite:///{tmp_path / 'eth.sqlite'}"])
    yield started, started.committed
    if started.service.running:
        await started.stop()


@pytest_twisted.async_yield_fixture(params=["sqlite", "mysql"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """
    Opens started stores on one empty database, each with a pool of its own (as several
    servers have); closes them afterwards.
    """
    if request.param == "sqlite":
        url = parse_db_url(f"sqlite:///{tmp_path / 'fleet.sqlite'}")
    else:
        db = request.getfixturevalue("mysql_db")
        url = parse_db_url(db.url).with_password(db.password)
    opened: list[SQLStore] = []

    def opener() -> SQLStore:
        store = SQLStore(url, IReactorCore(the_reactor()))
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


@pytest_twisted.async_yield_fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLStore]:
    store = await open_sqlite(tmp_path / "eth.sqlite")
    yield store
    await store.close()


@pytest_twisted.async_yield_fixture
async def receivers() -> AsyncIterator[list[Running]]:
    """
    Receivers that the test starts (or not); all stopped afterwards.
    """
    made: list[Running] = []
    yield made
    for running in made:
        await running.stop()
