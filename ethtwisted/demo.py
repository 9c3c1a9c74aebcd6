"""
The demo at run time: a dev node (anvil, or geth in its dev mode) as a child process mining a
block every few seconds and serving IPC on a socket in the state directory, and the service
that starts the server, then the client once the node answers, and stops them the other way
round.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from ethtwisted.logs import Logger
from ethtwisted.startup import StartingService, fatal
from ethtwisted.storage import StartupError

# The tag twistd's log lines have had for the demo's messages since they were written.
log = Logger(namespace="ethtwisted.demo_tap")

DEV_NODES = ("anvil", "geth")
SOCKET_NAME = "node.ipc"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1
OUTPUT_LINES = 20
_RPC_METHOD = re.compile(r"[a-z0-9]+_[A-Za-z0-9]+$")
"""anvil prints the name of every RPC method called: not worth a log line."""

# Run in the child between fork and the dev node: its own process group, so that a Ctrl-C at
# the terminal reaches only twistd, which then stops everything in order; and on Linux a
# SIGTERM when twistd dies, so that no node outlives it even then.
_LAUNCHER = """\
import os, signal, sys
os.setpgrp()
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def find_dev_node(kind: str, cwd: Path) -> str | None:
    """
    The program of a dev node: anvil from the npm package under C{cwd/node_modules} (its
    native binary, not the node.js wrapper), else C{anvil} or C{geth} on the PATH.
    """
    if kind == "anvil":
        native = sorted(cwd.glob("node_modules/@foundry-rs/anvil-*/bin/anvil"))
        for candidate in native:
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which(kind)


def node_arguments(kind: str, state_dir: Path, block_time: int) -> list[str]:
    """
    The dev node's arguments: a block every C{block_time} seconds, IPC on the socket in
    C{state_dir}, and its chain kept there.
    """
    ipc = str(state_dir / SOCKET_NAME)
    if kind == "anvil":
        return [
            "--host", "127.0.0.1", "--port", "0",
            "--ipc", ipc,
            "--block-time", str(block_time),
            "--state", str(state_dir / "anvil-state.json"),
        ]  # fmt: skip
    return [
        "--dev",
        f"--dev.period={block_time}",
        f"--datadir={state_dir / 'geth'}",
        f"--ipcpath={ipc}",
        "--verbosity=2",
    ]


class _NodeProtocol(ProcessProtocol):
    """
    Logs the dev node's output at debug level (its address at info level), keeps the last
    lines of its stderr for an error message, and tells C{ended} its exit status (C{None}
    after a signal).
    """

    def __init__(self, name: str, ended: Callable[[int | None], None]) -> None:
        self.name = name
        self.ended = ended
        self.errors: deque[str] = deque(maxlen=OUTPUT_LINES)
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, child_fd: int, data: bytes) -> None:
        *lines, self._partial[child_fd] = (self._partial.get(child_fd, b"") + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line or _RPC_METHOD.match(line):
                continue
            if child_fd == 2:
                self.errors.append(line)
            level = log.info if line.startswith("Listening on ") else log.debug
            level("{node}: {line}", node=self.name, line=line)

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.ended(code)


class DevNode:
    """
    The dev node as a child process: started, waited for until its IPC socket answers, and
    stopped with SIGTERM (then SIGKILL after C{STOP_TIMEOUT} seconds).
    """

    def __init__(self, reactor: Any, argv: list[str], ipc_path: Path, cwd: Path) -> None:
        self.reactor = reactor
        self.argv = argv
        self.ipc_path = ipc_path
        self.cwd = cwd
        self.name = Path(argv[0]).name
        self.protocol = _NodeProtocol(self.name, self._exited)
        self.exited = False
        self.code: int | None = None
        self._waiting: list[Deferred[None]] = []

    async def start(self) -> None:
        """
        Spawn the node and return once its IPC socket accepts connections; raise
        L{StartupError} if it exits or does not answer in time.
        """
        # A socket file left by a node that was killed would pass for a live one.
        self.ipc_path.unlink(missing_ok=True)
        reactor: IReactorProcess = self.reactor
        launcher = [sys.executable, "-c", _LAUNCHER, str(os.getpid())]
        reactor.spawnProcess(
            self.protocol, sys.executable, [*launcher, *self.argv],
            env=dict(os.environ), path=str(self.cwd),
        )  # fmt: skip
        clock: IReactorTime = self.reactor
        deadline = clock.seconds() + READY_TIMEOUT
        while not self.answers():
            if self.exited:
                raise StartupError(f"{self.name} exited at start-up{self.last_error()}")
            if clock.seconds() > deadline:
                raise StartupError(f"{self.name} did not open {self.ipc_path} in time")
            await deferLater(clock, POLL_INTERVAL)
        log.info("{node} ready, IPC at {path}", node=self.name, path=str(self.ipc_path))

    def answers(self) -> bool:
        """
        Whether the IPC socket accepts a connection (a local connect does not block).
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.ipc_path))
            except OSError:
                return False
        return True

    def _exited(self, code: int | None) -> None:
        self.exited = True
        self.code = code
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def ended(self) -> Deferred[None]:
        """
        A Deferred that fires once the node has exited.
        """
        if self.exited:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def last_error(self) -> str:
        """
        The last line the node wrote to stderr, as the end of a message.
        """
        return f": {self.protocol.errors[-1]}" if self.protocol.errors else ""

    async def stop(self) -> None:
        """
        Stop the node and wait until it has exited.
        """
        if self.exited or self.protocol.transport is None:
            return
        self._signal("TERM")
        clock: IReactorTime = self.reactor
        try:
            await self.ended().addTimeout(STOP_TIMEOUT, clock)
        except TimeoutError:
            log.warn("{node} did not stop within {t:g} s: killing it", node=self.name,
                     t=STOP_TIMEOUT)  # fmt: skip
            self._signal("KILL")
            await self.ended()
        self.ipc_path.unlink(missing_ok=True)
        log.info("{node} stopped", node=self.name)

    def _signal(self, name: str) -> None:
        transport = self.protocol.transport
        if transport is None:
            return
        with contextlib.suppress(ProcessExitedAlready):
            transport.signalProcess(name)


class DemoService(StartingService):
    """
    The server at once, the client once the node answers; stopped the other way round.  A
    node that cannot start, or exits while the demo runs, ends the program with one line on
    stderr.
    """

    what = "the demo"

    def __init__(
        self, reactor: Any, node: DevNode, server: IService, client: IService, dashboard: str
    ) -> None:
        super().__init__(reactor)
        self.node = node
        self.server = server
        self.client = client
        self.dashboard = dashboard
        self.stopping = False

    def startService(self) -> None:
        self.server.startService()
        log.info("dashboard on {url}", url=self.dashboard)
        super().startService()

    async def start_up(self) -> None:
        await self.node.start()
        self.node.ended().addCallback(self._node_ended)
        self.client.startService()

    def _node_ended(self, _: None) -> None:
        if not self.stopping:
            code = self.node.code
            status = "was killed" if code is None else f"exited with status {code}"
            fatal(self.reactor, f"{self.node.name} {status}{self.node.last_error()}")

    def stopService(self) -> Deferred[None]:
        self.stopping = True
        return super().stopService()

    async def shut_down(self) -> None:
        for service in (self.client, self.server):
            if service.running:
                await service.stopService()
        await self.node.stop()
