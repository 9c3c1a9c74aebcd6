"""
Compatibility both ways with the version on main before node status and sightings (commit
33fc7a3), installed from the git history into a venv of its own: a new client keeps delivering
every block to an old server, and an old client keeps working with the new server.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

import ethtwisted
from ethtwisted.client import EthClient
from ethtwisted.protocol import payload_hash
from tests.e2e import node_hashes, start_client, stored_blocks
from tests.helpers import TIMEOUT, start_server, wait_for
from tests.services import Anvil, free_port

OLD = "33fc7a3"


@pytest.fixture(scope="session")
def old_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A venv of its own holding ethtwisted as it was at OLD (from git archive), on the test
    venv's dependencies (a path to its site-packages, whose .pth naming this checkout is then
    not read); made once per session.
    """
    root = tmp_path_factory.mktemp("old-ethtwisted")
    checkout = Path(ethtwisted.__file__).resolve().parent.parent
    source = root / "src"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(checkout), "archive", OLD], check=True,
                             capture_output=True, timeout=60).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True, timeout=60)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)  # fmt: skip
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    Path(site, "0-ethtwisted-old.pth").write_text(f"{source}\n")
    Path(site, "1-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run(
        [str(python), "-c", "import ethtwisted.protocol as p; print(p.__file__)"],
        check=True, capture_output=True, text=True, timeout=60, cwd=root, env=old_environ(),
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(source)), where
    return python


def old_environ() -> dict[str, str]:
    """
    This environment without PYTHONPATH and ETH_* variables: nothing names this checkout.
    """
    return {k: v for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith("ETH_")}  # fmt: skip


def twistd(python: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """
    C{twistd -n} of the old version, run from its log's folder (not this checkout).
    """
    return subprocess.Popen(
        [str(python), "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", f"--logfile={log}", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        cwd=log.parent, env=old_environ(),
    )  # fmt: skip


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def wait_for_connection(client: EthClient) -> Deferred[None]:
    """
    Fire at the client's next connection to its server (within the tests' timeout).
    """
    assert client.connection is not None
    d: Deferred[None] = Deferred()

    def listener(up: bool) -> None:
        if up and not d.called:
            reactor.callLater(0, d.callback, None)

    client.connection.connection_listeners.append(listener)
    return d.addTimeout(TIMEOUT, reactor)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def stored(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    try:
        return stored_blocks(path)
    except sqlite3.OperationalError:  # the old server has not made its table yet
        return []


@pytest_twisted.ensureDeferred
async def test_new_client_delivers_every_block_to_an_old_server(
    anvil: Anvil, old_python: Path, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """
    A new client against the server of before (which drops a connection on any control frame
    it does not know, and sends no welcome): every block is stored once, and the old server
    never drops the client's connection, so no new frame reached it, neither on the first
    connection (after the wait for a welcome) nor on the one after a connection lost (on
    which the client no longer waits).
    """
    port, db, log = free_port(), tmp_path / "old.sqlite", tmp_path / "old-server.log"
    processes.append(twistd(old_python, log, "eth-server", "--db", f"sqlite:///{db}",
                            "--listen", f"tcp:{port}:interface=127.0.0.1"))  # fmt: skip
    await wait_for(lambda: listening(port), what="the old server to listen")
    client = start_client(anvil.ipc_path, port)
    try:
        await wait_for(lambda: len(stored(db)) == 1, what="block 0")
        for _ in range(3):
            anvil.mine()
            await deferLater(reactor, 0.1)
        await wait_for(lambda: len(stored(db)) == len(node_hashes(anvil)), what="blocks 1 to 3")
        assert client.connection is not None and client.connection.protocol is not None
        reconnected = wait_for_connection(client)
        client.connection.protocol.transport.abortConnection()
        await reconnected
        anvil.mine(5)
        await wait_for(lambda: len(stored(db)) == len(node_hashes(anvil)), what="blocks 4 to 8")
        await wait_for(lambda: not len(client.outbox), what="every acknowledgement")
    finally:
        await client.stopService()
    assert stored(db) == sorted(node_hashes(anvil).items())
    text = log.read_text()
    assert "dropping connection" not in text and "Traceback" not in text


@pytest_twisted.ensureDeferred
async def test_old_client_works_with_the_new_server(
    anvil: Anvil, old_python: Path, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """
    The client of before against the new server: every block is stored once and acknowledged
    (the client's outbox empties: its spool holds no batch), the server sends it no frame it
    does not know (it would drop the connection and log it), and each of its payloads counts
    as a sighting with the server's receive time and via "unknown" (/api/v1/blocks/<sha256>).
    """
    from treq import get

    db = tmp_path / "new.sqlite"
    server = await start_server(
        ["--db", f"sqlite:///{db}", "--stats", "tcp:0:interface=127.0.0.1"]
    )
    spool, log = tmp_path / "spool", tmp_path / "old-client.log"
    try:
        processes.append(twistd(old_python, log, "eth-client", "--node", anvil.ipc_path,
                                "--server", server.client_endpoint,
                                "--interval", "0.05", "--name", "old", "--spool",
                                str(spool)))  # fmt: skip
        await server.committed.wait_for(list(node_hashes(anvil).values()))
        anvil.mine(4)
        hashes = node_hashes(anvil)
        await server.committed.wait_for(list(hashes.values()))
        await wait_for(lambda: not list(spool.glob("batch-*.json")), what="every acknowledgement")
        assert stored_blocks(db) == sorted(hashes.items())
        with sqlite3.connect(db) as rows:
            payloads = [p for (p,) in rows.execute("SELECT payload FROM ethereum_data")]
        for payload in payloads:
            response = await get(
                f"{server.stats_url}/api/v1/blocks/{payload_hash(payload.encode())}"
            )
            body = json.loads(await response.content())
            [sighting] = body["sightings"]
            assert sighting["client"] == "old" and sighting["via"] == "unknown"
    finally:
        await server.stop()
    text = log.read_text()
    assert "dropping connection" not in text and "Traceback" not in text
