"""
The older command line, C{eth [--verbose] [--wait N] server|client [options]}, kept so that
scripts, Dockerfiles and task definitions written for it keep working: it runs
C{twistd -n eth-server} or C{twistd -n eth-client} in this process, in the foreground, with the
same options.

What the older command line meant and what it means now:

  - C{-v}/C{--verbose}: debug logging; passed on as the plugin's C{--verbose}.
  - C{--wait N} (default 0: start at once): it used to sleep N seconds before starting; now the
    server waits up to N seconds for its stores to answer (the plugin's C{--wait}, default 30
    when not given) instead of sleeping blindly.  The client reconnects by itself, so it needs
    no wait and ignores it.
  - C{eth help [server|client]}: the help of a command.
  - C{eth client}: sends the older client's HTML page (C{--format html}) unless a format is
    chosen, so that its payloads dedup with those of older clients.
  - The older environment variables C{ETH_SERVER_<OPTION>} and C{ETH_CLIENT_<OPTION>} stand for
    C{ETH_<OPTION>} of that command (C{ETH_SERVER_MYSQL_HOST} is C{ETH_MYSQL_HOST} for
    C{eth server}); C{ETH_VERBOSE} and C{ETH_WAIT} keep their meaning.

Every other option is the plugin's own: see C{eth server --help} and C{eth client --help}.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

USAGE = """\
Usage: eth [-v|--verbose] [--wait N] COMMAND [options]

Runs an ethtwisted service in the foreground: the older command line of
`twistd -n eth-server` and `twistd -n eth-client`.

Options:
  -v, --verbose  Log debug messages too.
  --wait N       Server: wait up to N seconds for its stores at start-up.
  -h, --help     Show this message and exit.

Commands:
  server  Collect blocks from eth-clients into SQL and Redis (eth-server).
  client  Follow an Ethereum node and send every block to an eth-server (eth-client).
  help    Show the help of a command: eth help server.
"""

PLUGINS = {"server": "eth-server", "client": "eth-client"}


class UsageError(Exception):
    """
    The command line is wrong; the message is the one line to show.
    """


@dataclass
class Invocation:
    """
    What C{eth} was asked to do: run C{twistd} with C{argv} in C{environ}, or, with no
    C{argv}, only show C{text} (help).
    """

    argv: list[str] = field(default_factory=list)
    environ: dict[str, str] = field(default_factory=dict)
    text: str = ""


def translate(args: Sequence[str], environ: Mapping[str, str]) -> Invocation:
    """
    Turn the arguments of C{eth} (without the program name) into a twistd invocation.
    """
    verbose = False
    wait: str | None = None
    rest = list(args)
    while rest and rest[0].startswith("-"):
        arg = rest.pop(0)
        if arg in ("-h", "--help"):
            return Invocation(text=USAGE)
        if arg in ("-v", "--verbose"):
            verbose = True
        elif arg == "--wait":
            if not rest:
                raise UsageError("--wait needs a number of seconds")
            wait = rest.pop(0)
        elif arg.startswith("--wait="):
            wait = arg.split("=", 1)[1]
        else:
            raise UsageError(f"unknown option {arg}")
    if not rest:
        return Invocation(text=USAGE)
    command, options = rest[0], rest[1:]
    if command == "help":
        if not options or options[0] == "help":
            return Invocation(text=USAGE)
        if options[0] not in PLUGINS:
            raise UsageError(f"command {options[0]} does not exist")
        command, options = options[0], ["--help"]
    if command not in PLUGINS:
        raise UsageError(f"command {command} does not exist")
    env = command_environment(command, environ)
    plugin_args = []
    if verbose:
        plugin_args.append("--verbose")
    if wait is not None and command == "server":
        plugin_args.append(f"--wait={wait}")
    if command == "client" and "ETH_FORMAT" not in env and not given(options, "format"):
        plugin_args.append("--format=html")
    argv = ["twistd", "--nodaemon", "--pidfile=", PLUGINS[command], *plugin_args, *options]
    return Invocation(argv=argv, environ=env)


def command_environment(command: str, environ: Mapping[str, str]) -> dict[str, str]:
    """
    C{environ} with the older C{ETH_<COMMAND>_<OPTION>} variables also given as
    C{ETH_<OPTION>}, unless that is set already.
    """
    env = dict(environ)
    prefix = f"ETH_{command.upper()}_"
    for name, value in environ.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            env.setdefault("ETH_" + name[len(prefix) :], value)
    return env


def given(options: Sequence[str], name: str) -> bool:
    """
    Whether C{--name} appears among C{options}, alone or as C{--name=value}.
    """
    return any(o == f"--{name}" or o.startswith(f"--{name}=") for o in options)


def main(args: Sequence[str] | None = None) -> None:
    """
    The C{eth} console command.
    """
    try:
        invocation = translate(sys.argv[1:] if args is None else args, os.environ)
    except UsageError as e:
        sys.stderr.write(f"eth: {e}\nTry 'eth --help'.\n")
        raise SystemExit(2) from None
    if not invocation.argv:
        sys.stdout.write(invocation.text)
        return

    from twisted.scripts.twistd import run

    os.environ.update(invocation.environ)
    sys.argv = invocation.argv
    run()
