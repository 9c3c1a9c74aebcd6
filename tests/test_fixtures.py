"""The test infrastructure itself: the installed package and the service fixtures."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pymysql
import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from tests.services import REPO_ROOT, Anvil, AnvilFactory, MariaDB, MySQLDatabase, Redis


def test_package_under_test_is_the_checkout() -> None:
    """ethtwisted and its plugin file are imported from this checkout, not from an install."""
    for name, where in [
        ("ethtwisted", REPO_ROOT / "ethtwisted"),
        ("twisted.plugins.ethtwisted_plugins", REPO_ROOT / "twisted" / "plugins"),
    ]:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        assert Path(spec.origin).resolve().parent == where, spec.origin


def test_plugins_found_by_twisted() -> None:
    """Twisted's plugin discovery finds the eth-server and eth-client service makers."""
    names = {maker.tapname for maker in getPlugins(IServiceMaker)}
    assert {"eth-server", "eth-client"} <= names


def test_twistd_lists_plugins_from_any_folder(tmp_path: Path) -> None:
    """The installed twistd command offers eth-server and eth-client outside the checkout."""
    twistd = Path(sys.executable).parent / "twistd"
    result = subprocess.run(
        [str(twistd), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert "eth-server" in result.stdout
    assert "eth-client" in result.stdout


def test_mariadb_user_reaches_own_database(mysql_db: MySQLDatabase) -> None:
    """The created user logs in over TCP with its password and queries the test's database."""
    assert mysql_db.url == f"mysql://{mysql_db.user}@127.0.0.1:{mysql_db.port}/{mysql_db.name}"
    connection = pymysql.connect(
        host=mysql_db.host,
        port=mysql_db.port,
        user=mysql_db.user,
        password=mysql_db.password,
        database=mysql_db.name,
    )
    with connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE t (n INTEGER)")
        cursor.execute("INSERT INTO t VALUES (1), (2)")
        connection.commit()
        cursor.execute("SELECT DATABASE(), CURRENT_USER()")
        assert cursor.fetchone() == (mysql_db.name, f"{mysql_db.user}@%")
    assert mysql_db.query("SELECT SUM(n) FROM t") == [(3,)]


def test_mariadb_wrong_password_refused(mariadb: MariaDB) -> None:
    """The server checks the user's password."""
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(
            host=mariadb.host, port=mariadb.port, user=mariadb.user, password="wrong"
        ).close()


def test_mysql_db_starts_empty(mysql_db: MySQLDatabase) -> None:
    """Each test gets an empty database of its own (no table from the test before)."""
    assert mysql_db.query("SHOW TABLES") == []
    assert mysql_db.name != mysql_db.server.database


def test_mariadb_restart_keeps_data(mariadb: MariaDB, mysql_db: MySQLDatabase) -> None:
    """A SIGKILLed server comes back on the same port with its committed rows."""
    port = mariadb.port
    mysql_db.query("CREATE TABLE t (n INTEGER)")
    mysql_db.query("INSERT INTO t VALUES (7)")
    mariadb.restart()
    assert mariadb.port == port
    assert mysql_db.query("SELECT n FROM t") == [(7,)]


def test_mariadb_stop_and_start(mariadb: MariaDB) -> None:
    """stop() refuses connections until start() brings the server back."""
    mariadb.stop()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host=mariadb.host, port=mariadb.port, user="root", connect_timeout=2)
    mariadb.start()
    assert mariadb.query("SELECT 1") == [(1,)]


def test_redis_set_get_after_restart(redis: Redis) -> None:
    """Redis answers PING and SET/GET, also after a SIGKILL and restart on the same port."""
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    assert redis.execute("PING") == "PONG"
    assert redis.execute("SET", "k", "v") == "OK"
    assert redis.execute("GET", "k") == b"v"
    redis.restart()
    assert redis.execute("PING") == "PONG"
    assert redis.execute("SET", "k", "w") == "OK"
    assert redis.execute("GET", "k") == b"w"


def test_redis_starts_empty(redis: Redis) -> None:
    """Each test sees an empty Redis."""
    assert redis.execute("DBSIZE") == 0


def test_redis_stop_and_start(redis: Redis) -> None:
    """stop() refuses connections until start() brings Redis back."""
    redis.stop()
    with pytest.raises(OSError):
        redis.execute("PING")
    redis.start()
    assert redis.execute("PING") == "PONG"


def test_anvil_http_chain_id(anvil: Anvil) -> None:
    """anvil answers eth_chainId 31337 over HTTP."""
    assert anvil.http_url == f"http://127.0.0.1:{anvil.port}"
    assert anvil.ws_url == f"ws://127.0.0.1:{anvil.port}"
    assert int(anvil.rpc("eth_chainId"), 16) == 31337


def test_anvil_ipc_chain_id(anvil: Anvil) -> None:
    """anvil answers eth_chainId 31337 over its IPC socket."""
    assert Path(anvil.ipc_path).is_socket()
    assert int(anvil.ipc_rpc("eth_chainId"), 16) == 31337


def test_anvil_mine(anvil: Anvil) -> None:
    """mine(3) raises eth_blockNumber by exactly 3."""
    before = anvil.block_number()
    assert anvil.mine(3) == before + 3
    assert int(anvil.rpc("eth_blockNumber"), 16) == before + 3


def test_anvil_restart_begins_new_chain(anvil: Anvil) -> None:
    """restart() brings anvil back on the same port and IPC path with a new chain."""
    anvil.mine(2)
    port = anvil.port
    anvil.restart()
    assert anvil.port == port
    assert anvil.block_number() == 0
    assert int(anvil.ipc_rpc("eth_chainId"), 16) == 31337


def test_anvil_factory_arguments(anvil_factory: AnvilFactory) -> None:
    """The factory passes extra arguments to anvil and runs nodes side by side."""
    other = anvil_factory("--chain-id", "1337")
    default = anvil_factory()
    assert other.port != default.port
    assert int(other.rpc("eth_chainId"), 16) == 1337
    assert int(default.rpc("eth_chainId"), 16) == 31337


def test_anvil_stop_leaves_nothing(anvil: Anvil) -> None:
    """stop() ends the node: its HTTP port no longer answers."""
    anvil.stop()
    assert not anvil.running
    with pytest.raises(OSError):
        anvil.rpc("eth_chainId")


def test_services_load_without_pytest() -> None:
    """tests/services.py, which the benchmarks use, imports neither pytest nor Hypothesis."""
    code = (
        "import sys; import tests.services; "
        "print(sorted({'pytest', 'hypothesis', '_pytest'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stderr


LOGGING_TESTS = """
import pytest
from twisted.logger import Logger

log = Logger()


def test_quiet():
    log.warn("only a warning")


def test_error():
    log.error("disk {name} full", name="sda")


def test_failure():
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("bug while dividing")


@pytest.mark.expected_log_errors("^disk sda full$")
def test_error_expected():
    log.error("disk {name} full", name="sda")


@pytest.mark.expected_log_errors(r"ZeroDivisionError: division by zero")
def test_failure_expected():
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("bug while dividing")


@pytest.mark.expected_log_errors("^disk sdb full$")
def test_other_error():
    log.error("disk {name} full", name="sda")
"""


def test_unexpected_logged_errors_fail_the_test(tmp_path: Path) -> None:
    """
    A test that logs an error or a failure it did not declare with expected_log_errors fails
    at teardown, naming the event; declared ones, and warnings, pass.
    """
    (tmp_path / "conftest.py").write_text((REPO_ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_logging.py").write_text(LOGGING_TESTS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rE", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    errors = sorted(
        line.split("::")[1].split()[0]
        for line in result.stdout.splitlines()
        if line.startswith("ERROR ")
    )
    assert errors == ["test_error", "test_failure", "test_other_error"], result.stdout
    assert "6 passed, 3 errors" in result.stdout, result.stdout  # errors at teardown
    assert "disk sda full" in result.stdout and "bug while dividing" in result.stdout
