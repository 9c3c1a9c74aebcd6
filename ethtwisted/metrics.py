"""
Prometheus metrics of the stats API, each service with its own L{CollectorRegistry}.

L{ServerMetrics} counts what an eth-server's connections and L{Ingest} do, through their
observer hooks; L{StoreMetrics} shows the stores' health and what each client last reported,
read from the durable store at each scrape (so eth-stats shows it too, for every collector).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ethtwisted.interfaces import ClientRecord, Head, Received

if TYPE_CHECKING:
    from ethtwisted.server import Ingest, ServerFactory

NAMESPACE = "ethtwisted"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DROP_KINDS = ("too_large", "framing", "bad_message", "unauthorized", "idle", "internal")


class ServerMetrics:
    """
    The collector's counters, fed by L{ServerFactory.observers} and L{Ingest.observers}.
    """

    def __init__(
        self, registry: CollectorRegistry, factory: ServerFactory, ingest: Ingest
    ) -> None:
        self.reactor = ingest.reactor
        self.messages_received = Counter(
            "messages_received",
            "Payloads received from clients (every send, duplicates included).",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.messages_stored = Counter(
            "messages_stored",
            "Payloads committed to SQL that were new.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.messages_duplicate = Counter(
            "messages_duplicate",
            "Payloads committed to SQL that were already stored.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.rejected = Counter(
            "rejected",
            "Connections dropped by the server, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        for kind in DROP_KINDS:
            self.rejected.labels(kind)
        self.acks_sent = Counter(
            "acks_sent",
            "Acknowledgements sent to clients.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.store_latency = Histogram(
            "store_latency_seconds",
            "Seconds from a payload's arrival until it is committed to SQL.",
            namespace=NAMESPACE,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        connections = Gauge(
            "connections_open",
            "Client connections open now.",
            namespace=NAMESPACE,
            registry=registry,
        )
        connections.set_function(lambda: len(factory.connections))
        pending = Gauge(
            "messages_pending",
            "Payloads received and not yet committed.",
            namespace=NAMESPACE,
            registry=registry,
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
        self.store_up = Gauge(
            "store_up",
            "1 when the store answered the last check, else 0.",
            ["store"],
            namespace=NAMESPACE,
            registry=registry,
        )
        for store in stores:
            self.store_up.labels(store)
        self.client_last_block = Gauge(
            "client_last_block",
            "The last block number each client reported.",
            ["client", "chain_id"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.client_lag = Gauge(
            "client_lag_blocks",
            "How many blocks each client's last report is behind the best head of its chain.",
            ["client", "chain_id"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.client_last_seen = Gauge(
            "client_last_seen_timestamp_seconds",
            "Unix time of each client's last message.",
            ["client"],
            namespace=NAMESPACE,
            registry=registry,
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
