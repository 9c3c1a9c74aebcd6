"""
C{twistd eth-demo}: all of ethtwisted on one machine, in one process.

A dev node (anvil, or geth in its dev mode) runs as a child process mining a block every few
seconds and serving IPC on a socket in the state directory; eth-server stores in SQLite there
and serves the stats API and dashboard; eth-client follows the node over IPC and sends to the
server.  Both services run in this process's reactor (the asyncio reactor, which the client
needs).  Stopping stops the client, the server, then the node; a second run resumes from the
same state directory: the same SQLite file, the node's chain and the client's spool.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from ethtwisted import client_tap, server_tap
from ethtwisted.demo import (
    DEV_NODES,
    SOCKET_NAME,
    DemoService,
    DevNode,
    find_dev_node,
    node_arguments,
)
from ethtwisted.healthcheck import endpoint_url
from ethtwisted.logs import set_verbose
from ethtwisted.options import DEFAULT_WEB, EnvOptions, port_number, positive_int

DEFAULT_STATE_DIR = "ethtwisted-demo"
DEFAULT_STATS = DEFAULT_WEB
MAX_SOCKET_PATH = 100
"""Longest IPC socket path accepted: Unix socket addresses hold 104 to 108 bytes."""


def dev_node(value: str) -> str:
    if value not in DEV_NODES:
        raise ValueError(f"must be one of {', '.join(DEV_NODES)}, not {value!r}")
    return value


class Options(EnvOptions):
    command = "eth-demo"
    synopsis = "[options]"
    longdesc = (
        "Run a dev node, eth-server and eth-client together: the node mines a block every "
        "--block-time seconds, the client follows it over IPC, the server stores in SQLite "
        "and serves the dashboard. Everything is kept in --state-dir, and a second run "
        "resumes from it. Every option can also be given as an ETH_* environment variable "
        "(--state-dir is ETH_STATE_DIR); a flag beats the environment."
    )
    optParameters = [
        ["state-dir", None, DEFAULT_STATE_DIR,
         "Directory for the SQLite file, the node's chain, its IPC socket and the client's"
         " spool."],
        ["dev-node", None, "anvil", f"Dev node to run: {' or '.join(DEV_NODES)}.", dev_node],
        ["dev-node-binary", None, None,
         "The dev node's program (default: anvil from ./node_modules, else on the PATH)."],
        ["block-time", None, 2, "Seconds between two blocks.", positive_int],
        ["port", None, 9999, "Port of the collector, on 127.0.0.1.", port_number],
        ["stats", None, DEFAULT_STATS,
         "Endpoint of the stats API and dashboard (a bare port means loopback)."],
    ]  # fmt: skip

    def postOptions(self) -> None:
        state_dir = Path(self["state-dir"]).absolute()
        self["state_dir"] = state_dir
        ipc = state_dir / SOCKET_NAME
        if len(os.fsencode(ipc)) > MAX_SOCKET_PATH:
            raise usage.UsageError(f"--state-dir: {ipc} is too long a path for a socket")
        if self["dev-node-binary"] is not None:
            binary = shutil.which(self["dev-node-binary"])
            if binary is None:
                raise usage.UsageError(
                    f"--dev-node-binary: {self['dev-node-binary']} is not an executable program"
                )
        else:
            binary = find_dev_node(self["dev-node"], Path.cwd())
            if binary is None:
                hint = "npm ci (make run does it)" if self["dev-node"] == "anvil" else "install it"
                raise usage.UsageError(
                    f"{self['dev-node']} not found: {hint}, or give --dev-node-binary"
                )
        arguments = node_arguments(self["dev-node"], state_dir, self["block-time"])
        self["node_argv"] = [binary, *arguments]
        verbose = ["--verbose"] if self["verbose"] else []
        self["server"] = self.sub_options(server_tap.Options(), [
            f"--db=sqlite:///{state_dir / 'ethtwisted.sqlite'}",
            f"--listen=tcp:{self['port']}:interface=127.0.0.1",
            f"--stats={self['stats']}",
            "--summary-interval=10",
            *verbose,
        ])  # fmt: skip
        self["client"] = self.sub_options(client_tap.Options(), [
            f"--node={ipc}",
            f"--server=tcp:host=127.0.0.1:port={self['port']}",
            f"--spool={state_dir / 'spool'}",
            f"--name=demo-{self['dev-node']}",
            *verbose,
        ])  # fmt: skip

    @staticmethod
    def sub_options(options: EnvOptions, args: list[str]) -> EnvOptions:
        """
        C{options} parsed from C{args} alone, by the base parser: the demo's environment is
        not theirs, and their usage errors are the demo's.
        """
        options.environ = {}
        usage.Options.parseOptions(options, args)
        return options


def makeService(config: Options, reactor: Any = None) -> IService:
    if reactor is None:
        # The client's makeService installs the asyncio reactor when none is installed yet.
        client = client_tap.makeService(config["client"])
        from twisted.internet import reactor
    else:
        client = client_tap.makeService(config["client"], reactor)
    set_verbose(config["verbose"])
    state_dir: Path = config["state_dir"]
    state_dir.mkdir(parents=True, exist_ok=True)
    server = server_tap.makeService(config["server"], reactor)
    node = DevNode(reactor, config["node_argv"], state_dir / SOCKET_NAME, state_dir)
    dashboard = endpoint_url(config["server"]["stats"], "/") or config["server"]["stats"]
    return DemoService(reactor, node, server, client, dashboard)
