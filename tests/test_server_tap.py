"""
eth-server's command line: options, the ETH_* environment, the older flags, and how bad input
ends the program.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactor

from ethtwisted.interfaces import IEventSink
from ethtwisted.server.webhooks import WebhookService
from ethtwisted.server_tap import Options, makeService, with_backlog
from ethtwisted.storage.redis_store import RedisURL, SentinelURL
from ethtwisted.storage.sql_pool import DatabaseURL
from tests.services import MySQLDatabase

TWISTD = str(Path(sys.executable).parent / "twistd")


def parse(args: list[str], environ: dict[str, str] | None = None) -> Options:
    options = Options()
    options.environ = dict(environ or {})
    options.parseOptions(args)
    return options


def usage_error(args: list[str], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(args, environ)
    message = str(exit_info.value.code)
    assert message.startswith("eth-server: ")
    assert "\n" not in message
    return message


def test_defaults() -> None:
    """
    With nothing given: SQLite file in the working directory, loopback port 9999 with an
    explicit backlog, no Redis.
    """
    options = parse([])
    assert options["db_url"] == DatabaseURL("sqlite", path="ethtwisted.sqlite")
    assert options["listen"] == ["tcp:9999:interface=127.0.0.1:backlog=1024"]
    assert options["redis_url"] is None
    assert options["tokens"] is None
    assert options["max-message-bytes"] == 65536
    assert options["wait"] == 30.0


def test_environment_fills_in_and_flags_win() -> None:
    """
    ETH_* variables supply options; a flag on the command line beats its variable, also for
    repeatable options.
    """
    environ = {
        "ETH_DB": "sqlite:////tmp/x.sqlite",
        "ETH_IDLE_TIMEOUT": "7.5",
        "ETH_LISTEN": "tcp:1:interface=127.0.0.1 tcp:2",
        "ETH_VERBOSE": "true",
        "ETH_REDIS": "redis://127.0.0.1:6390/2",
    }
    options = parse([], environ)
    assert options["db_url"].path == "/tmp/x.sqlite"
    assert options["idle-timeout"] == 7.5
    assert options["listen"] == ["tcp:1:interface=127.0.0.1:backlog=1024", "tcp:2:backlog=1024"]
    assert options["verbose"]
    assert options["redis_url"] == RedisURL("127.0.0.1", 6390, 2)
    options = parse(["--idle-timeout", "3", "--listen", "tcp:3"], environ)
    assert options["idle-timeout"] == 3.0
    assert options["listen"] == ["tcp:3:backlog=1024"]


def test_listen_backlog_follows_the_endpoint_arguments() -> None:
    """
    Every TCP-family endpoint (kind in any case, under C{haproxy:} too) gets the explicit
    backlog unless it has a C{backlog} argument of its own; the word in another argument's
    value does not count, and other kinds are left as they are.
    """
    assert with_backlog("TCP6:8080") == "TCP6:8080:backlog=1024"
    assert with_backlog("haproxy:tcp:80") == "haproxy:tcp:80:backlog=1024"
    assert with_backlog("tcp:80:backlog=7") == "tcp:80:backlog=7"
    key = "ssl:443:privateKey=/srv/backlog=1/k.pem"
    assert with_backlog(key) == f"{key}:backlog=1024"
    assert with_backlog("unix:/run/x.sock") == "unix:/run/x.sock"


def test_older_command_line_maps_onto_urls() -> None:
    """
    The older --host/--port, --use-mysql and --use-redis flags mean the same as the new ones;
    the password goes to the connection, not into the URL text.
    """
    options = parse(
        ["--host", "127.0.0.2", "--port", "9000", "--use-mysql", "--mysql-host", "db",
         "--mysql-user", "eth", "--mysql-pass", "pw", "--mysql-db", "blocks",
         "--use-redis", "--redis-host", "cache", "--redis-port", "6380", "--redis-db", "1"]
    )  # fmt: skip
    assert options["listen"] == ["tcp:9000:interface=127.0.0.2:backlog=1024"]
    assert options["db_url"] == DatabaseURL(
        "mysql", user="eth", password="pw", host="db", port=3306, database="blocks"
    )
    assert str(options["db_url"]) == "mysql://eth@db:3306/blocks"
    assert options["redis_url"] == RedisURL("cache", 6380, 1)


def test_redis_through_sentinel() -> None:
    """
    C{--redis sentinel://} names one or more Sentinels (port 26379 unless given, IPv6 in
    brackets), the master's name and the database (0 unless given), and a password for the
    master that its C{str} never shows; C{redis://} URLs and the older flags are unaffected.
    """
    options = parse(["--redis", "sentinel://:s%40cret@10.0.0.1,10.0.0.2:26380,[::1]:1/eth/3"])
    url = options["redis_url"]
    assert url == SentinelURL(
        (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 1)), "eth", 3, "s@cret"
    )
    assert str(url) == "sentinel://10.0.0.1:26379,10.0.0.2:26380,[::1]:1/eth/3"
    assert parse(["--redis", "sentinel://h/m"])["redis_url"] == SentinelURL(
        (("h", 26379),), "m", 0, None
    )
    assert parse(["--redis", "redis://h:1/2"])["redis_url"] == RedisURL("h", 1, 2)


def test_mysql_password_from_environment_or_file(tmp_path: Path) -> None:
    """
    The MySQL password comes from ETH_MYSQL_PASSWORD, or from --db-password-file, which wins.
    """
    url = "mysql://eth@127.0.0.1:3307/blocks"
    options = parse(["--db", url], {"ETH_MYSQL_PASSWORD": "from-env"})
    assert options["db_url"].password == "from-env"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    options = parse(["--db", url, "--db-password-file", str(secret)], {"ETH_MYSQL_PASSWORD": "x"})
    assert options["db_url"].password == "from-file"
    assert options["db_url"].port == 3307


@pytest.mark.parametrize(
    ("args", "environ", "expected"),
    [
        (["--db", "postgres://x"], {}, "--db: the database URL must start with"),
        (["--db", "mysql://host/db"], {}, "a MySQL URL is mysql://user@host"),
        (["--db", "mysql://u@h:99999/db"], {}, "bad port"),
        (["--db", "sqlite://relative"], {}, "a SQLite URL is"),
        (["--redis", "http://x"], {}, "--redis: a Redis URL is"),
        (["--redis", "sentinel://h:26379"], {}, "--redis: a Sentinel URL is"),
        (["--redis", "sentinel://h:1,/m/0"], {}, "--redis: a Sentinel URL is"),
        (["--redis", "sentinel://h:x/m/0"], {}, "--redis: the Sentinel URL has a bad port"),
        (["--redis", "sentinel://h/m/x"], {}, "bad database number"),
        (["--redis", "sentinel://h/m/0/1"], {}, "--redis: a Sentinel URL is"),
        (["--listen", "tcp:notaport"], {}, "--listen 'tcp:notaport"),
        (["--listen", "tcp:1", "--port", "2"], {}, "either --listen or --host/--port"),
        (["--idle-timeout", "0"], {}, "must be above 0"),
        (["--max-message-bytes", "lots"], {}, "expected a whole number, not 'lots'"),
        (["--use-mysql", "--mysql-host", "h"], {}, "--use-mysql called without --mysql-user"),
        (["--use-redis", "--redis-host", "h"], {}, "--use-redis called without --redis-port"),
        (["--tokens-file", "/nonexistent/tokens"], {}, "cannot read /nonexistent/tokens"),
        ([], {"ETH_WAIT": "-1"}, "must not be negative"),
        ([], {"ETH_VERBOSE": "maybe"}, "ETH_VERBOSE must be 1 or 0"),
        (["--bogus"], {}, "option --bogus not recognized"),
    ],
)
def test_bad_options_are_one_line(args: list[str], environ: dict[str, str], expected: str) -> None:
    """
    Each bad option or variable is one line naming the problem.
    """
    assert expected in usage_error(args, environ)


def test_password_never_echoed(tmp_path: Path) -> None:
    """
    Errors about a MySQL URL or password file never contain the password.
    """
    message = usage_error(["--db", "mysql://u:hunter2@h:port/db"])
    assert "hunter2" not in message
    empty = tmp_path / "pw"
    empty.write_text("\n")
    message = usage_error(["--db", "mysql://u@h/db", "--db-password-file", str(empty)])
    assert "is empty" in message


def test_twistd_reports_bad_option_in_one_line(tmp_path: Path) -> None:
    """
    Under twistd, a bad option prints one line on stderr (not the whole help, not a
    traceback) and exits 1.
    """
    result = subprocess.run(
        [TWISTD, "-n", "eth-server", "--max-message-bytes", "x"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("eth-server: ") and "expected a whole number, not 'x'" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_twistd_exits_when_database_unreachable(tmp_path: Path) -> None:
    """
    A database that cannot be reached within --wait ends eth-server with one line on stderr
    and status 1, without a traceback or the password.
    """
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "eth-server", "--db", "mysql://eth@127.0.0.1:1/blocks",
         "--wait", "0.5", "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        env={"ETH_MYSQL_PASSWORD": "hunter2", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cannot reach mysql://eth@127.0.0.1:1/blocks within 0.5 s")
    assert "Traceback" not in result.stdout + result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_twistd_refuses_a_latin1_table_in_one_line(
    tmp_path: Path, mysql_db: MySQLDatabase
) -> None:
    """
    An older server's ethereum_data in latin1 ends eth-server at once with one line on stderr
    saying how to convert it, and status 1, without a traceback.
    """
    mysql_db.query(
        "CREATE TABLE ethereum_data (id INTEGER PRIMARY KEY AUTO_INCREMENT,"
        " hash VARCHAR(64) NOT NULL UNIQUE, payload TEXT) DEFAULT CHARSET = latin1"
    )
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "eth-server", "--db", mysql_db.url,
         "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        env={"ETH_MYSQL_PASSWORD": mysql_db.password, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "ALTER TABLE ethereum_data CONVERT TO CHARACTER SET utf8mb4" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_webhooks_from_flags_environment_and_file(tmp_path: Path) -> None:
    """
    --webhook repeats (ETH_WEBHOOK holds several, separated by spaces), --webhook-file adds
    one URL a line; makeService then has a "webhooks" service, the event sink, that signs
    with the first line of --webhook-secret-file.  Without a URL there is no such service.
    """
    urls = tmp_path / "hooks"
    urls.write_text("# secrets inside\nhttps://u:p@hooks.example/s3cret?k=v\n")
    secret = tmp_path / "secret"
    secret.write_text("signing-key\n")
    config = parse(
        ["--webhook", "http://127.0.0.1:9000/a", "--webhook=http://[::1]:9001/",
         "--webhook-file", str(urls), "--webhook-secret-file", str(secret)]
    )  # fmt: skip
    assert [u.origin for u in config["webhooks"]] == [
        "http://127.0.0.1:9000",
        "http://[::1]:9001",
        "https://hooks.example",
    ]
    service = makeService(config, MemoryReactor())
    assert isinstance(service, MultiService)
    sink = service.getServiceNamed("webhooks")
    assert IEventSink.providedBy(sink) and isinstance(sink, WebhookService)
    assert sink.secret == b"signing-key"
    environ = {"ETH_WEBHOOK": "http://127.0.0.1:1/ http://127.0.0.1:2/"}
    assert len(parse([], environ)["webhooks"]) == 2
    plain = makeService(parse([]), MemoryReactor())
    assert isinstance(plain, MultiService)
    assert "webhooks" not in [s.name for s in plain]


def test_bad_webhooks_are_one_line_without_the_url(tmp_path: Path) -> None:
    """
    A bad webhook URL is a usage error naming the option and the URL's position, never the
    URL (it may hold a secret); a secret without a webhook is an error too.
    """
    urls = tmp_path / "hooks"
    urls.write_text("https://hooks.example/ok\nftp://user:s3cret@host/\n")
    error = usage_error(["--webhook-file", str(urls)])
    assert "--webhook-file: URL 2:" in error and "s3cret" not in error
    error = usage_error(["--webhook", "gopher://s3cret"])
    assert "--webhook: URL 1:" in error and "s3cret" not in error
    secret = tmp_path / "secret"
    secret.write_text("key\n")
    assert "needs a --webhook" in usage_error(["--webhook-secret-file", str(secret)])
