"""
What the web endpoints read, and how: the durable store (SQL), the counters (Redis,
optional) and the collector's own trouble, each read bounded in time; a store that fails is
a 503 to the caller and one warning in the log.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ethtwisted.interfaces import IBlockReader, ICounterReader, IFleet
from ethtwisted.logs import Logger, Trouble, describe
from ethtwisted.metrics.server import PROPAGATION_PERCENTILES, StoreMetrics
from ethtwisted.states import FleetView, State
from ethtwisted.storage import FINALIZED_REPORT_AGE
from ethtwisted.storage.chains import chain_reader
from ethtwisted.web.resource import HTTPError

log = Logger()

MAX_CLIENTS = 1000
MAX_METRIC_CLIENTS = 100_000
"""The most clients that have per-client series in C{/metrics}."""
MAX_CHAINS = 100
CHECK_TIMEOUT = 5.0
READ_TIMEOUT = 10.0


PROPAGATION_BLOCKS = 100
"""A client's propagation is over the blocks it saw last, this many."""
PROPAGATION_EVERY = 60.0
"""Seconds between two reads of every client's propagation for C{/metrics}."""
PROPAGATION_TIMEOUT = 120.0


def percentile(values: list[float], fraction: float) -> float | None:
    """
    The nearest-rank percentile of C{values} (L{None} for none).
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(fraction * len(ordered) + 0.5) - 1))]


MAX_REASON = 200
"""The most characters of a store's trouble said in C{/healthz} or the log."""


def _reason(failure: Failure | BaseException) -> str:
    return describe(failure)[:MAX_REASON]


class Reads:
    """
    What the web endpoints read, each read bounded in time: the durable store (SQL), the
    counters (Redis when configured, else SQL's) and, inside eth-server, the collector's own
    trouble.  The chains are read from the durable store (L{chain_reader}), their blocks
    marked finalized up to what a quorum of the clients' nodes report (L{finalized}); the
    clients' states from C{fleet}, the store's fleet view, when it has one.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        sql: IBlockReader,
        sql_counters: ICounterReader,
        redis: ICounterReader | None = None,
        trouble: Callable[[], str | None] | None = None,
        registry: CollectorRegistry | None = None,
        fleet: IFleet | None = None,
    ) -> None:
        self.reactor = reactor
        self.sql = sql
        self.chains = chain_reader(sql)
        self.fleet = fleet
        self.sql_counters = sql_counters
        self.redis = redis
        self.trouble = trouble
        self.registry = registry if registry is not None else CollectorRegistry()
        self.store_metrics = StoreMetrics(
            self.registry, ["sql", "redis"] if redis is not None else ["sql"]
        )
        self._propagating = False
        self._propagated = -PROPAGATION_EVERY
        self._failing = Trouble(
            log,
            LogLevel.warn,
            "stats: a store read failed: {reason}",
            "stats: store reads work again",
        )

    def finalized(self) -> Deferred[dict[int, int]]:
        """
        The finalized number per chain id: the quorum of what the clients' nodes report in
        their statuses of the last L{FINALIZED_REPORT_AGE} seconds (L{fleet_finalized}).
        """
        since = self.reactor.seconds() - FINALIZED_REPORT_AGE
        return self.sql.ledger.finalized(MAX_CHAINS, since)

    def states(
        self, clients: Collection[str] | None = None
    ) -> Deferred[dict[str, dict[str, State]]]:
        """
        Every watched client (of C{clients}, when given) → the states it is in (none without a
        fleet view).
        """
        return self.fleet.states(clients) if self.fleet is not None else succeed({})

    @property
    def counters(self) -> ICounterReader:
        """Where C{/_cat} reads: Redis when configured, else SQL."""
        return self.redis if self.redis is not None else self.sql_counters

    async def read(self, d: Deferred[Any]) -> Any:
        """
        Wait for a store read; a store that fails or does not answer in time becomes a 503
        (its reason logged once, not shown to the caller).
        """
        try:
            result = await d.addTimeout(READ_TIMEOUT, self.reactor)
        except CancelledError:
            raise  # the caller went away
        except Exception as e:
            self._failing.say(_reason(e))
            raise HTTPError(503, "store unavailable") from None
        self._failing.ended()
        return result

    def check(self) -> Deferred[Mapping[str, str | None]]:
        """
        Ping every store: C{{"sql": None, "redis": "timed out after 5 s", ...}}.
        """
        return Deferred.fromCoroutine(self._check())

    async def _check(self) -> Mapping[str, str | None]:
        stores: list[tuple[str, ICounterReader]] = [("sql", self.sql_counters)]
        if self.redis is not None:
            stores.append(("redis", self.redis))
        results = await gatherResults(
            [self._ping(reader) for _, reader in stores], consumeErrors=True
        )
        checks: dict[str, str | None] = dict(zip([n for n, _ in stores], results, strict=True))
        if self.trouble is not None:
            checks["ingest"] = self.trouble()
        self.store_metrics.update_health({n: checks[n] for n, _ in stores})
        return checks

    def _ping(self, reader: ICounterReader) -> Deferred[str | None]:
        d = reader.ping().addTimeout(CHECK_TIMEOUT, self.reactor)
        return d.addCallbacks(lambda _: None, _reason)

    async def refresh_metrics(self) -> None:
        """
        Bring the store gauges up to date before a scrape: the clients' last blocks, lags and
        states from this process's last decision when it was a moment ago (eth-server's), else
        read; their nodes read; their propagation read at most every L{PROPAGATION_EVERY}
        seconds, not waited for.
        """
        checks = await self.check()
        if checks["sql"] is not None:
            return
        view = self.fleet.view(self.reactor.seconds()) if self.fleet is not None else None
        try:
            if view is None:
                view = await self._view()
        except CancelledError:
            raise  # the scraper went away
        except Exception as e:
            log.warn("stats: cannot read the clients for metrics: {reason}",
                     reason=_reason(e))  # fmt: skip
            return
        self.store_metrics.update_clients(view.clients)
        self.store_metrics.update_states(view.states)
        names = sorted(view.clients)
        self._propagate(names)
        try:
            nodes = await self.sql.ledger.node_statuses(names).addTimeout(
                READ_TIMEOUT, self.reactor
            )
        except CancelledError:
            raise
        except Exception as e:
            log.warn("stats: cannot read the nodes for metrics: {reason}", reason=_reason(e))
            return
        self.store_metrics.update_nodes(nodes)
        try:
            finalized = await self.finalized().addTimeout(READ_TIMEOUT, self.reactor)
            chains = await self.chains.chains(MAX_CHAINS, finalized).addTimeout(
                READ_TIMEOUT, self.reactor
            )
        except CancelledError:
            raise
        except Exception as e:
            log.warn("stats: cannot read the chains for metrics: {reason}", reason=_reason(e))
            return
        self.store_metrics.update_reorgs(chains)

    async def _view(self) -> FleetView:
        """What the metrics show of the clients, read from the stores (eth-stats)."""
        clients = await self.sql.clients(MAX_METRIC_CLIENTS).addTimeout(READ_TIMEOUT, self.reactor)
        states = await self.states().addTimeout(READ_TIMEOUT, self.reactor)
        return FleetView(
            self.reactor.seconds(),
            {c.client: (c.chain_id, c.last_block, c.last_seen) for c in clients},
            states,
        )

    def _propagate(self, names: list[str]) -> None:
        """
        Read the propagation of C{names} for their gauges, unless a read is under way or one
        began less than L{PROPAGATION_EVERY} seconds ago.
        """
        now = self.reactor.seconds()
        if self._propagating or now - self._propagated < PROPAGATION_EVERY:
            return
        self._propagating, self._propagated = True, now
        d = self.sql.ledger.propagation(names, PROPAGATION_BLOCKS)
        d.addTimeout(PROPAGATION_TIMEOUT, self.reactor)

        def show(delays: dict[str, list[float]]) -> None:
            self.store_metrics.update_propagation({
                name: {p: ms for p in PROPAGATION_PERCENTILES
                       if (ms := percentile(d, p / 100)) is not None}
                for name, d in delays.items()
            })  # fmt: skip

        def failed(failure: Failure) -> None:
            log.warn("stats: cannot read the propagation for metrics: {reason}",
                     reason=_reason(failure))  # fmt: skip

        def done(_: object) -> None:
            self._propagating = False

        d.addCallbacks(show, failed).addBoth(done)
