"""
eth-client's --metrics: what /metrics counts and when /healthz turns 503.
"""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import pytest
import pytest_twisted
import treq
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

import ethtwisted.metrics
import ethtwisted.metrics.client
from ethtwisted import client_tap
from ethtwisted.client import EthClient
from ethtwisted.client.delivery import Delivery
from ethtwisted.client.follower import Follower
from ethtwisted.client.oneshot import OneShotDelivery
from ethtwisted.client.outbox import Outbox, queue_blocks
from ethtwisted.metrics.client import ClientMetrics
from ethtwisted.protocol import block_html, block_json, payload_hash
from tests.fakes import FakeEndpoint, FakeNode, one_server
from tests.helpers import start_server, wait_for
from tests.services import LOOPBACK, Anvil, free_port
from tests.twistd import twistd_client_fails

TIMEOUT = 30.0


def sample(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(f"ethtwisted_{name}")


def watched(
    metrics: ClientMetrics, outbox: Outbox, clock: Clock, follower: Follower | None = None
) -> Delivery:
    """
    A connection to the server whose ups, downs and refusal C{metrics} watch, with the outbox
    (and the follower, if given), wired by client_tap.
    """
    delivery = Delivery(outbox, one_server(), clock)
    client_tap.wire(outbox=outbox, follower=follower, delivery=delivery, metrics=metrics)
    return delivery


def test_metrics_know_no_client_or_server_class() -> None:
    """
    The metrics modules import nothing from the client or the server packages, not even for
    type checking: what they measure is given to them as callables.
    """
    imported: list[str] = []
    for path in Path(ethtwisted.metrics.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert "ethtwisted.metrics" in imported  # the modules were read
    assert [
        m
        for m in imported
        if m.split(".")[:2] in (["ethtwisted", "client"], ["ethtwisted", "server"])
    ] == []


def test_one_shot_delivery_never_makes_the_server_unreachable() -> None:
    """
    With one-shot delivery (no connection to watch), /healthz never reports the server.
    """
    clock, outbox = Clock(), Outbox()
    metrics = ClientMetrics(CollectorRegistry(), clock, lambda: 0, None, 30)
    oneshot = OneShotDelivery(outbox, [("old-server", FakeEndpoint())], clock, lambda n: 1.0)
    client_tap.wire(outbox=outbox, oneshot=oneshot, metrics=metrics)
    clock.advance(100)
    assert metrics.health() == {"node": None, "server": None}


def test_node_calls_are_timed_and_the_head_recorded() -> None:
    """
    Each call through the measured node is a round-trip sample; the head's number is kept,
    and a failing node sets node_up to 0.
    """
    registry, clock, node = CollectorRegistry(), Clock(), FakeNode()
    node.mine(4)
    metrics = ClientMetrics(registry, clock, lambda: 0, None)
    measured = metrics.measured(node)
    assert measured.description == "fake-node"
    heads: list[int] = []
    measured.head().addCallback(lambda b: heads.append(b.number))
    assert heads == [4]
    assert sample(registry, "head_block") == 4
    assert sample(registry, "node_up") == 1
    assert sample(registry, "node_round_trip_seconds_count") == 1
    node.down = "connection refused"
    errors: list[Failure] = []
    measured.block_number().addErrback(errors.append)
    assert len(errors) == 1
    assert sample(registry, "node_up") == 0
    assert sample(registry, "node_round_trip_seconds_count") == 1


def test_healthz_turns_503_after_the_threshold() -> None:
    """
    /healthz reports the node only once it has been unreachable longer than the threshold,
    and clears as soon as it answers again; likewise the server connection.
    """
    clock, node = Clock(), FakeNode()
    outbox = Outbox()
    metrics = ClientMetrics(CollectorRegistry(), clock, lambda: len(outbox), None, 30)
    delivery = watched(metrics, outbox, clock)
    measured = metrics.measured(node)
    for listener in delivery.connection_listeners:
        listener(True)
    assert metrics.health() == {"node": None, "server": None}
    node.down = "connection refused"
    measured.head().addErrback(lambda _: None)
    clock.advance(30)
    assert metrics.health()["node"] is None
    clock.advance(1)
    assert metrics.health()["node"] == "node unreachable for 31 s"
    node.down = None
    measured.head()
    assert metrics.health()["node"] is None
    for listener in delivery.connection_listeners:
        listener(False)
    clock.advance(45)
    assert metrics.health() == {"node": None, "server": "server unreachable for 45 s"}


@pytest.mark.expected_log_errors(" refused this client: bad or missing token$")
def test_a_refusing_server_is_unhealthy_at_once() -> None:
    """
    A server that refuses this client (a bad token) makes /healthz say so without waiting for
    the threshold, until the server acknowledges again.
    """
    clock, outbox = Clock(), Outbox()
    metrics = ClientMetrics(CollectorRegistry(), clock, lambda: len(outbox), None)
    delivery = watched(metrics, outbox, clock)
    for listener in delivery.connection_listeners:
        listener(True)
    delivery.refused("bad or missing token")
    assert metrics.health()["server"] == "server refuses this client: bad or missing token"
    delivery.acked("0" * 64)
    assert metrics.health()["server"] is None


def test_reconnects_reorgs_and_acknowledged_block() -> None:
    """
    Connections after the first count as reconnects; each reorg followed is counted with its
    depth; an acknowledgement sets the last acknowledged block, for either payload format.
    """
    registry, clock, node = CollectorRegistry(), Clock(), FakeNode()
    outbox = Outbox()
    metrics = ClientMetrics(registry, clock, lambda: len(outbox), None)
    follower = Follower(node, queue_blocks(outbox, "json"), clock=clock)
    delivery = watched(metrics, outbox, clock, follower)
    for up in (True, False, True, False, True):
        for listener in delivery.connection_listeners:
            listener(up)
    assert sample(registry, "server_reconnects_total") == 2
    Deferred.fromCoroutine(follower.follow())
    node.mine(5)
    Deferred.fromCoroutine(follower.follow())
    node.reorg(3)
    Deferred.fromCoroutine(follower.follow())
    assert sample(registry, "reorgs_total") == 1
    assert sample(registry, "reorg_depth_blocks_sum") == 3
    assert sample(registry, "outbox_messages") == len(outbox) > 0
    payload = block_json(node.tip)
    outbox.ack(payload_hash(payload))
    assert sample(registry, "acknowledged_block") == node.tip.number
    outbox.put([block_html(77)])
    outbox.ack(payload_hash(block_html(77)))
    assert sample(registry, "acknowledged_block") == 77


@pytest_twisted.ensureDeferred
async def test_metrics_served_by_a_real_client(
    anvil: Anvil, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A client started with --metrics serves /metrics whose head and acknowledged block match
    the node, and /healthz that turns 503 once the server has been gone past the threshold.
    """
    monkeypatch.setattr(ethtwisted.metrics.client, "UNHEALTHY_AFTER", 0.5)
    anvil.mine(3)
    server = await start_server(["--db", f"sqlite:///{tmp_path / 'eth.sqlite'}"])
    committed = server.committed
    port = free_port()
    options = client_tap.Options()
    options.environ = {}
    options.parseOptions(
        ["--node", anvil.ipc_path, "--server", f"tcp:host=127.0.0.1:port={server.port}",
         "--interval", "0.05", "--metrics", str(port), "--spool", str(tmp_path / "spool")]
    )  # fmt: skip
    client = client_tap.makeService(options, reactor)
    assert isinstance(client, EthClient)
    client.startService()
    base = f"http://127.0.0.1:{port}"
    try:
        head = anvil.rpc("eth_getBlockByNumber", "latest", False)
        number = int(head["number"], 16)
        assert number == 3
        await committed.wait_for([head["hash"]])
        await wait_for(lambda: len(client.outbox) == 0)
        text = await (await treq.get(f"{base}/metrics")).text()
        assert f"ethtwisted_head_block {number}.0" in text
        assert f"ethtwisted_acknowledged_block {number}.0" in text
        assert "ethtwisted_node_up 1.0" in text
        assert (await treq.get(f"{base}/healthz")).code == 200
        await server.stop()
        unhealthy: list[str] = []

        async def turned_unhealthy() -> bool:
            response = await treq.get(f"{base}/healthz")
            if response.code == 503:
                unhealthy.append(await response.text())
            return bool(unhealthy)

        await wait_for(turned_unhealthy, TIMEOUT, interval=0.1, what="/healthz turned 503")
        assert "server unreachable" in unhealthy[0]
    finally:
        await client.stopService()
        if server.service.running:
            await server.stop()
    # Stopping the client stops its metrics too.
    assert not client.getServiceNamed("metrics").running


def test_metrics_options() -> None:
    """
    --metrics takes a bare port as that port on loopback; the token comes from
    --metrics-token, --metrics-token-file or $ETH_METRICS_TOKEN, never from two of them.
    """
    options = client_tap.Options()
    options.environ = {"ETH_METRICS_TOKEN": "s3cret"}
    options.parseOptions(["--metrics", "9100"])
    assert options["metrics"] == "tcp:9100:interface=127.0.0.1"
    assert options["metrics_token"] == "s3cret"
    options = client_tap.Options()
    options.environ = {}
    options.parseOptions([])
    assert options["metrics"] is None
    assert options["metrics_token"] is None
    options = client_tap.Options()
    options.environ = {}
    with pytest.raises(SystemExit, match="not both"):
        options.parseOptions(["--metrics-token", "a", "--metrics-token-file", "/dev/null"])


def test_metrics_port_in_use_ends_with_one_line(tmp_path: Path) -> None:
    """
    Under twistd, a --metrics port already taken ends the client with one line on stderr and
    status 1, without a traceback.
    """
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        lines = twistd_client_fails(
            "--node", f"http://{LOOPBACK}:{free_port()}",
            "--server", f"tcp:host={LOOPBACK}:port={free_port()}",
            "--metrics", str(port),
            twistd_args=[f"--logfile={tmp_path / 'client.log'}"],
        )  # fmt: skip
    assert len(lines) == 1 and f"cannot listen on tcp:{port}:" in lines[0], lines
    assert "Address already in use" in lines[0]
