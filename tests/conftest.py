"""Fixtures over the real services of tests/services.py, and the Hypothesis profiles.

Each service listens on a free port of 127.0.0.1, with its data and log under pytest's
temporary directory; a fixture returns once it answers and stops it at teardown.

- ``mariadb`` (session): one MariaDB server; ``mysql_db`` (function) gives a test its own
  freshly created, empty database on it.
- ``redis`` (function): the session's Redis server (``redis_server``), running and emptied
  with FLUSHALL before the test.
- ``anvil`` (function): a fresh anvil dev node per test; ``anvil_factory`` starts more, with
  extra command-line arguments.

A missing binary fails the test with a hint: ``make test`` installs every one of them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from itertools import count

import pytest
from hypothesis import HealthCheck, settings

from tests.services import (
    Anvil,
    AnvilFactory,
    MariaDB,
    MissingBinaryError,
    MySQLDatabase,
    Redis,
)

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


def pytest_report_header(config: pytest.Config) -> str:
    spec = importlib.util.find_spec("ethtwisted")
    where = spec.origin if spec is not None else "not importable"
    return f"ethtwisted under test: {where}"
