"""
eth-client's metrics and its /healthz verdict.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.interfaces import IReactorTime

from ethtwisted.frames import Status
from ethtwisted.metrics import LATENCY_BUCKETS, REORG_DEPTH_BUCKETS, metric
from ethtwisted.node.interfaces import INode
from ethtwisted.node.measured import MeasuredNode
from ethtwisted.protocol import SOURCES, Block, parse_block

UNHEALTHY_AFTER = 30.0
"""Seconds the node or the server may be unreachable before eth-client's /healthz says 503."""
ROUND_TRIP_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ClientMetrics:
    """
    eth-client's metrics and health.  The node is measured by wrapping it (L{measured}); the
    outbox reports each acknowledged payload to L{acknowledged}, the follower each reorg to
    L{reorg}, the connection to the server its ups and downs to L{connection} (after
    L{watch_server}).  At each scrape, C{outbox_messages} says how many messages wait for an
    acknowledgement, and the files in C{spool_directory} (if any) are measured.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        clock: IReactorTime,
        outbox_messages: Callable[[], int],
        spool_directory: str | None,
        unhealthy_after: float | None = None,
    ) -> None:
        self.clock = clock
        self.unhealthy_after = UNHEALTHY_AFTER if unhealthy_after is None else unhealthy_after
        self.node_down_since: float | None = None
        self.server_down_since: float | None = clock.seconds()
        self.connections = 0
        self.refusal: Callable[[], str | None] = lambda: None
        self.servers: list[str] = []

        self.node_up = metric(
            Gauge, registry, "node_up", "1 when the node answered the last call, else 0."
        )
        self.node_round_trip = metric(
            Histogram,
            registry,
            "node_round_trip_seconds",
            "Seconds per call to the node that answered.",
            buckets=ROUND_TRIP_BUCKETS,
        )
        self.head = metric(
            Gauge, registry, "head_block", "Number of the node's head block, last seen."
        )
        self.node_peers = metric(
            Gauge, registry, "node_peers", "Peers of the node, last read (NaN: it does not say)."
        )
        self.node_syncing = metric(
            Gauge, registry, "node_syncing",
            "1 while the node says it is syncing, 0 when not (NaN: it does not say).",
        )  # fmt: skip
        for unknown in (self.node_peers, self.node_syncing):
            unknown.set(float("nan"))
        self.acknowledged_block = metric(
            Gauge,
            registry,
            "acknowledged_block",
            "Number of the last block the server acknowledged.",
        )
        self.reconnects = metric(
            Counter, registry, "server_reconnects", "Connections to the server after the first."
        )
        self.in_use = metric(
            Gauge,
            registry,
            "server_in_use",
            "1 for the server connected to now, 0 for the other servers listed.",
            ["server"],
        )
        self.switches = metric(
            Counter, registry, "server_switches", "Switches from one listed server to another."
        )
        self.reorgs = metric(Counter, registry, "reorgs", "Reorgs followed.")
        self.reorg_depth = metric(
            Histogram,
            registry,
            "reorg_depth_blocks",
            "Blocks replaced by each reorg followed.",
            buckets=REORG_DEPTH_BUCKETS,
        )
        depth = metric(
            Gauge, registry, "outbox_messages", "Messages not acknowledged by the server yet."
        )
        depth.set_function(outbox_messages)
        spool = metric(
            Gauge,
            registry,
            "spool_bytes",
            "Bytes of the files in the spool directory (0 without one).",
        )
        spool.set_function(lambda: _directory_bytes(spool_directory))
        self.heads = metric(
            Counter,
            registry,
            "heads",
            "Blocks handed over, by how the client learnt of them: subscription (pushed by the "
            "node), poll (the head when polled), backfill (fetched as a parent).",
            ["source"],
        )
        for source in SOURCES:
            self.heads.labels(source)
        self.subscription_misses = metric(
            Counter,
            registry,
            "subscription_misses",
            "Heads the subscription did not deliver within a poll interval, delivered by a poll.",
        )
        self.resubscriptions = metric(
            Counter,
            registry,
            "resubscriptions",
            "Subscriptions made again after one ended or went silent.",
        )
        self.subscription_lag = metric(
            Histogram,
            registry,
            "subscription_lag_seconds",
            "Seconds from a poll seeing a head to the subscription delivering it (0 when the "
            "subscription was first).",
            buckets=LATENCY_BUCKETS,
        )
        self.subscription_active = metric(
            Gauge, registry, "subscription_active", "1 while a new-heads subscription is live."
        )

    def measured(self, node: INode) -> INode:
        """
        C{node}, with each call timed and its outcome noted.
        """
        return MeasuredNode(node, self.clock, self.node_answered, self.node_failed, self.head.set)

    def watch_server(
        self, servers: Sequence[str] | None, refusal: Callable[[], str | None] = lambda: None
    ) -> None:
        """
        How the server is reached: over one connection at a time to one of C{servers} (their
        names), which reports its ups and downs to L{connection} and its switches to
        L{switched}, and whose refusal of this client (or L{None}) C{refusal} reads; or, with
        C{servers} L{None}, a connection per message (one-shot delivery), which has no
        connection to watch: the server is then never said to be unreachable.
        """
        self.refusal = refusal
        if servers is None:
            self.server_down_since = None
            return
        self.servers = list(servers)
        for name in self.servers:
            self.in_use.labels(name).set(0)

    def watch_subscription(self, active: Callable[[], bool]) -> None:
        """
        Whether a new-heads subscription is live, as C{active} says; its misses, resubscriptions
        and lateness come through L{subscription_missed}, L{resubscribed} and
        L{subscription_late}.
        """
        self.subscription_active.set_function(lambda: 1 if active() else 0)

    def subscription_missed(self) -> None:
        """A poll delivered a head the subscription had not."""
        self.subscription_misses.inc()

    def resubscribed(self) -> None:
        """A subscription was made again."""
        self.resubscriptions.inc()

    def subscription_late(self, seconds: float) -> None:
        """The subscription delivered a head C{seconds} after a poll saw it."""
        self.subscription_lag.observe(seconds)

    def health(self) -> dict[str, str | None]:
        """
        C{/healthz}: the trouble with the node and with the server, or L{None} for each.  A
        server that refuses this client (a bad or missing token) is trouble at once: waiting
        does not mend it.
        """
        now = self.clock.seconds()

        def trouble(since: float | None, what: str) -> str | None:
            if since is None or now - since <= self.unhealthy_after:
                return None
            return f"{what} unreachable for {now - since:.0f} s"

        server = trouble(self.server_down_since, "server")
        refusal = self.refusal()
        if refusal is not None:
            server = f"server refuses this client: {refusal}"
        return {"node": trouble(self.node_down_since, "node"), "server": server}

    def node_answered(self, seconds: float) -> None:
        self.node_round_trip.observe(seconds)
        self.node_up.set(1)
        self.node_down_since = None

    def node_failed(self) -> None:
        self.node_up.set(0)
        if self.node_down_since is None:
            self.node_down_since = self.clock.seconds()

    def node_status(self, status: Status) -> None:
        """
        Note what the node last said about itself.
        """
        self.node_peers.set(float("nan") if status.peers is None else status.peers)
        syncing = status.syncing
        self.node_syncing.set(float("nan") if syncing is None else 0 if syncing is False else 1)

    def acknowledged(self, payload: bytes) -> None:
        """
        The server acknowledged C{payload}: its block is the last acknowledged one.
        """
        block = parse_block(payload)
        number = block.number if isinstance(block, Block) else block
        if number is not None:
            self.acknowledged_block.set(number)

    def sighting(self, source: str) -> None:
        """
        A block was handed over, learnt of through C{source} (one of L{SOURCES}).
        """
        self.heads.labels(source).inc()

    def reorg(self, depth: int) -> None:
        """
        A reorg of C{depth} blocks was followed.
        """
        self.reorgs.inc()
        self.reorg_depth.observe(depth)

    def connection(self, up: bool, server: str | None) -> None:
        """
        The connection to C{server} (one of those watched) is up (C{True}) or lost (C{False}).
        """
        for name in self.servers:
            self.in_use.labels(name).set(1 if up and name == server else 0)
        if up:
            self.connections += 1
            if self.connections > 1:
                self.reconnects.inc()
            self.server_down_since = None
        else:
            self.server_down_since = self.clock.seconds()

    def switched(self, left: str, now: str) -> None:
        """
        The client left the server C{left} for C{now}.
        """
        self.switches.inc()


def _directory_bytes(directory: str | None) -> int:
    if directory is None:
        return 0
    try:
        with os.scandir(directory) as entries:
            return sum(e.stat().st_size for e in entries if e.is_file())
    except OSError:
        return 0
