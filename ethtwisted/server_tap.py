"""
C{twistd eth-server}: options and service.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from ethtwisted.endpoints import TCP_KINDS, listening_endpoint
from ethtwisted.framing import DEFAULT_MAX_MESSAGE_BYTES
from ethtwisted.logs import Logger, set_verbose
from ethtwisted.options import (
    STATS_TOKEN_OPTIONS,
    StoreOptions,
    check_endpoint,
    non_negative_int,
    positive_float,
    positive_int,
    read_lines,
    read_token,
    web_endpoint,
)
from ethtwisted.server.clock import PING_INTERVAL
from ethtwisted.server.collector import CollectorService
from ethtwisted.server.factory import (
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    ClientTokens,
    ServerFactory,
)
from ethtwisted.server.feed import WebhookFeed, hook_id
from ethtwisted.server.fleet import FleetService
from ethtwisted.server.ingest import Ingest
from ethtwisted.server.upkeep import (
    DEFAULT_KEEP_SIGHTINGS,
    DEFAULT_SUMMARY_INTERVAL,
    PRUNE_INTERVAL,
    SightingPruner,
    Summary,
)
from ethtwisted.server.webhooks import (
    WebhookService,
    WebhookURL,
    parse_webhook_url,
)
from ethtwisted.states import (
    DEFAULT_BEHIND_BLOCKS,
    DEFAULT_BEHIND_SECONDS,
    DEFAULT_FORK_SECONDS,
    DEFAULT_SILENT_SECONDS,
    DEFAULT_STALL_SECONDS,
    Thresholds,
)
from ethtwisted.storage.redis_store import RedisCounters
from ethtwisted.storage.sql_store import SQLStore

DEFAULT_LISTEN = "tcp:9999:interface=127.0.0.1"
LISTEN_BACKLOG = 1024

log = Logger()


def with_backlog(description: str) -> str:
    """
    C{description} with an explicit listen backlog for TCP endpoints: Twisted's default of 50
    makes the kernel drop connections from a burst of one-shot clients.
    """
    kind, _, kwargs = listening_endpoint(description)
    if kind in TCP_KINDS and "backlog" not in kwargs:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


class Options(StoreOptions):
    command = "eth-server"
    synopsis = "[options]"
    longdesc = (
        "Collect blocks from eth-clients: each distinct payload is stored once in SQL, counted "
        "in Redis, and acknowledged to its sender once committed. Every option can also be "
        "given as an ETH_* environment variable (--max-queue is ETH_MAX_QUEUE); a flag beats "
        "the environment."
    )
    optParameters = [
        ["max-message-bytes", None, DEFAULT_MAX_MESSAGE_BYTES,
         "Largest message accepted; a larger one costs its sender the connection.", positive_int],
        ["idle-timeout", None, 60.0,
         "Drop a connection silent this many seconds (not after its client said hello).",
         positive_float],
        ["tokens-file", None, None,
         "File of client tokens, one a line, each optionally followed by a space and the client"
         " name it binds: clients must present one in their hello, and may use only a name"
         " their token binds (or, a token alone, any name no token binds)."],
        ["hello-timeout", None, DEFAULT_HELLO_TIMEOUT,
         "With --tokens-file: drop a connection that has not said hello this many seconds"
         " after it opened.", positive_float],
        ["max-connections", None, DEFAULT_MAX_CONNECTIONS,
         "Most client connections open at a time; one more is closed at once.", positive_int],
        ["max-buffered-bytes", None, DEFAULT_MAX_BUFFERED_BYTES,
         "Most bytes all connections may hold together (partial messages, unread acks);"
         " past it the connection holding the most is dropped.", positive_int],
        ["keep-sightings", None, DEFAULT_KEEP_SIGHTINGS,
         "Days to keep each client's sightings of blocks; older ones are pruned.", positive_int],
        ["keep-blocks", None, None,
         "Days to keep the payloads no gap proof needs (orphaned blocks, payloads of no chain);"
         " forever if not given.", positive_int],
        ["summary-interval", None, DEFAULT_SUMMARY_INTERVAL,
         "Log one summary line (blocks stored, clients connected, heads, clients not current)"
         " every this many seconds.", positive_float],
        ["behind-blocks", None, DEFAULT_BEHIND_BLOCKS,
         "A client whose head is more than this many blocks behind the best head of its chain"
         " for --behind-seconds is behind.", non_negative_int],
        ["behind-seconds", None, DEFAULT_BEHIND_SECONDS,
         "See --behind-blocks.", positive_float],
        ["stall-seconds", None, DEFAULT_STALL_SECONDS,
         "A client with no new head for this many seconds while its chain went on is"
         " stalled.", positive_float],
        ["silent-seconds", None, DEFAULT_SILENT_SECONDS,
         "A client not heard from for this many seconds (or with no connection) is silent.",
         positive_float],
        ["fork-seconds", None, DEFAULT_FORK_SECONDS,
         "A client that has reported, at some height, a block other than the one most of the"
         " fleet has there for this many seconds is on a fork.", positive_float],
        ["stats", None, None,
         "Serve the stats API, /metrics and the dashboard on this endpoint, e.g."
         " tcp:8080:interface=127.0.0.1 (a bare port means loopback; off if unset)."],
        *STATS_TOKEN_OPTIONS,
        ["webhook-file", None, None,
         "File of webhook URLs, one a line (for URLs that hold secrets), besides --webhook."],
        ["webhook-secret-file", None, None,
         "File holding the secret that signs each webhook body (X-Ethtwisted-Signature:"
         " sha256=HMAC-SHA256 of the body)."],
        # The older command line's listening flags.
        ["host", None, None, "Interface to listen on (same as --listen tcp:PORT:interface=HOST)."],
        ["port", None, None, "TCP port to listen on (default 9999).", positive_int],
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["webhook"] = []

    def opt_listen(self, description: str) -> None:
        """
        Endpoint to listen on, e.g. tcp:9999:interface=127.0.0.1 (repeatable; default that).
        """
        self["listen"].append(description)

    def opt_webhook(self, url: str) -> None:
        """
        URL to POST each client state event to as JSON (repeatable; http or https).
        """
        self["webhook"].append(url)

    def postOptions(self) -> None:
        super().postOptions()
        if self["host"] is not None or self["port"] is not None:
            if self["listen"]:
                raise usage.UsageError("give either --listen or --host/--port, not both")
            host = self["host"] or "localhost"
            self["listen"] = [f"tcp:{self['port'] or 9999}:interface={host}"]
        self["listen"] = [with_backlog(d) for d in self["listen"] or [DEFAULT_LISTEN]]
        for description in self["listen"]:
            check_endpoint(description, "listen", server=True)
        if self["max-buffered-bytes"] < self["max-message-bytes"]:
            raise usage.UsageError("--max-buffered-bytes must be at least --max-message-bytes")
        self["tokens"] = None
        if self["tokens-file"]:
            try:
                lines = read_lines(self["tokens-file"], "tokens-file")
                self["tokens"] = ClientTokens.parse(lines)
            except ValueError as e:
                raise usage.UsageError(f"--tokens-file: {e}") from None
        if self["stats"]:
            self["stats"] = web_endpoint(self["stats"], "stats")
        self["stats_token"] = read_token(self, "stats-token")
        self["webhooks"] = webhook_urls(self)
        self["thresholds"] = Thresholds(
            behind_blocks=self["behind-blocks"],
            behind_seconds=self["behind-seconds"],
            stall_seconds=self["stall-seconds"],
            silent_seconds=self["silent-seconds"],
            fork_seconds=self["fork-seconds"],
        )


def webhook_urls(config: Options) -> list[WebhookURL]:
    """
    The URLs of --webhook and --webhook-file, parsed; an error names the option and the
    position of the URL, never the URL.
    """
    given = [("webhook", n, url) for n, url in enumerate(config["webhook"], 1)]
    if config["webhook-file"]:
        lines = read_lines(config["webhook-file"], "webhook-file")
        given += [("webhook-file", n, url) for n, url in enumerate(lines, 1)]
    urls = []
    for option, n, url in given:
        try:
            urls.append(parse_webhook_url(url))
        except ValueError as e:
            raise usage.UsageError(f"--{option}: URL {n}: {e}") from None
    if config["webhook-secret-file"] and not urls:
        raise usage.UsageError("--webhook-secret-file needs a --webhook or --webhook-file")
    return urls


def makeService(config: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    set_verbose(config["verbose"])
    store = SQLStore(config["db_url"], reactor)
    counters = None
    if config["redis_url"] is not None:
        counters = RedisCounters(config["redis_url"], reactor, config["redis-prefix"])
    ingest = Ingest(store, counters, reactor)
    factory = ServerFactory(
        ingest,
        reactor,
        max_message_bytes=min(config["max-message-bytes"], store.max_payload_bytes),
        idle_timeout=config["idle-timeout"],
        tokens=config["tokens"],
        hello_timeout=config["hello-timeout"],
        max_connections=config["max-connections"],
        max_buffered_bytes=config["max-buffered-bytes"],
        # A client that sends nothing else is still heard, by its pongs, before it is silent.
        ping_interval=min(PING_INTERVAL, config["silent-seconds"] / 3),
    )
    endpoints = [(d, serverFromString(reactor, d)) for d in config["listen"]]
    service = MultiService()
    collector = CollectorService(
        reactor, factory, endpoints, str(config["db_url"]), config["wait"]
    )
    collector.setName("collector")
    collector.setServiceParent(service)

    def ready() -> bool:
        return collector.ready.called

    sinks = []
    if config["webhooks"]:
        hooks = webhooks(config, reactor)
        hooks.setServiceParent(service)
        # Added after the webhooks, so stopped before them: it hands on what they settled.
        feed = WebhookFeed(reactor, store.deliveries, hooks, hook_id(config["webhooks"]), ready)
        feed.setName("webhook-feed")
        feed.setServiceParent(service)
        sinks.append(feed)

    fleet = FleetService(reactor, store.fleet, factory, config["thresholds"], sinks, ready)
    fleet.setName("fleet")
    fleet.setServiceParent(service)

    # Both wait for the collector to have its stores.
    pruner = SightingPruner(
        store.ledger, reactor, config["keep-sightings"], ready, config["keep-blocks"]
    )
    summary = Summary(store, store.fleet, lambda: len(factory.connections), ready)
    ingest.commit_listeners.append(summary.committed)
    for name, step, run in [
        ("prune-sightings", PRUNE_INTERVAL, pruner.run),
        ("summary", config["summary-interval"], summary.run),
    ]:
        timer = TimerService(step, run)
        timer.clock = reactor
        timer.setName(name)
        timer.setServiceParent(service)
    if config["stats"]:
        stats = stats_service(config, reactor, store, counters, ingest, factory, fleet)
        stats.setServiceParent(service)
    return service


def webhooks(config: Options, reactor: Any) -> WebhookService:
    """
    The webhooks of the options, each event signed when a secret file is given.
    """
    secret = None
    if config["webhook-secret-file"]:
        secret = read_lines(config["webhook-secret-file"], "webhook-secret-file")[0].encode()
    return WebhookService(reactor, config["webhooks"], secret)


def stats_service(
    config: Options,
    reactor: Any,
    store: SQLStore,
    redis: RedisCounters | None,
    ingest: Ingest,
    factory: ServerFactory,
    fleet: FleetService,
) -> IService:
    """
    The stats API beside the collector, with the collector's own counters in its metrics.
    """
    from prometheus_client import CollectorRegistry

    from ethtwisted.metrics.server import ServerMetrics
    from ethtwisted.web.reads import Reads
    from ethtwisted.web.site import serve_stats

    registry = CollectorRegistry()
    metrics = ServerMetrics(
        registry, reactor, lambda: len(factory.connections), lambda: ingest.unsettled
    )
    factory.observers.append(metrics)
    ingest.commit_listeners.append(metrics.committed)
    ingest.conflict_listeners.append(metrics.conflict)
    fleet.decision_listeners.append(metrics.decided)
    reads = Reads(
        reactor, store, store, redis, lambda: ingest.trouble.reason, registry, store.fleet
    )
    service = serve_stats(reactor, reads, config["stats"], config["stats_token"])
    service.setName("stats")
    return service
