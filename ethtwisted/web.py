"""
The stats API, metrics and dashboard over HTTP (twisted.web), read-only over the stores.

- C{/_cat}, C{/_cat/hashes}, C{/_cat/hashes/<sha256>}, C{/_cat/clients}: the older stats
  service's plain-text tables, from Redis when it is configured, else from SQL.
- C{/api/v1/...}: JSON (blocks, one block, clients, heads, arrivals) from SQL.
- C{/metrics}: Prometheus text format, from a L{CollectorRegistry} of the service's own.
- C{/healthz}: 200 when every store answers, 503 with the reasons otherwise.
- C{/}: the dashboard, one self-contained page that polls the JSON API.

With a token, the JSON API, C{/metrics} and the dashboard require C{Authorization: Bearer
<token>} (the dashboard also takes C{?token=} once); C{/_cat} and C{/healthz} stay open.
C{docs/stats.md} describes every endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ethtwisted.interfaces import (
    BlockRecord,
    ClientRecord,
    Head,
    IBlockReader,
    IStatsReader,
)
from ethtwisted.logs import describe, log_observer
from ethtwisted.metrics import StoreMetrics
from ethtwisted.storage import wait_for
from ethtwisted.tap import StartingService, listen_on, reachable_beyond_loopback

log = Logger(observer=log_observer)

CAT_HASHES = 100
"""How many hashes C{/_cat/hashes} lists, as the older service did."""
CAT_CLIENTS = 1000
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CLIENTS = 1000
MAX_CHAINS = 100
MAX_MINUTES = 24 * 60
MAX_DIGITS = 9
"""The most digits a number in a query argument may have (C{?limit=}, C{?minutes=})."""
MAX_ARG_BYTES = 1024
"""The longest query argument value read at all: a cursor is 64 characters, a token fits."""
CHECK_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
_SHA256 = re.compile(r"[0-9a-fA-F]{64}\Z")

HealthCheck = Callable[[], Mapping[str, str | None] | Deferred[Mapping[str, str | None]]]
"""Says, per component, L{None} when it is well or what is wrong with it."""


class HTTPError(Exception):
    """
    A request that cannot be answered as asked: the status code and what to tell the caller.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def json_response(obj: Any, status: int = 200) -> Response:
    body = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return Response(status, body, "application/json")


def text_response(text: str, status: int = 200) -> Response:
    return Response(status, text.encode("utf-8"), "text/plain; charset=utf-8")


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """
    Rows under a header line, columns separated by two spaces and padded to their widest
    cell: numbers to the right, text to the left (C{tabulate}'s "plain" layout).
    """
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)]) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def valid_sha256(text: str) -> str | None:
    """
    C{text} as a lowercase SHA256 hex, or L{None} if it is not one.
    """
    return text.lower() if _SHA256.match(text) else None


def _block(record: BlockRecord) -> dict[str, Any]:
    return {
        "sha256": record.sha256,
        "first_seen": record.first_seen,
        "client": record.client,
        "chain_id": record.chain_id,
        "number": record.number,
        "hash": record.block_hash,
        "parent_hash": record.parent_hash,
        "timestamp": record.block_time,
    }


def _client(record: ClientRecord, best: Mapping[int | None, int]) -> dict[str, Any]:
    head = best.get(record.chain_id)
    lag = None
    if head is not None and record.last_block is not None:
        lag = max(head - record.last_block, 0)
    return {
        "client": record.client,
        "address": record.address,
        "messages": record.messages,
        "first_seen": record.first_seen,
        "last_seen": record.last_seen,
        "chain_id": record.chain_id,
        "last_block": record.last_block,
        "lag": lag,
    }


def _head(head: Head) -> dict[str, Any]:
    return {
        "chain_id": head.chain_id,
        "number": head.number,
        "hash": head.block_hash,
        "first_seen": head.first_seen,
    }


def _short_reason(failure: Failure | BaseException) -> str:
    value = failure.value if isinstance(failure, Failure) else failure
    if isinstance(value, CancelledError | TimeoutError):
        return "timed out"
    return describe(failure)[:200]


class Stats:
    """
    What the stats resources read: the durable store (SQL), the counters (Redis, optional)
    and, inside eth-server, the collector's own trouble.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        sql: IBlockReader,
        sql_stats: IStatsReader,
        redis: IStatsReader | None = None,
        trouble: Callable[[], str | None] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.reactor = reactor
        self.sql = sql
        self.sql_stats = sql_stats
        self.redis = redis
        self.trouble = trouble
        self.registry = registry if registry is not None else CollectorRegistry()
        self.store_metrics = StoreMetrics(
            self.registry, ["sql", "redis"] if redis is not None else ["sql"]
        )
        self._said: str | None = None

    @property
    def counters(self) -> IStatsReader:
        """Where C{/_cat} reads: Redis when configured, else SQL."""
        return self.redis if self.redis is not None else self.sql_stats

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
            reason = _short_reason(e)
            if reason != self._said:
                self._said = reason
                log.warn("stats: a store read failed: {reason}", reason=reason)
            raise HTTPError(503, "store unavailable") from None
        if self._said is not None:
            log.info("stats: store reads work again")
            self._said = None
        return result

    def check(self) -> Deferred[Mapping[str, str | None]]:
        """
        Ping every store: C{{"sql": None, "redis": "timed out after 5 s", ...}}.
        """
        return Deferred.fromCoroutine(self._check())

    async def _check(self) -> Mapping[str, str | None]:
        stores: list[tuple[str, IStatsReader]] = [("sql", self.sql_stats)]
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

    def _ping(self, reader: IStatsReader) -> Deferred[str | None]:
        d = reader.ping().addTimeout(CHECK_TIMEOUT, self.reactor)
        return d.addCallbacks(lambda _: None, _short_reason)

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
        except Exception as e:
            log.warn("stats: cannot read the clients for metrics: {reason}",
                     reason=_short_reason(e))  # fmt: skip
            return
        self.store_metrics.update_clients(clients, heads)


# -- serving ----------------------------------------------------------------------------------


_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class _Endpoint(Resource):
    """
    A leaf resource answering GET (and HEAD) with an async handler of the remaining path;
    with a token, only to requests that present it.
    """

    isLeaf = True
    protected = False
    json_errors = True

    def __init__(self, token: str | None) -> None:
        super().__init__()
        self.token = token.encode("utf-8") if token else None

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        # As bytes: a header need not be UTF-8, and one that is not is simply not the token.
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(given.strip(), self.token)

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            response = self.error(405, "method not allowed")
            response.headers["Allow"] = "GET, HEAD"
            return _write(request, response)
        if self.protected and not self.authorized(request):
            return _write(request, self.unauthorized(request))
        try:
            path = [p.decode("utf-8") for p in request.postpath or []]
        except UnicodeDecodeError:
            return _write(request, self.error(400, "bad path"))
        d = Deferred.fromCoroutine(self._handle(request, path))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallback(lambda response: _write(request, response))
        d.addErrback(lambda f: f.trap(CancelledError))
        d.addErrback(lambda f: log.failure("writing a stats response", f))
        return NOT_DONE_YET

    async def _handle(self, request: Request, path: list[str]) -> Response:
        try:
            return await self.handle(request, [p for p in path if p])
        except HTTPError as e:
            return self.error(e.status, e.message)
        except CancelledError:
            raise
        except Exception:
            log.failure("answering {path}", path=request.path.decode("utf-8", "replace"))
            return self.error(500, "internal error")

    async def handle(self, request: Request, path: list[str]) -> Response:
        raise NotImplementedError

    def error(self, status: int, message: str) -> Response:
        if self.json_errors:
            return json_response({"error": message, "status": status}, status)
        return text_response(message + "\n", status)

    def unauthorized(self, request: Request) -> Response:
        response = self.error(401, "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="ethtwisted"'
        return response


def _write(request: Request, response: Response) -> int:
    if request.finished or getattr(request, "_disconnected", False):
        return NOT_DONE_YET
    request.setResponseCode(response.status)
    for name, value in {**_SECURITY_HEADERS, **response.headers}.items():
        request.setHeader(name, value)
    request.setHeader("Content-Type", response.content_type)
    request.setHeader("Content-Length", str(len(response.body)))
    request.write(response.body)
    request.finish()
    return NOT_DONE_YET


def _query_arg(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    if len(values[-1]) > MAX_ARG_BYTES:
        raise HTTPError(400, f"{name} is too long")
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"{name} is not UTF-8") from None


def _int_arg(request: Request, name: str, default: int, cap: int) -> int:
    """
    A positive integer query argument of at most L{MAX_DIGITS} digits, capped at C{cap}.
    """
    text = _query_arg(request, name)
    if text is None:
        return default
    if len(text) > MAX_DIGITS or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise HTTPError(400, f"{name} must be a positive integer of at most {MAX_DIGITS} digits")
    return min(int(text), cap)


class NotFound(_Endpoint):
    async def handle(self, request: Request, path: list[str]) -> Response:
        raise HTTPError(404, "not found")


class CatResource(_Endpoint):
    """
    The older stats service's plain-text tables.
    """

    json_errors = False

    def __init__(self, stats: Stats) -> None:
        super().__init__(None)
        self.stats = stats

    async def handle(self, request: Request, path: list[str]) -> Response:
        if not path:
            return text_response("=^.^=\n/_cat/hashes\n/_cat/hashes/{hash}\n/_cat/clients\n")
        if path == ["hashes"]:
            rows = await self.stats.read(self.stats.counters.latest_hashes(CAT_HASHES))
            return text_response(plain_table(["hash", "timestamp"], rows))
        if path[0] == "hashes" and len(path) == 2:
            sha256 = valid_sha256(path[1])
            if sha256 is None:
                return text_response("Hash not found", 400)
            payload = await self.stats.read(self.stats.sql.payload(sha256))
            if payload is None:
                return text_response("Hash not found", 404)
            return text_response(payload)
        if path == ["clients"]:
            rows = await self.stats.read(self.stats.counters.address_counts(CAT_CLIENTS))
            return text_response(plain_table(["client", "count"], rows))
        raise HTTPError(404, "not found")


class ApiResource(_Endpoint):
    """
    C{/api/v1/...}: JSON from the durable store.
    """

    protected = True

    def __init__(self, stats: Stats, token: str | None) -> None:
        super().__init__(token)
        self.stats = stats

    async def handle(self, request: Request, path: list[str]) -> Response:
        if path[:1] != ["v1"]:
            raise HTTPError(404, "not found")
        path = path[1:]
        if not path:
            return json_response(
                {
                    "endpoints": [
                        "/api/v1/blocks",
                        "/api/v1/blocks/{sha256}",
                        "/api/v1/clients",
                        "/api/v1/head",
                        "/api/v1/arrivals",
                    ]
                }
            )
        handler = {
            "blocks": self.blocks,
            "clients": self.clients,
            "head": self.head,
            "arrivals": self.arrivals,
        }.get(path[0])
        if handler is None:
            raise HTTPError(404, "not found")
        return await handler(request, path[1:])

    async def blocks(self, request: Request, rest: list[str]) -> Response:
        sql = self.stats.sql
        if len(rest) == 1:
            sha256 = valid_sha256(rest[0])
            if sha256 is None:
                raise HTTPError(400, "a block is named by the SHA256 of its payload: 64 hex")
            record, payload = await self.stats.read(
                gatherResults([sql.block(sha256), sql.payload(sha256)], consumeErrors=True)
            )
            if record is None and payload is None:
                raise HTTPError(404, "Hash not found")
            body = _block(record) if record is not None else {"sha256": sha256}
            body["payload"] = payload
            return json_response(body)
        if rest:
            raise HTTPError(404, "not found")
        limit = _int_arg(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        before = _query_arg(request, "before")
        if before is not None:
            before = valid_sha256(before)
            if before is None:
                raise HTTPError(400, "before must be the sha256 of a block: 64 hex")
        records = await self.stats.read(sql.blocks(limit, before))
        if records is None:
            raise HTTPError(400, "before names no stored block")
        following = records[-1].sha256 if len(records) == limit else None
        return json_response(
            {"blocks": [_block(r) for r in records], "next": following, "limit": limit}
        )

    async def clients(self, request: Request, rest: list[str]) -> Response:
        if rest:
            raise HTTPError(404, "not found")
        limit = _int_arg(request, "limit", MAX_CLIENTS, MAX_CLIENTS)
        clients, heads = await self.stats.read(
            gatherResults(
                [self.stats.sql.clients(limit), self.stats.sql.heads(MAX_CHAINS)],
                consumeErrors=True,
            )
        )
        best = {h.chain_id: h.number for h in heads}
        return json_response(
            {"now": self.stats.reactor.seconds(), "clients": [_client(c, best) for c in clients]}
        )

    async def head(self, request: Request, rest: list[str]) -> Response:
        if rest:
            raise HTTPError(404, "not found")
        heads = await self.stats.read(self.stats.sql.heads(MAX_CHAINS))
        return json_response(
            {"now": self.stats.reactor.seconds(), "heads": [_head(h) for h in heads]}
        )

    async def arrivals(self, request: Request, rest: list[str]) -> Response:
        if rest:
            raise HTTPError(404, "not found")
        minutes = _int_arg(request, "minutes", 60, MAX_MINUTES)
        now = self.stats.reactor.seconds()
        since = (int(now) // 60 - minutes + 1) * 60
        counts = await self.stats.read(self.stats.sql.arrivals(since, 60))
        return json_response(
            {
                "now": now,
                "since": since,
                "bucket": 60,
                "counts": [[int(start), n] for start, n in counts],
            }
        )


class MetricsResource(_Endpoint):
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


class HealthResource(_Endpoint):
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


# -- the dashboard ----------------------------------------------------------------------------


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


class _Page:
    """
    An HTML page of ours with its inline script and style allowed, by hash, by its
    Content-Security-Policy and nothing else.
    """

    def __init__(self, name: str) -> None:
        text = files("ethtwisted").joinpath(name).read_text(encoding="utf-8")
        self.body = text.encode("utf-8")
        scripts = re.findall(r"<script>(.*?)</script>", text, re.DOTALL)
        styles = re.findall(r"<style>(.*?)</style>", text, re.DOTALL)
        self.policy = "; ".join(
            [
                "default-src 'none'",
                "script-src " + " ".join(_csp_hash(s) for s in scripts or [""]),
                "style-src " + " ".join(_csp_hash(s) for s in styles or [""]),
                "connect-src 'self'",
                "img-src 'self' data:",
                "form-action 'self'",
                "base-uri 'none'",
                "frame-ancestors 'none'",
            ]
        )

    def response(self, status: int = 200) -> Response:
        return Response(
            status,
            self.body,
            "text/html; charset=utf-8",
            {"Content-Security-Policy": self.policy},
        )


class DashboardResource(_Endpoint):
    """
    C{/}: the dashboard page.  With a token, the page is sent to requests that carry it
    (header, or C{?token=} once); others get a small page asking for it.
    """

    protected = True

    def __init__(self, token: str | None) -> None:
        super().__init__(token)
        self.page = _Page("dashboard.html")
        self.login = _Page("login.html")

    def authorized(self, request: Request) -> bool:
        if super().authorized(request):
            return True
        try:
            given = _query_arg(request, "token")
        except HTTPError:
            return False
        if given is None or self.token is None:
            return False
        return hmac.compare_digest(given.encode("utf-8"), self.token)

    def unauthorized(self, request: Request) -> Response:
        return self.login.response(401)

    async def handle(self, request: Request, path: list[str]) -> Response:
        if path:
            raise HTTPError(404, "not found")
        return self.page.response()


class _Root(Resource):
    """
    The root of a site of ours: unknown paths are a JSON 404 with the usual headers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.not_found = NotFound(None)

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self.not_found


class StatsRoot(_Root):
    """
    The root of the stats site.
    """

    def __init__(self, stats: Stats, token: str | None = None) -> None:
        super().__init__()
        self.putChild(b"", DashboardResource(token))
        self.putChild(b"_cat", CatResource(stats))
        self.putChild(b"api", ApiResource(stats, token))
        self.putChild(b"metrics", MetricsResource(stats.registry, token, stats.refresh_metrics))
        self.putChild(b"healthz", HealthResource(stats.check))


def agent_resource(
    registry: CollectorRegistry, check: HealthCheck, token: str | None = None
) -> Resource:
    """
    C{/metrics} from C{registry} and C{/healthz} from C{check}, for an agent (eth-client)
    that serves only its own metrics.
    """
    root = _Root()
    root.putChild(b"metrics", MetricsResource(registry, token))
    root.putChild(b"healthz", HealthResource(check))
    return root


class StatsSite(Site):
    """
    A L{Site} that logs requests at debug level, by path only: a query string may carry the
    dashboard's token, and a dashboard polls too often for an access log at info level.
    """

    displayTracebacks = False

    def log(self, request: Request) -> None:  # type: ignore[override]
        log.debug(
            "{method} {path} {code}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            code=request.code,
        )


def stats_site(stats: Stats, token: str | None = None, reactor: Any = None) -> StatsSite:
    """
    The whole stats site over C{stats}.
    """
    site = StatsSite(StatsRoot(stats, token), reactor=reactor)
    site.noisy = False
    return site


# -- the service ------------------------------------------------------------------------------


def serve_stats(
    reactor: Any,
    stats: Stats,
    description: str,
    token: str | None,
    waits: Sequence[tuple[str, Callable[[], Deferred[None]]]] = (),
    wait: float = 0.0,
    closes: Sequence[Callable[[], Deferred[None]]] = (),
) -> StatsService:
    """
    The stats site over C{stats}, served on the endpoint C{description}; a warning if it is
    reachable from other machines without a token.
    """
    if token is None and reachable_beyond_loopback(description):
        log.warn("the stats API on {description} is open beyond this machine: no token",
                 description=description)  # fmt: skip
    endpoint = serverFromString(reactor, description)
    site = stats_site(stats, token, reactor)
    return StatsService(reactor, site, [(description, endpoint)], waits, wait, closes)


def serve_agent(
    reactor: Any,
    registry: CollectorRegistry,
    check: HealthCheck,
    description: str,
    token: str | None,
) -> StatsService:
    """
    An agent's own C{/metrics} and C{/healthz} (eth-client's), served on C{description}.
    """
    if token is None and reachable_beyond_loopback(description):
        log.warn("the metrics on {description} are open beyond this machine: no token",
                 description=description)  # fmt: skip
    site = StatsSite(agent_resource(registry, check, token), reactor=reactor)
    site.noisy = False
    endpoint = serverFromString(reactor, description)
    return StatsService(reactor, site, [(description, endpoint)], what="metrics")


class StatsService(StartingService):
    """
    Waits for the stores (up to C{wait} seconds, each C{start} in C{waits}), then serves
    C{site} on every endpoint; on stop, stops listening and calls each of C{closes}.  A store
    that cannot be reached or an endpoint that cannot be listened on ends the program with one
    line on stderr.
    """

    what = "the stats API"

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
        self.ports: list[IListeningPort] = []

    async def start_up(self) -> None:
        for what, start in self.waits:
            await wait_for(start, what, self.wait, IReactorTime(self.reactor))
        self.ports = await listen_on(self.endpoints, self.site, self.label)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.ready.cancel()
        ports, self.ports = self.ports, []
        for port in ports:
            await maybeDeferred(port.stopListening)
        for close in self.closes:
            await close()
