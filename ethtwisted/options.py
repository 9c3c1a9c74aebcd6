"""
What the tap modules share about the command line: options that also come from C{ETH_*}
environment variables (and the older command line's C{--verbose}), converters, token and file
helpers, endpoint checks, and where the stores are (eth-server's and eth-stats' options).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IHostnameResolver, IReactorPluggableNameResolver
from twisted.python import usage
from zope.interface import implementer

from ethtwisted.endpoints import endpoint_port
from ethtwisted.storage.redis_store import parse_redis_url
from ethtwisted.storage.sql_pool import DEFAULT_DB_URL, parse_db_url

DEFAULT_WEB = "tcp:8080:interface=127.0.0.1"
"""Where eth-stats (C{--listen}) and eth-demo (C{--stats}) serve HTTP unless told."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(option: str) -> str:
    """
    The environment variable of a long option: C{--max-queue} is C{ETH_MAX_QUEUE}.
    """
    return "ETH_" + option.upper().replace("-", "_")


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"expected a number, not {value!r}") from None


def positive_float(value: str) -> float:
    number = _float(value)
    if not number > 0:
        raise ValueError(f"must be above 0, not {value}")
    return number


def non_negative_float(value: str) -> float:
    number = _float(value)
    if not number >= 0:
        raise ValueError(f"must not be negative, not {value}")
    return number


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected a whole number, not {value!r}") from None


def positive_int(value: str) -> int:
    number = _int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return number


def non_negative_int(value: str) -> int:
    number = _int(value)
    if number < 0:
        raise ValueError(f"must not be negative, not {value}")
    return number


MAX_PORT = 65535


def port_number(value: str) -> int:
    """
    A TCP port to connect to or listen on, 1 to 65535.
    """
    number = positive_int(value)
    if number > MAX_PORT:
        raise ValueError(f"must be 1 to {MAX_PORT}, not {value}")
    return number


class EnvOptions(usage.Options):
    """
    Options that fall back to C{ETH_*} environment variables; a flag on the command line
    beats the environment.  Options given by an C{opt_NAME} method may be repeated; their
    variable holds the values separated by white space.
    """

    optFlags: Sequence[Sequence[str | None]] = [
        ["verbose", "v", "Log debug messages too."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.environ: dict[str, str] = dict(os.environ)

    command = "ethtwisted"
    """The program's name in error messages."""

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse C{options} after the environment's.  A usage error ends the program with one
        line on stderr and exit status 1 (twistd itself would print the whole help first).
        """
        args = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(self._environment_args(args) + args)
        except usage.UsageError as e:
            raise SystemExit(f"{self.command}: {e}") from None

    def _environment_args(self, args: Sequence[str]) -> list[str]:
        given = {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}
        given |= {self.synonyms.get(a[1:2], "") for a in args if a[:1] == "-" and a[1:2] != "-"}
        repeatable = {name.replace("_", "-") for name in dir(self) if name.startswith("opt_")} - {
            "opt-help",
            "opt-version",
        }
        env_args: list[str] = []
        for long_opt in self.longOpt:
            name = long_opt.rstrip("=")
            if name in ("help", "version") or self.synonyms.get(name, name) != name:
                continue
            value = self.environ.get(env_name(name))
            if value is None:
                continue
            if not long_opt.endswith("="):
                if value.strip().lower() in _TRUE:
                    env_args.append(f"--{name}")
                elif value.strip().lower() not in _FALSE:
                    raise usage.UsageError(f"{env_name(name)} must be 1 or 0, true or false")
            elif f"opt-{name}" in repeatable:
                if name not in given:
                    env_args.extend(f"--{name}={v}" for v in value.split())
            else:
                env_args.append(f"--{name}={value}")
        return env_args


def read_lines(path: str, option: str) -> list[str]:
    """
    The non-blank, non-comment lines of a file named by C{--option} (tokens, a password).
    Errors name the file, never its content.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise usage.UsageError(f"--{option}: cannot read {path}: {reason}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise usage.UsageError(f"--{option}: {path} is empty")
    return lines


@implementer(IReactorPluggableNameResolver)
class _ParsingOnly:
    """
    The reactor an endpoint is built with when its description is only checked: the parsers
    keep it without using it, and option parsing must not choose the process's reactor.
    """

    nameResolver = None

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        raise NotImplementedError("an endpoint built to check its description is not used")


def check_endpoint(description: str, option: str, *, server: bool) -> None:
    """
    Raise a usage error unless C{description} is an endpoint string twistd can use.
    """
    parse = serverFromString if server else clientFromString
    try:
        parse(_ParsingOnly(), description)
    except Exception as e:
        raise usage.UsageError(f"--{option} {description!r}: {e}") from None
    # The parsers take any integer as a port; only connecting refuses one out of range, and a
    # client would retry that for ever.
    port = endpoint_port(description, server=server)
    lowest = 0 if server else 1
    if port is not None and not lowest <= port <= MAX_PORT:
        raise usage.UsageError(
            f"--{option} {description!r}: port {port} is not {lowest} to {MAX_PORT}"
        )


def token_options(option: str, what: str) -> list[list[Any]]:
    """
    C{--option TOKEN} and C{--option-file FILE}: a bearer token that C{what} require.
    """
    return [
        [option, None, None,
         f"Bearer token required by {what} (off if unset); visible to other users: prefer"
         f" ${env_name(option)} or --{option}-file."],
        [f"{option}-file", None, None, f"File holding the {option.removesuffix('-token')} token."],
    ]  # fmt: skip


def read_token(config: Mapping[str, Any], option: str) -> str | None:
    """
    The token given by C{--option} or C{--option-file}, if any.
    """
    if config[option] and config[f"{option}-file"]:
        raise usage.UsageError(f"give either --{option} or --{option}-file, not both")
    if config[f"{option}-file"]:
        return read_lines(config[f"{option}-file"], f"{option}-file")[0]
    return config[option] or None


def web_endpoint(description: str, option: str) -> str:
    """
    An endpoint for an HTTP service: a bare port number means that port on the loopback
    interface.
    """
    if description.isdigit():
        description = f"tcp:{description}:interface=127.0.0.1"
    check_endpoint(description, option, server=True)
    return description


STATS_TOKEN_OPTIONS = token_options("stats-token", "the stats JSON API, /metrics and dashboard")
"""eth-server's and eth-stats' C{--stats-token} and C{--stats-token-file}."""


class StoreOptions(EnvOptions):
    """
    Where the stores are: shared by eth-server and eth-stats.
    """

    optParameters = [
        ["db", None, DEFAULT_DB_URL,
         "Database URL: sqlite:///relative/path, sqlite:////absolute/path or"
         " mysql://user@host:3306/database."],
        ["db-password-file", None, None,
         "File holding the MySQL password (else $ETH_MYSQL_PASSWORD)."],
        ["redis", None, None,
         "Redis URL for the counters, redis://host:6379/0, or through Sentinel"
         " sentinel://host:26379[,host:26380...]/master-name/0 (off if unset)."],
        ["redis-prefix", None, "eth:", "Prefix of the Redis keys."],
        ["wait", None, 30.0, "Seconds to wait for the stores at start-up.", non_negative_float],
        # The older command line's storage flags.
        ["mysql-host", None, None, "With --use-mysql: MySQL host (port 3306)."],
        ["mysql-user", None, None, "With --use-mysql: MySQL user."],
        ["mysql-pass", None, None,
         "With --use-mysql: MySQL password (visible to other users: prefer $ETH_MYSQL_PASSWORD)."],
        ["mysql-db", None, None, "With --use-mysql: MySQL database."],
        ["redis-host", None, None, "With --use-redis: Redis host."],
        ["redis-port", None, None, "With --use-redis: Redis port.", int],
        ["redis-db", None, 0, "With --use-redis: Redis database number.", int],
    ]  # fmt: skip
    optFlags = [
        ["use-mysql", None, "Store in MySQL given by --mysql-* (same as --db mysql://...)."],
        ["use-redis", None, "Count in Redis given by --redis-* (same as --redis redis://...)."],
    ]

    def postOptions(self) -> None:
        self._older_storage_flags()
        try:
            url = parse_db_url(self["db"])
        except ValueError as e:
            raise usage.UsageError(f"--db: {e}") from None
        if url.dialect == "mysql":
            if self["db-password-file"]:
                password: str | None = read_lines(self["db-password-file"], "db-password-file")[0]
            else:
                password = self.environ.get("ETH_MYSQL_PASSWORD", url.password)
            url = url.with_password(password)
        elif self["db-password-file"]:
            raise usage.UsageError("--db-password-file goes with a mysql:// database")
        self["db_url"] = url
        self["redis_url"] = None
        if self["redis"]:
            try:
                self["redis_url"] = parse_redis_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(f"--redis: {e}") from None

    def _older_storage_flags(self) -> None:
        if self["use-mysql"]:
            if self["db"] != DEFAULT_DB_URL:
                raise usage.UsageError("give either --db or --use-mysql, not both")
            for name in ("mysql-host", "mysql-user", "mysql-db"):
                if not self[name]:
                    raise usage.UsageError(f"--use-mysql called without --{name}")
            if not (self["mysql-pass"] or "ETH_MYSQL_PASSWORD" in self.environ):
                raise usage.UsageError("--use-mysql called without --mysql-pass")
            self["db"] = (
                f"mysql://{self['mysql-user']}@{self['mysql-host']}:3306/{self['mysql-db']}"
            )
            if self["mysql-pass"] and "ETH_MYSQL_PASSWORD" not in self.environ:
                self.environ["ETH_MYSQL_PASSWORD"] = self["mysql-pass"]
        if self["use-redis"]:
            if self["redis"]:
                raise usage.UsageError("give either --redis or --use-redis, not both")
            if not self["redis-host"]:
                raise usage.UsageError("--use-redis called without --redis-host")
            if not self["redis-port"] or self["redis-port"] <= 0:
                raise usage.UsageError("--use-redis called without --redis-port")
            self["redis"] = f"redis://{self['redis-host']}:{self['redis-port']}/{self['redis-db']}"
