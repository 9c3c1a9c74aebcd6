"""
Failover for real: an anvil node, one eth-client listing two real eth-servers on loopback that
share one MariaDB database, and the first server's Redis killed mid-stream so that it holds
its acknowledgements.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest_twisted
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent

from ethtwisted import client_tap
from ethtwisted.client import EthClient
from ethtwisted.interfaces import Received
from ethtwisted.server.collector import CollectorService
from ethtwisted.server_tap import Options as ServerOptions
from ethtwisted.server_tap import makeService as make_server  # noqa: N813
from tests.services import Anvil, MySQLDatabase, Redis
from tests.test_client_e2e import TIMEOUT, Committed, node_hashes

ACK_TIMEOUT = 2.0


@dataclass
class Server:
    service: IService
    endpoint: str
    committed: Committed
    new: list[int]
    """How many payloads each commit of this server stored for the first time."""


async def start_server(args: Sequence[str], password: str) -> Server:
    options = ServerOptions()
    options.environ = {"ETH_MYSQL_PASSWORD": password}
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *args])
    service = make_server(options, reactor)
    service.startService()
    collector = service.getServiceNamed("collector")
    assert isinstance(collector, CollectorService)
    await collector.ready.addTimeout(TIMEOUT, reactor)
    committed, new = Committed(), []

    def observe(group: Sequence[Received], fresh: int) -> None:
        committed(group, fresh)
        new.append(fresh)

    collector.factory.ingest.observers.append(observe)
    port = collector.ports[0].getHost().port
    return Server(service, f"tcp:host=127.0.0.1:port={port}", committed, new)


def switched_to(client: EthClient, server: Server) -> Deferred[None]:
    """
    Fire once the client switches to C{server} (within the test's timeout).
    """
    assert client.connection is not None
    d: Deferred[None] = Deferred()

    def listener(left: str, now: str) -> None:
        if now == server.endpoint and not d.called:
            reactor.callLater(0, d.callback, None)

    client.connection.switch_listeners.append(listener)
    return d.addTimeout(TIMEOUT, reactor)


def stored_blocks(mysql_db: MySQLDatabase) -> list[tuple[int, str]]:
    rows = mysql_db.query("SELECT payload FROM ethereum_data")
    return sorted((b["number"], b["hash"]) for b in (json.loads(r[0]) for r in rows))


@pytest_twisted.async_yield_fixture
async def redis_a(tmp_path: Path) -> AsyncIterator[Redis]:
    """
    A Redis server of the first eth-server's own, to be killed by the test.
    """
    redis = Redis(tmp_path / "redis-a")
    (tmp_path / "redis-a").mkdir()
    await deferToThread(redis.start_on_free_port)
    yield redis
    await deferToThread(redis.stop)


@pytest_twisted.ensureDeferred
async def test_client_fails_over_while_its_server_holds_acks_and_comes_back(
    anvil: Anvil, mysql_db: MySQLDatabase, redis_a: Redis
) -> None:
    """
    Two servers on one database, listed in ETH_SERVER; the first one's Redis is killed, so it
    holds its acknowledgements: the client fails over to the second within --ack-timeout and
    resends there, the second stores what is new; once Redis is back, the client returns to
    the first.  Every block of the chain ends up stored exactly once, every message is
    acknowledged, and each of the two switches is logged once.
    """
    a = await start_server(["--db", mysql_db.url, "--redis", redis_a.url], mysql_db.password)
    b = await start_server(["--db", mysql_db.url], mysql_db.password)
    options = client_tap.Options()
    options.environ = {"ETH_SERVER": f"{a.endpoint} {b.endpoint}"}
    options.parseOptions(["--node", anvil.ws_url, "--interval", "0.05", "--name", "failover",
                          "--ack-timeout", f"{ACK_TIMEOUT:g}"])  # fmt: skip
    client = client_tap.makeService(options, reactor)
    assert isinstance(client, EthClient) and client.connection is not None
    with capturedLogs() as events:
        client.startService()
        try:
            await a.committed.wait_for(node_hashes(anvil).values())
            anvil.mine(2)
            await a.committed.wait_for(node_hashes(anvil).values())
            await client.outbox.empty().addTimeout(TIMEOUT, reactor)
            assert client.connection.in_use == a.endpoint

            to_b = switched_to(client, b)
            await deferToThread(redis_a.kill)
            anvil.mine(3)
            await to_b
            new_on_b = sum(b.new)
            anvil.mine(3)
            await b.committed.wait_for(list(node_hashes(anvil).values())[-3:])
            await client.outbox.empty().addTimeout(TIMEOUT, reactor)
            assert sum(b.new) >= new_on_b + 3, "the blocks after the switch are new on b"

            to_a = switched_to(client, a)
            await deferToThread(redis_a.start)
            await to_a
            anvil.mine(2)
            await a.committed.wait_for(list(node_hashes(anvil).values())[-2:])
            await client.outbox.empty().addTimeout(TIMEOUT, reactor)
        finally:
            await client.stopService()
            for server in (a, b):
                await server.service.stopService()
    assert len(client.outbox) == 0
    stored = await deferToThread(stored_blocks, mysql_db)
    assert stored == sorted(node_hashes(anvil).items())
    texts = [formatEvent(e) for e in events]
    switches = [t for t in texts if "now sending to" in t]
    assert [s.split(" (")[0] for s in switches] == [
        f"now sending to {b.endpoint} instead of {a.endpoint}",
        f"now sending to {a.endpoint} instead of {b.endpoint}",
    ], switches
    assert "(no acknowledgement for 2 s)" in switches[0]
    assert "(it acknowledges again)" in switches[1]
    bad = [
        formatEvent(e)
        for e in events
        if ("log_failure" in e or e.get("log_level") in (LogLevel.error, LogLevel.critical))
        and "Redis store unavailable" not in formatEvent(e)
    ]
    assert not bad, "errors logged:\n" + "\n".join(bad)
