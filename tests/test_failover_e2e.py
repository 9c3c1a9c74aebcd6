"""
Failover for real: an anvil node, one eth-client listing two real eth-servers on loopback that
share one MariaDB database, and the first server's Redis killed (mid-stream, or before the
client starts) so that it holds its acknowledgements.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent

from ethtwisted import client_tap
from ethtwisted.client import EthClient
from tests.e2e import node_hashes
from tests.helpers import TIMEOUT, Server, start_server
from tests.services import Anvil, MySQLDatabase, Redis

ACK_TIMEOUT = 2.0


def switched_to(client: EthClient, server: Server) -> Deferred[None]:
    """
    Fire once the client switches to C{server} (within the test's timeout).
    """
    assert client.connection is not None
    d: Deferred[None] = Deferred()

    def listener(left: str, now: str) -> None:
        if now == server.client_endpoint and not d.called:
            reactor.callLater(0, d.callback, None)

    client.connection.switch_listeners.append(listener)
    return d.addTimeout(TIMEOUT, reactor)


def connected_to(client: EthClient, server: Server) -> Deferred[None]:
    """
    Fire at the client's next connection to C{server} (within the test's timeout).
    """
    assert client.connection is not None
    delivery = client.connection
    d: Deferred[None] = Deferred()

    def listener(up: bool) -> None:
        if up and delivery.in_use == server.client_endpoint and not d.called:
            reactor.callLater(0, d.callback, None)

    delivery.connection_listeners.append(listener)
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


@pytest.mark.expected_log_errors("^Redis store unavailable: ")
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
    environ = {"ETH_MYSQL_PASSWORD": mysql_db.password}
    a = await start_server(["--db", mysql_db.url, "--redis", redis_a.url], environ)
    b = await start_server(["--db", mysql_db.url], environ)
    options = client_tap.Options()
    options.environ = {"ETH_SERVER": f"{a.client_endpoint} {b.client_endpoint}"}
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
            assert client.connection.in_use == a.client_endpoint

            to_b = switched_to(client, b)
            await deferToThread(redis_a.kill)
            anvil.mine(3)
            await to_b
            new_on_b = sum(b.committed.new)
            anvil.mine(3)
            await b.committed.wait_for(list(node_hashes(anvil).values())[-3:])
            await client.outbox.empty().addTimeout(TIMEOUT, reactor)
            assert sum(b.committed.new) >= new_on_b + 3, "the blocks after the switch are new on b"

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
        f"now sending to {b.client_endpoint} instead of {a.client_endpoint}",
        f"now sending to {a.client_endpoint} instead of {b.client_endpoint}",
    ], switches
    assert "(no acknowledgement for 2 s)" in switches[0]
    assert "(it acknowledges again)" in switches[1]


@pytest.mark.expected_log_errors("^Redis store unavailable: ")
@pytest_twisted.ensureDeferred
async def test_a_server_whose_store_is_down_gets_no_traffic_after_it_failed_once(
    anvil: Anvil, mysql_db: MySQLDatabase, redis_a: Redis
) -> None:
    """
    Two servers on one database; the first one's Redis is down from the start, so it takes
    connections and acknowledges nothing.  The client leaves it once, after --ack-timeout, for
    the second; when its connection to the second is lost, it goes back to the second (once
    that acknowledges a probe), not to the first, which gets nothing but probes while it
    acknowledges none.  Every block is stored once and acknowledged; the one switch is logged
    once.
    """
    environ = {"ETH_MYSQL_PASSWORD": mysql_db.password}
    a = await start_server(["--db", mysql_db.url, "--redis", redis_a.url], environ)
    b = await start_server(["--db", mysql_db.url], environ)
    await deferToThread(redis_a.kill)
    options = client_tap.Options()
    options.environ = {"ETH_SERVER": f"{a.client_endpoint} {b.client_endpoint}"}
    options.parseOptions(["--node", anvil.ws_url, "--interval", "0.05", "--name", "flap",
                          "--ack-timeout", f"{ACK_TIMEOUT:g}"])  # fmt: skip
    client = client_tap.makeService(options, reactor)
    assert isinstance(client, EthClient) and client.connection is not None
    delivery = client.connection
    used: list[str | None] = []
    delivery.connection_listeners.append(lambda up: used.append(delivery.in_use) if up else None)
    with capturedLogs() as events:
        client.startService()
        try:
            await switched_to(client, b)
            anvil.mine(2)
            await b.committed.wait_for(node_hashes(anvil).values())
            await client.outbox.empty().addTimeout(TIMEOUT, reactor)

            back_on_b = connected_to(client, b)
            for connection in list(b.collector.factory.connections):
                connection.transport.abortConnection()
            anvil.mine(2)
            await back_on_b
            anvil.mine(2)
            await b.committed.wait_for(node_hashes(anvil).values())
            await client.outbox.empty().addTimeout(TIMEOUT, reactor)
        finally:
            await client.stopService()
            # Redis back, so that the first server's ingest stores what it holds and stops.
            await deferToThread(redis_a.start)
            for server in (a, b):
                await server.service.stopService()
    assert used == [a.client_endpoint, b.client_endpoint, b.client_endpoint]
    stored = await deferToThread(stored_blocks, mysql_db)
    assert stored == sorted(node_hashes(anvil).items())
    switches = [t for t in (formatEvent(e) for e in events) if "now sending to" in t]
    assert [s.split(" (")[0] for s in switches] == [
        f"now sending to {b.client_endpoint} instead of {a.client_endpoint}"
    ], switches
