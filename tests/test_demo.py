"""
C{twistd eth-demo}: its options, and the whole demo for real: anvil, eth-server and eth-client
in one twistd, blocks landing in SQLite, a clean stop on SIGTERM and on Ctrl-C that leaves no
anvil behind, and a second run that resumes from the same state.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from ethtwisted import demo, demo_tap
from tests.helpers import wait_for
from tests.services import anvil_binary, free_port

TIMEOUT = 60.0
POLL = 0.2
TWISTD = str(Path(sys.executable).parent / "twistd")


# Options.


def parse(*args: str, **environ: str) -> demo_tap.Options:
    options = demo_tap.Options()
    options.environ = dict(environ)
    options.parseOptions(list(args))
    return options


def test_options_compose_server_and_client(tmp_path: Path) -> None:
    """
    The demo's options become the server's (SQLite in the state directory, the collector on
    127.0.0.1, the stats endpoint) and the client's (the node's IPC socket, that collector,
    a spool beside the database).
    """
    state = tmp_path / "state"
    options = parse(f"--state-dir={state}", "--dev-node-binary", sys.executable, "--port=1234")
    server, client = options["server"], options["client"]
    assert str(server["db_url"]) == f"sqlite:///{state / 'ethtwisted.sqlite'}"
    assert server["listen"] == ["tcp:1234:interface=127.0.0.1:backlog=1024"]
    assert server["stats"] == demo_tap.DEFAULT_STATS
    assert client["node"] == [str(state / "node.ipc")]
    assert client["server"] == ["tcp:host=127.0.0.1:port=1234"]
    assert client["spool"] == str(state / "spool")
    assert options["node_argv"][0] == sys.executable


def test_options_from_environment(tmp_path: Path) -> None:
    """
    The demo reads its own ETH_* variables, and only its own: ETH_DB, meant for a server,
    does not move the demo's database.
    """
    options = parse(
        "--dev-node-binary", sys.executable,
        ETH_STATE_DIR=str(tmp_path), ETH_STATS="8181", ETH_DB="sqlite:////elsewhere.sqlite",
    )  # fmt: skip
    assert options["state_dir"] == tmp_path
    assert options["server"]["stats"] == "tcp:8181:interface=127.0.0.1"
    assert str(options["server"]["db_url"]) == f"sqlite:///{tmp_path / 'ethtwisted.sqlite'}"


def test_node_arguments(tmp_path: Path) -> None:
    """
    anvil and geth both mine every --block-time seconds, serve IPC at the state directory's
    socket and keep their chain there.
    """
    anvil = demo.node_arguments("anvil", tmp_path, 3)
    assert anvil[anvil.index("--ipc") + 1] == str(tmp_path / "node.ipc")
    assert anvil[anvil.index("--block-time") + 1] == "3"
    assert anvil[anvil.index("--state") + 1] == str(tmp_path / "anvil-state.json")
    geth = demo.node_arguments("geth", tmp_path, 3)
    assert {"--dev", "--dev.period=3", f"--ipcpath={tmp_path / 'node.ipc'}"} <= set(geth)
    assert f"--datadir={tmp_path / 'geth'}" in geth


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dev-node", "ganache"], "must be one of anvil, geth"),
        (["--dev-node-binary", "/nonexistent/anvil"], "is not an executable program"),
        (["--state-dir", "/tmp/" + "x" * 120], "too long a path for a socket"),
        (["--block-time", "0"], "must be at least 1"),
        (["--port", "99999"], "must be 1 to 65535, not 99999"),
    ],
)
def test_bad_options(args: list[str], message: str) -> None:
    """
    A bad option ends the program with one line naming the problem.
    """
    with pytest.raises(SystemExit, match=f"^eth-demo: .*{message}"):
        parse(*args)


def test_bad_server_option() -> None:
    """
    A bad value the demo passes on to the server is reported as the demo's.
    """
    with pytest.raises(SystemExit, match=r"^eth-demo: --stats 'nonsense:1'"):
        parse("--dev-node-binary", sys.executable, "--stats", "nonsense:1")


def test_finds_anvil_of_the_npm_package(tmp_path: Path) -> None:
    """
    Without --dev-node-binary, anvil is the npm package's native binary under
    ./node_modules.
    """
    binary = tmp_path / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert demo.find_dev_node("anvil", tmp_path) == str(binary)


# The demo for real.


class Twistd(ProcessProtocol):
    """
    A C{twistd -n eth-demo} child: its output, and a Deferred that fires with its exit
    status and the signal that ended it (twistd stopped by a signal ends by that signal).
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def childDataReceived(self, child_fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.ended.callback((0, None))
        else:
            assert isinstance(reason.value, ProcessTerminated), reason
            self.ended.callback((reason.value.exitCode, reason.value.signal))

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


def start_demo(state: Path, collector: int, stats: int) -> Twistd:
    """
    Start the demo in a session of its own with a terminal, as from a shell: a Ctrl-C there
    is a SIGINT to its process group.
    """
    demo = Twistd()
    argv = [TWISTD, "-n", "--pidfile=", "eth-demo", f"--state-dir={state}"]
    argv += [f"--port={collector}", f"--stats=tcp:{stats}:interface=127.0.0.1"]
    argv += ["--block-time=1", f"--dev-node-binary={anvil_binary()}"]
    env = dict(os.environ)
    reactor.spawnProcess(demo, TWISTD, argv, env=env, path=str(state.parent), usePTY=True)
    return demo


def stored(database: Path) -> list[int]:
    """
    The block numbers stored in the demo's database so far.
    """
    if not database.exists():
        return []
    try:
        with sqlite3.connect(database, timeout=1) as db:
            return [n for (n,) in db.execute("SELECT number FROM eth_blocks ORDER BY number")]
    except sqlite3.OperationalError:  # the server has not created its tables yet
        return []


async def wait_until_stored(demo: Twistd, database: Path, more_than: int) -> list[int]:
    """
    Poll the database until it holds more than C{more_than} blocks; fail if the demo ends
    or time runs out first.
    """
    numbers: list[int] = []

    def more() -> bool:
        assert not demo.ended.called, demo.text
        numbers[:] = stored(database)
        return len(numbers) > more_than

    await wait_for(more, TIMEOUT, interval=POLL, what=lambda: demo.text)
    return numbers


def anvil_processes(state: Path) -> list[int]:
    """
    The processes whose command line names the demo's state directory but are not twistd:
    its anvil.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(state).encode() in a for a in argv) and not any(b"twistd" in a for a in argv):
            pids.append(int(entry.name))
    return pids


async def stop(demo: Twistd, how: signal.Signals) -> None:
    """
    Send C{how} to the demo (SIGINT to its process group, as a Ctrl-C does) and check it
    shuts down cleanly: all the way through, then by that signal.
    """
    if how == signal.SIGINT:
        os.killpg(demo.transport.pid, how)  # type: ignore[union-attr]
    else:
        demo.transport.signalProcess(how.name[3:])  # type: ignore[union-attr]
    assert await demo.ended.addTimeout(TIMEOUT, reactor) == (None, how), demo.text
    assert "Server Shut Down." in demo.text


@pytest_twisted.ensureDeferred
async def test_demo_runs_stops_and_resumes(tmp_path: Path) -> None:
    """
    The demo serves its dashboard and stores the node's blocks in SQLite; SIGTERM stops it
    cleanly with no anvil left; a second run resumes on the same database and chain,
    and a Ctrl-C stops it as cleanly.  Nothing is logged as an error meanwhile.
    """
    state = tmp_path / "state"
    database = state / "ethtwisted.sqlite"
    collector, stats = free_port(), free_port()

    demo = start_demo(state, collector, stats)
    first = await wait_until_stored(demo, database, 0)
    response = await treq.get(f"http://127.0.0.1:{stats}/healthz")
    assert response.code == 200
    anvils = anvil_processes(state)
    assert len(anvils) == 1, demo.text
    assert f"dashboard on http://127.0.0.1:{stats}/" in demo.text
    await stop(demo, signal.SIGTERM)
    assert not [pid for pid in anvils if Path(f"/proc/{pid}").exists()]
    assert not (state / "node.ipc").exists()

    again = start_demo(state, collector, stats)
    numbers = await wait_until_stored(again, database, len(stored(database)))
    assert numbers[: len(first)] == first
    assert max(numbers) > max(first)
    assert sorted(set(numbers)) == numbers == list(range(len(numbers)))
    anvils = anvil_processes(state)
    await stop(again, signal.SIGINT)
    assert not [pid for pid in anvils if Path(f"/proc/{pid}").exists()]

    for run in (demo, again):
        assert "Traceback" not in run.text
        assert "#error]" not in run.text and "#critical]" not in run.text
