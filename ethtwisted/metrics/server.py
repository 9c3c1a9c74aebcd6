"""
eth-server's metrics: L{ServerMetrics} counts what its connections and ingest report to it;
L{StoreMetrics} shows the stores' health and what each client last reported, read from the
durable store at each scrape (so eth-stats shows it too, for every collector).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from twisted.internet.interfaces import IReactorTime

from ethtwisted.framing import DROP_KINDS
from ethtwisted.metrics import LATENCY_BUCKETS, REORG_DEPTH_BUCKETS, metric
from ethtwisted.records import ChainRange, NodeRecord, Received
from ethtwisted.states import STATES, State

PROPAGATION_PERCENTILES = (50, 95)
"""The percentiles of each client's propagation delay that the API and C{/metrics} show."""


class ServerMetrics:
    """
    The collector's counters.  The connections report to L{received}, L{acknowledged} and
    L{dropped} (this is a connection observer), the ingest to L{committed} and L{conflict}, the
    fleet view to L{decided}; at each scrape, C{connections_open} and C{messages_pending} say
    how many connections are open and how many payloads are received and not yet committed.
    C{clock} times the commits.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        clock: IReactorTime,
        connections_open: Callable[[], int],
        messages_pending: Callable[[], int],
    ) -> None:
        self.clock = clock
        self.messages_received = metric(
            Counter,
            registry,
            "messages_received",
            "Payloads received from clients (every send, duplicates included).",
        )
        self.messages_stored = metric(
            Counter,
            registry,
            "messages_stored",
            "Payloads committed to SQL that were new.",
        )
        self.messages_duplicate = metric(
            Counter,
            registry,
            "messages_duplicate",
            "Payloads committed to SQL that were already stored.",
        )
        self.rejected = metric(
            Counter,
            registry,
            "rejected",
            "Connections dropped by the server, by reason.",
            ["reason"],
        )
        for kind in DROP_KINDS:
            self.rejected.labels(kind)
        self.acks_sent = metric(
            Counter,
            registry,
            "acks_sent",
            "Acknowledgements sent to clients.",
        )
        self.store_conflicts = metric(
            Counter,
            registry,
            "store_conflicts",
            "SQL transactions that lost to a concurrent one (a Galera certification failure, a"
            " deadlock, a lock wait timeout), each tried again.",
        )
        self.store_latency = metric(
            Histogram,
            registry,
            "store_latency_seconds",
            "Seconds from a payload's arrival until it is committed to SQL.",
            buckets=LATENCY_BUCKETS,
        )
        self.decision_latency = metric(
            Histogram,
            registry,
            "fleet_decision_seconds",
            "Seconds each decision of the clients' states took, from asking the store until it"
            " answered.",
            buckets=LATENCY_BUCKETS,
        )
        connections = metric(Gauge, registry, "connections_open", "Client connections open now.")
        connections.set_function(connections_open)
        pending = metric(
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

    def decided(self, seconds: float) -> None:
        self.decision_latency.observe(seconds)

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
        self.store_up = metric(
            Gauge,
            registry,
            "store_up",
            "1 when the store answered the last check, else 0.",
            ["store"],
        )
        for store in stores:
            self.store_up.labels(store)
        self.client_last_block = metric(
            Gauge,
            registry,
            "client_last_block",
            "The last block number each client reported.",
            ["client", "chain_id"],
        )
        self.client_lag = metric(
            Gauge,
            registry,
            "client_lag_blocks",
            "How many blocks each client's last report is behind the best head of its chain.",
            ["client", "chain_id"],
        )
        self.client_last_seen = metric(
            Gauge,
            registry,
            "client_last_seen_timestamp_seconds",
            "Unix time of each client's last message.",
            ["client"],
        )

        self.client_peers = metric(
            Gauge,
            registry,
            "client_peers",
            "The peers of each client's node, as its last status said.",
            ["client"],
        )
        self.client_syncing = metric(
            Gauge,
            registry,
            "client_syncing",
            "1 while each client's node says it is syncing, 0 when it says it is not.",
            ["client"],
        )
        self.client_node = metric(
            Info,
            registry,
            "client_node",
            "The version each client's node reports (web3_clientVersion).",
            ["client"],
        )
        self.client_propagation = {
            percent: metric(
                Gauge,
                registry,
                f"client_propagation_p{percent}_seconds",
                f"How long after the fleet's first sighting of a block each client saw it: the"
                f" {percent}th percentile over the last blocks it saw.",
                ["client"],
            )
            for percent in PROPAGATION_PERCENTILES
        }
        self.client_state = metric(
            Gauge,
            registry,
            "client_state",
            "1 while each watched client is in the state (behind, stalled, silent, syncing,"
            " fork), else 0, as the fleet view decided.",
            ["client", "state"],
        )
        self.chain_reorg_depth = metric(
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

    def update_states(self, states: Mapping[str, Mapping[str, State]]) -> None:
        """
        Replace the state gauges with C{states} (every watched client → the states it is in):
        one series per client and state of L{STATES}, none for a client no longer watched.
        """
        self.client_state.clear()
        for client, current in states.items():
            for state in STATES:
                self.client_state.labels(client, state).set(1 if state in current else 0)

    def update_health(self, checks: dict[str, str | None]) -> None:
        """
        Record which stores answered: C{checks} maps a store to L{None} or its trouble.
        """
        for store, trouble in checks.items():
            self.store_up.labels(store).set(0 if trouble else 1)

    def update_clients(self, clients: Mapping[str, tuple[int | None, int | None, float]]) -> None:
        """
        Replace the per-client gauges with C{clients}: client → (chain id, its last block,
        when it was last heard from); its lag is behind the highest last block of its chain.
        """
        best: dict[int | None, int] = {}
        for chain_id, last_block, _ in clients.values():
            if last_block is not None:
                best[chain_id] = max(last_block, best.get(chain_id, last_block))
        for gauge in (self.client_last_block, self.client_lag, self.client_last_seen):
            gauge.clear()
        for client, (chain_id, last_block, last_seen) in clients.items():
            self.client_last_seen.labels(client).set(last_seen)
            if last_block is None:
                continue
            chain = "" if chain_id is None else str(chain_id)
            self.client_last_block.labels(client, chain).set(last_block)
            self.client_lag.labels(client, chain).set(best[chain_id] - last_block)

    def update_nodes(self, nodes: Mapping[str, NodeRecord]) -> None:
        """
        Replace the node gauges with each client's latest status in C{nodes}.  A status, a
        version or a client that is gone leaves no series behind.
        """
        for m in (self.client_peers, self.client_syncing, self.client_node):
            m.clear()
        for client, record in nodes.items():
            status = record.status
            if status.peers is not None:
                self.client_peers.labels(client).set(status.peers)
            if status.syncing is not None:
                self.client_syncing.labels(client).set(0 if status.syncing is False else 1)
            if status.client_version is not None:
                self.client_node.labels(client).info({"version": status.client_version})

    def update_propagation(self, propagation: Mapping[str, Mapping[int, float]]) -> None:
        """
        Replace the propagation gauges with C{propagation}: per client, its delay in ms at
        each of L{PROPAGATION_PERCENTILES} (those it has).
        """
        for m in self.client_propagation.values():
            m.clear()
        for client, percentiles in propagation.items():
            for percent, ms in percentiles.items():
                self.client_propagation[percent].labels(client).set(ms / 1000)
