"""
What the tap modules (C{server_tap}, C{client_tap}, C{stats_tap}) share: options that also come
from C{ETH_*} environment variables, the older command line's C{--verbose}, and how a service
that cannot start ends the program.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ethtwisted.logs import log_observer
from ethtwisted.storage import StartupError

log = Logger(observer=log_observer)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(option: str) -> str:
    """
    The environment variable of a long option: C{--max-queue} is C{ETH_MAX_QUEUE}.
    """
    return "ETH_" + option.upper().replace("-", "_")


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, not {value!r}") from None
    if not number > 0:
        raise ValueError(f"must be above 0, not {value}")
    return number


def non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, not {value!r}") from None
    if not number >= 0:
        raise ValueError(f"must not be negative, not {value}")
    return number


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"expected a whole number, not {value!r}") from None
    if number < 1:
        raise ValueError(f"must be at least 1, not {value}")
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


def check_endpoint(description: str, option: str, *, server: bool) -> None:
    """
    Raise a usage error unless C{description} is an endpoint string twistd can use.
    """
    parse = serverFromString if server else clientFromString
    try:
        # Parsing builds the endpoint without connecting or listening; a memory reactor
        # keeps option parsing from choosing the process's reactor.
        endpoint = parse(MemoryReactor(), description)
    except Exception as e:
        raise usage.UsageError(f"--{option} {description!r}: {e}") from None
    # The parsers take any integer as a port; only connecting refuses one out of range, and a
    # client would retry that for ever.  TLS endpoints wrap the TCP one.
    port = getattr(getattr(endpoint, "_wrappedEndpoint", endpoint), "_port", None)
    lowest = 0 if server else 1
    if isinstance(port, int) and not lowest <= port <= MAX_PORT:
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


class StartingService(Service):
    """
    A service whose start-up takes time (waiting for stores, listening): L{start_up} runs when
    the service starts, and L{ready} fires once it is done.  If it fails, the program ends with
    one line on stderr: the L{StartupError}'s message, or a pointer to the logged bug.
    """

    what = "the service"
    """What is starting, for the log."""

    def __init__(self, reactor: IReactorCore) -> None:
        self.reactor = reactor
        self.ready: Deferred[None] = Deferred()

    async def start_up(self) -> None:
        raise NotImplementedError()

    def startService(self) -> None:
        super().startService()
        self.ready = Deferred.fromCoroutine(self.start_up())
        self.ready.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(StartupError):
            fatal(self.reactor, str(failure.value))
        else:
            log.failure("starting {what}", failure, what=self.what)
            fatal(self.reactor, "internal error while starting; see the log")


async def listen_on(
    endpoints: Sequence[tuple[str, IStreamServerEndpoint]], factory: IProtocolFactory, what: str
) -> list[IListeningPort]:
    """
    Listen with C{factory} on each C{(description, endpoint)}; raise L{StartupError} naming the
    first endpoint that cannot be listened on.
    """
    ports = []
    for description, endpoint in endpoints:
        try:
            ports.append(await endpoint.listen(factory))
        except Exception as e:
            raise StartupError(f"cannot listen on {description}: {e}") from e
        log.info("{what} on {description}", what=what, description=description)
    return ports


def fatal(reactor: IReactorCore, message: str) -> None:
    """
    End the program because it cannot do its job: C{message} as one line on stderr (and in
    the log), then a clean shutdown with exit status 1.
    """
    log.critical("{message}", message=message)
    # twistd sends sys.stderr to the log; the line is for whoever started the program.
    stderr = sys.__stderr__ or sys.stderr
    stderr.write(f"{message}\n")
    stderr.flush()
    # twistd exits 0 whenever its reactor stops; the exit status is set last of all, once
    # twistd has cleaned up after itself (its pid file, its log).
    atexit.register(_exit_failed)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
