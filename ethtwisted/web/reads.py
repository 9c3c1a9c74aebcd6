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
from ethtwisted.states import State
from ethtwisted.storage import FINALIZED_REPORT_AGE
from ethtwisted.storage.chains import chain_reader
from ethtwisted.web.resource import HTTPError

log = Logger()

MAX_CLIENTS = 1000
MAX_CHAINS = 100
CHECK_TIMEOUT = 5.0
READ_TIMEOUT = 10.0


PROPAGATION_BLOCKS = 100
"""A client's propagation is over the blocks it saw last, this many."""


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
        Bring the store gauges up to date before a scrape.
        """
        checks = await self.check()
        if checks["sql"] is not None:
            return
        reading_clients = self.sql.clients(MAX_CLIENTS).addTimeout(READ_TIMEOUT, self.reactor)
        reading_heads = self.sql.heads(MAX_CHAINS).addTimeout(READ_TIMEOUT, self.reactor)
        try:
            clients = await reading_clients
            heads = await reading_heads
        except CancelledError:
            raise  # the scraper went away
        except Exception as e:
            log.warn("stats: cannot read the clients for metrics: {reason}",
                     reason=_reason(e))  # fmt: skip
            return
        self.store_metrics.update_clients(clients, heads)
        names = [c.client for c in clients]
        reading: list[Deferred[Any]] = [
            self.sql.ledger.node_statuses(names),
            self.sql.ledger.propagation(names, PROPAGATION_BLOCKS),
        ]
        try:
            nodes, delays = await gatherResults(reading, consumeErrors=True).addTimeout(
                READ_TIMEOUT, self.reactor
            )
        except CancelledError:
            raise
        except Exception as e:
            log.warn("stats: cannot read the nodes for metrics: {reason}", reason=_reason(e))
            return
        propagation = {
            name: {
                p: ms
                for p in PROPAGATION_PERCENTILES
                if (ms := percentile(d, p / 100)) is not None
            }
            for name, d in delays.items()
        }
        self.store_metrics.update_nodes(nodes, propagation)
        try:
            states = await self.states().addTimeout(READ_TIMEOUT, self.reactor)
        except CancelledError:
            raise
        except Exception as e:
            log.warn("stats: cannot read the states for metrics: {reason}", reason=_reason(e))
            return
        self.store_metrics.update_states(states)
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
