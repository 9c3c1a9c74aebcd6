"""
No single point of failure, for real: eth-servers on the nodes of a 3-node MariaDB Galera
cluster, clients listing every server, and Redis found through Sentinel; one anvil node
mining throughout, a server and a Galera node killed (SIGKILL), a Redis master killed.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread

from ethtwisted import client_tap
from ethtwisted.client import EthClient
from tests.e2e import node_hashes
from tests.helpers import ROLLBACK_FAILED, TIMEOUT, start_server, wait_for
from tests.services import (
    Anvil,
    AnvilFactory,
    GaleraCluster,
    MySQLDatabase,
    SentinelGroup,
    free_port,
)
from tests.twistd import TWISTD, twistd_environ

ACK_TIMEOUT = 2.0
BLOCK_TIME = 0.25


class ServerProcess:
    """C{twistd -n eth-server} as a child process (so that it can be killed with SIGKILL)."""

    def __init__(self, log: Path, database: MySQLDatabase) -> None:
        self.log = log
        self.port, self.stats_port = free_port(), free_port()
        environ = {**twistd_environ(), "ETH_MYSQL_PASSWORD": database.password}
        self.process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", f"--logfile={log}", "eth-server", "--verbose",
             "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--db", database.url,
             "--stats", f"tcp:{self.stats_port}:interface=127.0.0.1"],
            env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def endpoint(self) -> str:
        return f"tcp:host=127.0.0.1:port={self.port}"

    def collecting(self) -> bool:
        return "collecting on" in self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def conflicts(self) -> float:
        """C{ethtwisted_store_conflicts_total} from this server's /metrics (blocking)."""
        url = f"http://127.0.0.1:{self.stats_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        match = re.search(r"^ethtwisted_store_conflicts_total (\S+)$", text, re.MULTILINE)
        assert match, "no conflict counter in /metrics"
        return float(match.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def servers(tmp_path: Path, galera_db: list[MySQLDatabase]) -> Iterator[list[ServerProcess]]:
    """Three eth-servers, each on its own Galera node."""
    started = [
        ServerProcess(tmp_path / f"server{i + 1}.log", db) for i, db in enumerate(galera_db)
    ]
    yield started
    for server in started:
        server.stop()


def start_client(node: str, name: str, servers: Sequence[str]) -> EthClient:
    options = client_tap.Options()
    options.environ = {"ETH_SERVER": " ".join(servers)}
    options.parseOptions(["--node", node, "--interval", "0.05", "--name", name,
                          "--ack-timeout", f"{ACK_TIMEOUT:g}"])  # fmt: skip
    client = client_tap.makeService(options, reactor)
    assert isinstance(client, EthClient) and client.connection is not None
    client.startService()
    return client


def stored(database: MySQLDatabase) -> list[tuple[int, str, str]]:
    """(number, block hash, SHA256) of every payload row, as one Galera node has them."""
    rows = database.query("SELECT hash, payload FROM ethereum_data")
    return sorted((b["number"], b["hash"], h) for h, b in ((h, json.loads(p)) for h, p in rows))


async def rows_in(database: MySQLDatabase) -> int:
    rows = await deferToThread(database.query, "SELECT COUNT(*) FROM ethereum_data")
    return int(rows[0][0])


async def chain(anvil: Anvil) -> list[tuple[int, str]]:
    return sorted((await deferToThread(node_hashes, anvil)).items())


@pytest_twisted.ensureDeferred
async def test_three_servers_starting_together_on_galera_say_no_trouble(
    servers: list[ServerProcess],
) -> None:
    """
    Three servers started at the same moment, each on its own node of one Galera cluster and
    one new database, all create the tables: the certification conflicts between them are
    tried again at debug, and none of the three logs a warning or an error on its way to
    collecting.
    """
    for server in servers:
        await wait_for(server.collecting, what=server.text)
    for server in servers:
        trouble = [line for line in server.text().splitlines()
                   if re.search(r"#(warn|error|critical)\]", line)]  # fmt: skip
        assert trouble == [], server.log


@pytest.mark.expected_log_errors(ROLLBACK_FAILED)
@pytest_twisted.ensureDeferred
async def test_galera_cluster_loses_a_server_and_a_node_and_nothing_acknowledged(
    anvil_factory: AnvilFactory,
    galera: GaleraCluster,
    galera_db: list[MySQLDatabase],
    servers: list[ServerProcess],
) -> None:
    """
    Three servers, each on its own Galera node, and three clients each listing all three
    (each its own first), one anvil mining a block every 0.25 s.  One server is killed
    (SIGKILL), then the Galera node of another: their clients fail over, the third server
    stores for all.  Every block of the chain is stored exactly once, every payload any
    client had acknowledged is stored, the servers counted conflicts in /metrics and logged
    them at debug level only, never as an outage, while the server whose node died reports
    the outage.
    """
    anvil = anvil_factory()
    for server in servers:
        await wait_for(server.collecting, what=server.text)
    endpoints = [s.endpoint for s in servers]
    acked: set[str] = set()
    clients = []
    for i in range(3):
        clients.append(start_client(anvil.ws_url, f"ha-{i + 1}", endpoints[i:] + endpoints[:i]))
        clients[-1].outbox.ack_listeners.append(
            lambda payload: acked.add(hashlib.sha256(payload).hexdigest())
        )
    survivor = galera_db[2]
    mining = LoopingCall(lambda: deferToThread(anvil.mine))
    try:
        await wait_for(lambda: deferToThread(rows_in_sync, survivor, 1), what="block 0 stored")
        mined = mining.start(BLOCK_TIME)

        async def grows_by(n: int) -> None:
            target = await rows_in(survivor) + n
            await wait_for(lambda: deferToThread(rows_in_sync, survivor, target), interval=0.1)

        await grows_by(20)
        assert [c.connection.in_use for c in clients if c.connection] == endpoints
        before = await deferToThread(lambda: [s.conflicts() for s in servers])

        servers[0].process.kill()  # the first client fails over to the second server
        await grows_by(8)
        await deferToThread(galera.nodes[1].kill)  # the second server's node
        await wait_for(
            lambda: all(c.connection and c.connection.in_use == endpoints[2] for c in clients),
            what="every client on the third server",
        )
        await grows_by(8)
        mining.stop()
        await mined
        expected = await chain(anvil)
        await wait_for(
            lambda: deferToThread(rows_in_sync, survivor, len(expected)),
            what=f"the {len(expected)} blocks of the chain stored",
        )
        for client in clients:
            await client.outbox.empty().addTimeout(TIMEOUT, reactor)
        after = await deferToThread(servers[2].conflicts)
    finally:
        if mining.running:
            mining.stop()
        for client in clients:
            await client.stopService()
    rows = await deferToThread(stored, survivor)
    assert [(n, h) for n, h, _ in rows] == expected
    assert acked <= {sha for _, _, sha in rows}
    assert len(acked) >= len(expected)  # every block acknowledged (by someone)
    conflicts = sum(before) + max(after - before[2], 0)
    assert conflicts > 0
    logs = [s.text() for s in servers]
    for text in logs:
        outages = [line for line in text.splitlines() if "store unavailable" in line]
        assert not [line for line in outages if "Deadlock" in line or "Lock wait" in line]
    assert "#error] SQL store unavailable" in logs[1]
    assert any("store conflict (" in text and "#debug]" in text for text in logs)


def rows_in_sync(database: MySQLDatabase, n: int) -> bool:
    """Whether the node of C{database} holds at least C{n} payloads (blocking)."""
    return int(database.query("SELECT COUNT(*) FROM ethereum_data")[0][0]) >= n


@pytest.mark.expected_log_errors("^Redis store unavailable: ")
@pytest_twisted.ensureDeferred
async def test_sentinel_failover_counts_every_block_once_on_the_promoted_replica(
    anvil_factory: AnvilFactory, sentinel_group: SentinelGroup, tmp_path: Path
) -> None:
    """
    A server counting in Redis through three Sentinels, a client, anvil mining: the master is
    killed (SIGKILL) mid-stream; the Sentinels promote the replica, the server follows it and
    the counts go on there.  In the end the promoted replica holds every block's SHA256 once
    in eth:hashes and counts each message the client sent once; SQL holds the same blocks.
    """
    anvil = anvil_factory()
    group = sentinel_group
    server = await start_server(
        ["--db", f"sqlite:///{tmp_path / 'eth.sqlite'}", "--redis", group.url]
    )
    client = start_client(anvil.ws_url, "sentinel", [server.client_endpoint])
    mining = LoopingCall(lambda: deferToThread(anvil.mine))
    try:
        await wait_for(lambda: int(group.master.execute("ZCARD", "eth:hashes")) >= 1)
        mined = mining.start(BLOCK_TIME)
        await wait_for(lambda: int(group.master.execute("ZCARD", "eth:hashes")) >= 10)
        await deferToThread(group.master.kill)
        await deferToThread(group.wait_promoted, group.replica)
        target = int(group.replica.execute("ZCARD", "eth:hashes")) + 8
        await wait_for(lambda: int(group.replica.execute("ZCARD", "eth:hashes")) >= target)
        mining.stop()
        await mined
        expected = await chain(anvil)
        await server.committed.wait_for(h for _, h in expected)
        await client.outbox.empty().addTimeout(TIMEOUT, reactor)
        await server.collector.factory.ingest.idle().addTimeout(TIMEOUT, reactor)
    finally:
        if mining.running:
            mining.stop()
        await client.stopService()
        await server.stop()
    members = group.replica.execute("ZRANGE", "eth:hashes", 0, -1)
    with sqlite3.connect(tmp_path / "eth.sqlite") as db:
        rows = db.execute("SELECT hash, payload FROM ethereum_data").fetchall()
    assert sorted((json.loads(p)["number"], json.loads(p)["hash"]) for _, p in rows) == expected
    assert sorted(m.decode() for m in members) == sorted(h for h, _ in rows)
    count = group.replica.execute("HGET", "eth:ip_addresses", "127.0.0.1")
    assert int(count) == len(expected)
