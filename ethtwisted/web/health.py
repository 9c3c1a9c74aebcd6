"""
C{/healthz} (whether every store answers) and C{/metrics} (a Prometheus registry), served by
eth-server and eth-stats over the stores and by eth-client over its own state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred
from twisted.web.server import Request

from ethtwisted.web.resource import Endpoint, HTTPError, Response, json_response

HealthCheck = Callable[[], Mapping[str, str | None] | Deferred[Mapping[str, str | None]]]
"""Says, per component, L{None} when it is well or what is wrong with it."""


class MetricsResource(Endpoint):
    """
    C{/metrics}: a registry in the Prometheus text format, brought up to date first by
    C{refresh} when given.
    """

    protected = True
    json_errors = False

    def __init__(
        self,
        registry: CollectorRegistry,
        token: str | None = None,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(token)
        self.registry = registry
        self.refresh = refresh

    async def handle(self, request: Request, path: list[str]) -> Response:
        if path:
            raise HTTPError(404, "not found")
        if self.refresh is not None:
            await self.refresh()
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)


class HealthResource(Endpoint):
    """
    C{/healthz}: 200 and C{{"status": "ok", ...}} when every check passes, else 503 with the
    failing checks' reasons.
    """

    def __init__(self, check: HealthCheck) -> None:
        super().__init__(None)
        self.check = check

    async def handle(self, request: Request, path: list[str]) -> Response:
        if path:
            raise HTTPError(404, "not found")
        result = self.check()
        checks = await result if isinstance(result, Deferred) else result
        failing = {name: reason for name, reason in checks.items() if reason}
        body = {
            "status": "unavailable" if failing else "ok",
            "checks": {name: reason or "ok" for name, reason in checks.items()},
        }
        return json_response(body, 503 if failing else 200)
