"""
The stats site (the dashboard, C{/_cat}, the JSON API, C{/metrics}, C{/healthz}) and an
agent's own site (C{/metrics}, C{/healthz}), and the services that serve them once the
stores answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ethtwisted.endpoints import reachable_beyond_loopback
from ethtwisted.logs import Logger
from ethtwisted.startup import StartingService, listen_on
from ethtwisted.storage import wait_for
from ethtwisted.web.api import ApiResource
from ethtwisted.web.cat import CatResource
from ethtwisted.web.dashboard import DashboardResource
from ethtwisted.web.health import HealthCheck, HealthResource, MetricsResource
from ethtwisted.web.reads import Reads
from ethtwisted.web.resource import Root

log = Logger()


class StatsRoot(Root):
    """
    The root of the stats site.
    """

    def __init__(self, reads: Reads, token: str | None = None) -> None:
        super().__init__()
        self.putChild(b"", DashboardResource(token))
        self.putChild(b"_cat", CatResource(reads))
        self.putChild(b"api", ApiResource(reads, token))
        self.putChild(b"metrics", MetricsResource(reads.registry, token, reads.refresh_metrics))
        self.putChild(b"healthz", HealthResource(reads.check))


def agent_resource(
    registry: CollectorRegistry, check: HealthCheck, token: str | None = None
) -> Resource:
    """
    C{/metrics} from C{registry} and C{/healthz} from C{check}, for an agent (eth-client)
    that serves only its own metrics.
    """
    root = Root()
    root.putChild(b"metrics", MetricsResource(registry, token))
    root.putChild(b"healthz", HealthResource(check))
    return root


class QuietSite(Site):
    """
    A L{Site} that logs requests at debug level, by path only (a query string may carry the
    dashboard's token, and a dashboard polls too often for an access log at info level), and
    not its own starts and stops.
    """

    displayTracebacks = False
    noisy = False

    def log(self, request: Request) -> None:  # type: ignore[override]
        log.debug(
            "{method} {path} {code}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            code=request.code,
        )


def stats_site(reads: Reads, token: str | None = None, reactor: Any = None) -> QuietSite:
    """
    The whole stats site over C{reads}.
    """
    return QuietSite(StatsRoot(reads, token), reactor=reactor)


# -- the service ------------------------------------------------------------------------------


def serve_stats(
    reactor: Any,
    reads: Reads,
    description: str,
    token: str | None,
    waits: Sequence[tuple[str, Callable[[], Deferred[None]]]] = (),
    wait: float = 0.0,
    closes: Sequence[Callable[[], Deferred[None]]] = (),
) -> WebService:
    """
    The stats site over C{reads}, served on the endpoint C{description}; a warning if it is
    reachable from other machines without a token.
    """
    if token is None and reachable_beyond_loopback(description):
        log.warn("the stats API on {description} is open beyond this machine: no token",
                 description=description)  # fmt: skip
    endpoint = serverFromString(reactor, description)
    site = stats_site(reads, token, reactor)
    return WebService(reactor, site, [(description, endpoint)], waits, wait, closes)


def serve_agent(
    reactor: Any,
    registry: CollectorRegistry,
    check: HealthCheck,
    description: str,
    token: str | None,
) -> WebService:
    """
    An agent's own C{/metrics} and C{/healthz} (eth-client's), served on C{description}.
    """
    if token is None and reachable_beyond_loopback(description):
        log.warn("the metrics on {description} are open beyond this machine: no token",
                 description=description)  # fmt: skip
    site = QuietSite(agent_resource(registry, check, token), reactor=reactor)
    endpoint = serverFromString(reactor, description)
    return WebService(reactor, site, [(description, endpoint)], what="metrics")


class WebService(StartingService):
    """
    Waits for the stores (up to C{wait} seconds, each C{start} in C{waits}), then serves
    C{site} on every endpoint; on stop, stops listening and calls each of C{closes}.  A store
    that cannot be reached or an endpoint that cannot be listened on ends the program with one
    line on stderr.
    """

    def __init__(
        self,
        reactor: IReactorCore,
        site: Site,
        endpoints: Sequence[tuple[str, IStreamServerEndpoint]],
        waits: Sequence[tuple[str, Callable[[], Deferred[None]]]] = (),
        wait: float = 0.0,
        closes: Sequence[Callable[[], Deferred[None]]] = (),
        what: str = "stats API",
    ) -> None:
        super().__init__(reactor)
        self.what = f"the {what}"
        self.label = what
        self.site = site
        self.endpoints = endpoints
        self.waits = waits
        self.wait = wait
        self.closes = closes

    async def start_up(self) -> None:
        for what, start in self.waits:
            await wait_for(start, what, self.wait, IReactorTime(self.reactor))
        self.ports = await listen_on(self.endpoints, self.site, self.label)

    async def shut_down(self) -> None:
        for close in self.closes:
            await close()
