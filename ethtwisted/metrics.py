"""
Prometheus metrics, each service with its own L{CollectorRegistry}: the stats API's, and
eth-client's (L{ClientMetrics}).

L{ServerMetrics} counts what an eth-server's connections and L{Ingest} do, through their
observer hooks; L{StoreMetrics} shows the stores' health and what each client last reported,
read from the durable store at each scrape (so eth-stats shows it too, for every collector).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.interfaces import IReactorTime

from ethtwisted.client.follower import SOURCES
from ethtwisted.framing import DROP_KINDS
from ethtwisted.interfaces import ClientRecord, Head, INode, Received
from ethtwisted.node.measured import MeasuredNode
from ethtwisted.protocol import Block, parse_block

if TYPE_CHECKING:
    from ethtwisted.client.delivery import Delivery
    from ethtwisted.client.follower import Follower, Sighting
    from ethtwisted.client.outbox import Outbox
    from ethtwisted.client.subscriber import Subscriber
    from ethtwisted.server.factory import ServerFactory
    from ethtwisted.server.ingest import Ingest

NAMESPACE = "ethtwisted"
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
    The collector's counters, fed by L{ServerFactory.observers} and L{Ingest.observers}.
    """

    def __init__(
        self, registry: CollectorRegistry, factory: ServerFactory, ingest: Ingest
    ) -> None:
        self.reactor = ingest.reactor
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
        self.store_latency = _metric(
            Histogram,
            registry,
            "store_latency_seconds",
            "Seconds from a payload's arrival until it is committed to SQL.",
            buckets=LATENCY_BUCKETS,
        )
        connections = _metric(Gauge, registry, "connections_open", "Client connections open now.")
        connections.set_function(lambda: len(factory.connections))
        pending = _metric(
            Gauge,
            registry,
            "messages_pending",
            "Payloads received and not yet committed.",
        )
        pending.set_function(lambda: ingest.unsettled)
        factory.observers.append(self)
        ingest.observers.append(self.committed)

    def received(self, received: Received) -> None:
        self.messages_received.inc()

    def acknowledged(self, sha256: str) -> None:
        self.acks_sent.inc()

    def dropped(self, kind: str) -> None:
        self.rejected.labels(kind).inc()

    def committed(self, group: Sequence[Received], new: int) -> None:
        self.messages_stored.inc(new)
        self.messages_duplicate.inc(len(group) - new)
        now = self.reactor.seconds()
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
REORG_DEPTH_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 64, 128, 256)


class ClientMetrics:
    """
    eth-client's metrics and health.  The node is measured by wrapping it (L{measured}); the
    rest is fed by the listener hooks of the follower, the outbox and the delivery
    (L{watch}), or read at each scrape.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        clock: IReactorTime,
        outbox: Outbox,
        unhealthy_after: float | None = None,
    ) -> None:
        self.clock = clock
        self.unhealthy_after = UNHEALTHY_AFTER if unhealthy_after is None else unhealthy_after
        self.node_down_since: float | None = None
        self.server_down_since: float | None = clock.seconds()
        self.connections = 0
        self.delivery: Delivery | None = None

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
        self.acknowledged = _metric(
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
        depth.set_function(lambda: len(outbox))
        spool = _metric(
            Gauge,
            registry,
            "spool_bytes",
            "Bytes of the files in the spool directory (0 without one).",
        )
        spool.set_function(
            lambda: _directory_bytes(outbox.spool.directory if outbox.spool else None)
        )
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
        outbox.ack_listeners.append(self._acknowledged)

    def measured(self, node: INode) -> INode:
        """
        C{node}, with each call timed and its outcome noted.
        """
        return MeasuredNode(node, self.clock, self.node_answered, self.node_failed, self.head.set)

    def watch(self, follower: Follower, delivery: Delivery | None) -> None:
        """
        Count the reorgs C{follower} follows, the connections C{delivery} makes and its
        switches between servers (one-shot delivery, C{None}, has no connection to watch).
        """
        follower.reorg_listeners.append(self._reorg)
        follower.sighting_listeners.append(self._sighting)
        self.delivery = delivery
        if delivery is None:
            self.server_down_since = None
        else:
            for name, _ in delivery.servers.servers:
                self.in_use.labels(name).set(0)
            delivery.connection_listeners.append(self._connection)
            delivery.switch_listeners.append(lambda left, now: self.switches.inc())

    def watch_subscriber(self, subscriber: Subscriber) -> None:
        """
        Count the misses and resubscriptions of C{subscriber}, and how late it delivers.
        """
        subscriber.miss_listeners.append(self.subscription_misses.inc)
        subscriber.resubscribe_listeners.append(self.resubscriptions.inc)
        subscriber.lag_listeners.append(self.subscription_lag.observe)
        self.subscription_active.set_function(lambda: 1 if subscriber.active else 0)

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
        if self.delivery is not None and self.delivery.refusal is not None:
            server = f"server refuses this client: {self.delivery.refusal}"
        return {"node": trouble(self.node_down_since, "node"), "server": server}

    def node_answered(self, seconds: float) -> None:
        self.node_round_trip.observe(seconds)
        self.node_up.set(1)
        self.node_down_since = None

    def node_failed(self) -> None:
        self.node_up.set(0)
        if self.node_down_since is None:
            self.node_down_since = self.clock.seconds()

    def _acknowledged(self, payload: bytes) -> None:
        block = parse_block(payload)
        number = block.number if isinstance(block, Block) else block
        if number is not None:
            self.acknowledged.set(number)

    def _sighting(self, sighting: Sighting) -> None:
        self.heads.labels(sighting.source).inc()

    def _reorg(self, depth: int) -> None:
        self.reorgs.inc()
        self.reorg_depth.observe(depth)

    def _connection(self, up: bool) -> None:
        assert self.delivery is not None
        for name, _ in self.delivery.servers.servers:
            self.in_use.labels(name).set(1 if up and name == self.delivery.in_use else 0)
        if up:
            self.connections += 1
            if self.connections > 1:
                self.reconnects.inc()
            self.server_down_since = None
        else:
            self.server_down_since = self.clock.seconds()


def _directory_bytes(directory: str | None) -> int:
    if directory is None:
        return 0
    try:
        with os.scandir(directory) as entries:
            return sum(e.stat().st_size for e in entries if e.is_file())
    except OSError:
        return 0
