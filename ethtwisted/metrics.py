"""
Prometheus metrics, each service with its own L{CollectorRegistry}: the stats API's, and
eth-client's (L{ClientMetrics}).

L{ServerMetrics} counts what an eth-server's connections and ingest report to it;
L{StoreMetrics} shows the stores' health and what each client last reported, read from the
durable store at each scrape (so eth-stats shows it too, for every collector).

What is measured is given as callables, and what happens is reported to the metrics' own
methods: the wiring (C{server_tap}, C{client_tap}) connects them, so this module knows neither
the client's nor the server's classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.interfaces import IReactorTime

from ethtwisted.framing import DROP_KINDS
from ethtwisted.interfaces import ChainRange, ClientRecord, Head, INode, Received
from ethtwisted.node.measured import MeasuredNode
from ethtwisted.protocol import SOURCES, Block, Status, parse_block

NAMESPACE = "ethtwisted"
REORG_DEPTH_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _metric(
    kind: Any, registry: CollectorRegistry, name: str, doc: str, *args: Any, **kwargs: Any
) -> Any:
    """
    A metric of C{kind} named C{ethtwisted_<name>} in C{registry}.
    """
    return kind(name, doc, *args, namespace=NAMESPACE, registry=registry, **kwargs)


class ServerMetrics:
    """
    The collector's counters.  The connections report to L{received}, L{acknowledged} and
    L{dropped} (this is a connection observer), the ingest to L{committed} and L{conflict}; at
    each scrape, C{connections_open} and C{messages_pending} say how many connections are open
    and how many payloads are received and not yet committed.  C{clock} times the commits.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        clock: IReactorTime,
        connections_open: Callable[[], int],
        messages_pending: Callable[[], int],
    ) -> None:
        self.clock = clock
        self.messages_received = _metric(
            Counter,
            registry,
            "messages_received",
            "Payloads received from clients (every send, duplicates included).",
        )
        self.messages_stored = _metric(
            Counter,
            registry,
            "messages_stored",
            "Payloads committed to SQL that were new.",
        )
        self.messages_duplicate = _metric(
            Counter,
            registry,
            "messages_duplicate",
            "Payloads committed to SQL that were already stored.",
        )
        self.rejected = _metric(
            Counter,
            registry,
            "rejected",
            "Connections dropped by the server, by reason.",
            ["reason"],
        )
        for kind in DROP_KINDS:
            self.rejected.labels(kind)
        self.acks_sent = _metric(
            Counter,
            registry,
            "acks_sent",
            "Acknowledgements sent to clients.",
        )
        self.store_conflicts = _metric(
            Counter,
            registry,
            "store_conflicts",
            "SQL transactions that lost to a concurrent one (a Galera certification failure, a"
            " deadlock, a lock wait timeout), each tried again.",
        )
        self.store_latency = _metric(
            Histogram,
            registry,
            "store_latency_seconds",
            "Seconds from a payload's arrival until it is committed to SQL.",
            buckets=LATENCY_BUCKETS,
        )
        connections = _metric(Gauge, registry, "connections_open", "Client connections open now.")
        connections.set_function(connections_open)
        pending = _metric(
            Gauge,
            registry,
            "messages_pending",
            "Payloads received and not yet committed.",
        )
        pending.set_function(messages_pending)

    def received(self, received: Received) -> None:
        self.messages_received.inc()

    def acknowledged(self, sha256: str) -> None:
        self.acks_sent.inc()

    def dropped(self, kind: str) -> None:
        self.rejected.labels(kind).inc()

    def conflict(self) -> None:
        self.store_conflicts.inc()

    def committed(self, group: Sequence[Received], new: int) -> None:
        self.messages_stored.inc(new)
        self.messages_duplicate.inc(len(group) - new)
        now = self.clock.seconds()
        for r in group:
            self.store_latency.observe(max(now - r.received, 0.0))


class StoreMetrics:
    """
    Store health and per-client gauges, set by L{update} before each scrape.
    """

    def __init__(self, registry: CollectorRegistry, stores: Sequence[str]) -> None:
        self.store_up = _metric(
            Gauge,
            registry,
            "store_up",
            "1 when the store answered the last check, else 0.",
            ["store"],
        )
        for store in stores:
            self.store_up.labels(store)
        self.client_last_block = _metric(
            Gauge,
            registry,
            "client_last_block",
            "The last block number each client reported.",
            ["client", "chain_id"],
        )
        self.client_lag = _metric(
            Gauge,
            registry,
            "client_lag_blocks",
            "How many blocks each client's last report is behind the best head of its chain.",
            ["client", "chain_id"],
        )
        self.client_last_seen = _metric(
            Gauge,
            registry,
            "client_last_seen_timestamp_seconds",
            "Unix time of each client's last message.",
            ["client"],
        )

        self.chain_reorg_depth = _metric(
            Histogram,
            registry,
            "chain_reorg_depth_blocks",
            "Reorgs the fleet saw (orphaned branches in the stored blocks), by depth in blocks;"
            " counted from this process's first scrape on.",
            ["chain_id"],
            buckets=REORG_DEPTH_BUCKETS,
        )
        self._reorgs_seen: set[tuple[int, int, str]] | None = None

    def update_reorgs(self, chains: Sequence[ChainRange]) -> None:
        """
        Observe each orphaned branch of C{chains} not observed before; those there at the first
        update are the baseline (a restart does not count old reorgs again).
        """
        current = {(c.chain_id, r.number, r.orphaned): r.depth for c in chains for r in c.reorgs}
        if self._reorgs_seen is not None:
            for (chain_id, number, orphaned), depth in current.items():
                if (chain_id, number, orphaned) not in self._reorgs_seen:
                    self.chain_reorg_depth.labels(str(chain_id)).observe(depth)
        # Only what is still in the windows is remembered, so the set stays bounded.
        self._reorgs_seen = set(current)

    def update_health(self, checks: dict[str, str | None]) -> None:
        """
        Record which stores answered: C{checks} maps a store to L{None} or its trouble.
        """
        for store, trouble in checks.items():
            self.store_up.labels(store).set(0 if trouble else 1)

    def update_clients(self, clients: Sequence[ClientRecord], heads: Sequence[Head]) -> None:
        """
        Replace the per-client gauges with what the durable store says now.
        """
        best = {h.chain_id: h.number for h in heads}
        for gauge in (self.client_last_block, self.client_lag, self.client_last_seen):
            gauge.clear()
        for c in clients:
            self.client_last_seen.labels(c.client).set(c.last_seen)
            if c.last_block is None:
                continue
            chain = "" if c.chain_id is None else str(c.chain_id)
            self.client_last_block.labels(c.client, chain).set(c.last_block)
            head = best.get(c.chain_id)
            if head is not None:
                self.client_lag.labels(c.client, chain).set(max(head - c.last_block, 0))


# -- eth-client -------------------------------------------------------------------------------

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

        self.node_up = _metric(
            Gauge, registry, "node_up", "1 when the node answered the last call, else 0."
        )
        self.node_round_trip = _metric(
            Histogram,
            registry,
            "node_round_trip_seconds",
            "Seconds per call to the node that answered.",
            buckets=ROUND_TRIP_BUCKETS,
        )
        self.head = _metric(
            Gauge, registry, "head_block", "Number of the node's head block, last seen."
        )
        self.node_peers = _metric(
            Gauge, registry, "node_peers", "Peers of the node, last read (NaN: it does not say)."
        )
        self.node_syncing = _metric(
            Gauge, registry, "node_syncing",
            "1 while the node says it is syncing, 0 when not (NaN: it does not say).",
        )  # fmt: skip
        for unknown in (self.node_peers, self.node_syncing):
            unknown.set(float("nan"))
        self.acknowledged_block = _metric(
            Gauge,
            registry,
            "acknowledged_block",
            "Number of the last block the server acknowledged.",
        )
        self.reconnects = _metric(
            Counter, registry, "server_reconnects", "Connections to the server after the first."
        )
        self.in_use = _metric(
            Gauge,
            registry,
            "server_in_use",
            "1 for the server connected to now, 0 for the other servers listed.",
            ["server"],
        )
        self.switches = _metric(
            Counter, registry, "server_switches", "Switches from one listed server to another."
        )
        self.reorgs = _metric(Counter, registry, "reorgs", "Reorgs followed.")
        self.reorg_depth = _metric(
            Histogram,
            registry,
            "reorg_depth_blocks",
            "Blocks replaced by each reorg followed.",
            buckets=REORG_DEPTH_BUCKETS,
        )
        depth = _metric(
            Gauge, registry, "outbox_messages", "Messages not acknowledged by the server yet."
        )
        depth.set_function(outbox_messages)
        spool = _metric(
            Gauge,
            registry,
            "spool_bytes",
            "Bytes of the files in the spool directory (0 without one).",
        )
        spool.set_function(lambda: _directory_bytes(spool_directory))
        self.heads = _metric(
            Counter,
            registry,
            "heads",
            "Blocks handed over, by how the client learnt of them: subscription (pushed by the "
            "node), poll (the head when polled), backfill (fetched as a parent).",
            ["source"],
        )
        for source in SOURCES:
            self.heads.labels(source)
        self.subscription_misses = _metric(
            Counter,
            registry,
            "subscription_misses",
            "Heads the subscription did not deliver within a poll interval, delivered by a poll.",
        )
        self.resubscriptions = _metric(
            Counter,
            registry,
            "resubscriptions",
            "Subscriptions made again after one ended or went silent.",
        )
        self.subscription_lag = _metric(
            Histogram,
            registry,
            "subscription_lag_seconds",
            "Seconds from a poll seeing a head to the subscription delivering it (0 when the "
            "subscription was first).",
            buckets=LATENCY_BUCKETS,
        )
        self.subscription_active = _metric(
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
