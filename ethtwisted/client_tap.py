"""
C{twistd eth-client}: options and service.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from twisted.application.internet import backoffPolicy
from twisted.application.service import IService, Service
from twisted.internet.endpoints import clientFromString, quoteStringArgument
from twisted.python import usage

from ethtwisted.client import EthClient
from ethtwisted.client.delivery import Delivery, ReconnectingService
from ethtwisted.client.failover import DEFAULT_ACK_TIMEOUT, ServerList
from ethtwisted.client.follower import DEFAULT_MAX_BACKFILL, Follower
from ethtwisted.client.oneshot import OneShotDelivery
from ethtwisted.client.outbox import DEFAULT_MAX_QUEUE, Outbox, queue_blocks
from ethtwisted.client.poller import DEFAULT_INTERVAL, MIN_INTERVAL, Poller
from ethtwisted.client.spool import Spool, SpoolError
from ethtwisted.client.status import DEFAULT_STATUS_INTERVAL, StatusPoller
from ethtwisted.client.subscriber import SUBSCRIBE_MODES, Subscriber
from ethtwisted.frames import FEATURES, Hello, name_problem
from ethtwisted.logs import set_verbose
from ethtwisted.node import default_node_uris, open_node, parse_node_uri
from ethtwisted.node.interfaces import INodeRequests
from ethtwisted.options import (
    EnvOptions,
    check_endpoint,
    port_number,
    positive_float,
    positive_int,
    read_lines,
    read_token,
    token_options,
    web_endpoint,
)
from ethtwisted.protocol import PAYLOAD_FORMATS, PayloadFormat

if TYPE_CHECKING:
    from ethtwisted.metrics.client import ClientMetrics

DEFAULT_SERVER = "tcp:host=127.0.0.1:port=9999"
RECONNECT_INITIAL = 0.25
RECONNECT_MAX = 10.0
"""Seconds between attempts to reach the server: doubling from the first to the last, each
with up to a second of random jitter."""


def interval(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"expected a number of seconds, not {value!r}") from None
    if not seconds >= MIN_INTERVAL:
        raise ValueError(f"must be at least {MIN_INTERVAL:g} s, not {value}")
    return seconds


def payload_format(value: str) -> PayloadFormat:
    for known in PAYLOAD_FORMATS:
        if value == known:
            return known
    raise ValueError(f"must be one of {', '.join(PAYLOAD_FORMATS)}, not {value!r}")


def subscribe_mode(value: str) -> str:
    if value not in SUBSCRIBE_MODES:
        raise ValueError(f"must be one of {', '.join(SUBSCRIBE_MODES)}, not {value!r}")
    return value


def asyncio_reactor_installed() -> bool | None:
    """
    Whether the installed reactor is Twisted's asyncio reactor; L{None} if none is installed.
    """
    if "twisted.internet.reactor" not in sys.modules:
        return None
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return isinstance(reactor, AsyncioSelectorReactor)


def reactor_error() -> str:
    from twisted.internet import reactor

    return (
        "web3 needs the asyncio reactor, not "
        f"{type(reactor).__name__}: leave out --reactor or give --reactor=asyncio"
    )


class Options(EnvOptions):
    command = "eth-client"
    synopsis = "[options]"
    longdesc = (
        "Follow an Ethereum node and send every block to an eth-server, keeping each message "
        "until a server acknowledges it. Every option can also be given as an ETH_* "
        "environment variable (--max-queue is ETH_MAX_QUEUE; ETH_NODE and ETH_SERVER hold "
        "several separated by spaces); a flag beats the environment."
    )
    optParameters = [
        ["interval", "i", DEFAULT_INTERVAL,
         f"Seconds between two polls of the node (at least {MIN_INTERVAL:g}).", interval],
        ["subscribe", None, "auto",
         "auto: subscribe to the node's new heads where it can push them (IPC, WebSocket), "
         "with the polls as watchdog and fallback; off: only poll.", subscribe_mode],
        ["format", "f", "json",
         "Payload format: json (the canonical block message) or html (the older page).",
         payload_format],
        ["max-backfill", None, DEFAULT_MAX_BACKFILL,
         "Most blocks fetched to fill a jump of the head or follow a reorg.", positive_int],
        ["max-queue", None, DEFAULT_MAX_QUEUE,
         "Most unacknowledged messages kept; past it the oldest are dropped.", positive_int],
        ["spool", None, None,
         "Directory keeping unacknowledged messages and the last block across restarts."],
        ["name", None, None, "This client's name, sent to the server (default: the host name)."],
        ["metrics", None, None,
         "Serve /metrics and /healthz on this endpoint, e.g. tcp:9100:interface=127.0.0.1"
         " (a bare port means loopback; off if unset)."],
        *token_options("metrics-token", "/metrics"),
        ["token-file", None, None, "File holding the token sent to the server with the name."],
        ["status-interval", None, DEFAULT_STATUS_INTERVAL,
         "Seconds between two reads of the node's status (version, peers, sync, gas, safe and"
         " finalized blocks, pool), sent to a server that takes it; read on a new head too,"
         " at most once per --interval.", positive_float],
        ["ack-timeout", None, DEFAULT_ACK_TIMEOUT,
         "With several --server: seconds a server may leave what it was sent unacknowledged"
         " before the client fails over to the next.", positive_float],
        # The older command line's server flags.
        ["host", None, None, "The server's host (same as --server tcp:host=HOST:port=PORT)."],
        ["port", None, None, "The server's TCP port (default 9999).", port_number],
    ]  # fmt: skip
    optFlags = [
        ["oneshot", None,
         "For older servers: a new connection per message, no hello, no acknowledgement."],
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self["node"] = []
        self["server"] = []

    def opt_server(self, description: str) -> None:
        """
        Endpoint of an eth-server (tls:HOST:PORT for TLS; repeatable: the first that accepts
        this client is used, the next when it fails or stops acknowledging, and the first
        again once it acknowledges; default tcp:host=127.0.0.1:port=9999).
        """
        self["server"].append(description)

    opt_s = opt_server

    def opt_node(self, uri: str) -> None:
        """
        Node to follow: a path or ipc:// URL, ws:// or wss://, http:// or https:// (repeatable:
        the first that answers is used; default: the usual geth IPC paths, then
        http://127.0.0.1:8545).
        """
        self["node"].append(uri)

    def postOptions(self) -> None:
        if asyncio_reactor_installed() is False:
            raise usage.UsageError(reactor_error())
        for uri in self["node"]:
            try:
                parse_node_uri(uri)
            except ValueError as e:
                raise usage.UsageError(f"--node: {e}") from None
        if self["host"] is not None or self["port"] is not None:
            if self["server"]:
                raise usage.UsageError("give either --server or --host/--port, not both")
            host = quoteStringArgument(self["host"] or "127.0.0.1")
            self["server"] = [f"tcp:host={host}:port={self['port'] or 9999}"]
        if not self["server"]:
            self["server"] = [DEFAULT_SERVER]
        for description in self["server"]:
            check_endpoint(description, "server", server=False)
        if len(set(self["server"])) < len(self["server"]):
            raise usage.UsageError("--server: each server may be listed once")
        if self["name"] is None:
            self["name"] = socket.gethostname() or "eth-client"
        problem = name_problem(self["name"])
        if problem is not None:
            # The server's own rule: a name it would refuse stops the client here.
            raise usage.UsageError(f"--name {problem}")
        self["token"] = None
        if self["token-file"] is not None:
            if self["oneshot"]:
                raise usage.UsageError(
                    "--token-file needs a server that acknowledges: --oneshot sends no hello"
                )
            tokens = read_lines(self["token-file"], "token-file")
            if len(tokens) > 1:
                raise usage.UsageError(
                    f"--token-file: {self['token-file']} holds more than one token"
                )
            self["token"] = tokens[0]
        if self["metrics"]:
            self["metrics"] = web_endpoint(self["metrics"], "metrics")
        self["metrics_token"] = read_token(self, "metrics-token")


def makeService(config: Options, reactor: Any = None) -> IService:
    if reactor is None:
        installed = asyncio_reactor_installed()
        if installed is None:
            from twisted.internet import asyncioreactor

            asyncioreactor.install()
        elif not installed:
            raise usage.UsageError(reactor_error())
        from twisted.internet import reactor
    set_verbose(config["verbose"])
    try:
        spool = Spool(config["spool"], reactor) if config["spool"] else None
    except SpoolError as e:
        raise SystemExit(f"{config.command}: --spool: {e}") from None
    outbox = Outbox(config["max-queue"], spool)
    checkpoint = outbox.restore()
    node = open_node(config["node"] or default_node_uris(os.environ), reactor)
    metrics = None
    if config["metrics"]:
        from prometheus_client import CollectorRegistry

        from ethtwisted.metrics.client import ClientMetrics

        registry = CollectorRegistry()
        directory = outbox.spool.directory if outbox.spool else None
        metrics = ClientMetrics(registry, reactor, lambda: len(outbox), directory)
        node = metrics.measured(node)
    follower = Follower(
        node,
        queue_blocks(outbox, config["format"]),
        config["max-backfill"],
        checkpoint,
        clock=reactor,
    )
    subscriber = Subscriber(follower, reactor) if config["subscribe"] == "auto" else None
    poller = Poller(follower, reactor, config["interval"], subscriber=subscriber)
    requests = INodeRequests(node, None)
    status = None
    if requests is not None:
        from ethtwisted.node.status import StatusReader

        status = StatusReader(requests, reactor)
    servers = [(d, clientFromString(reactor, d)) for d in config["server"]]
    retry = backoffPolicy(RECONNECT_INITIAL, RECONNECT_MAX, factor=2.0)
    oneshot = connection = None
    if config["oneshot"]:
        oneshot = OneShotDelivery(outbox, servers, reactor, retry)
        service: Service = oneshot
    else:
        server_list = ServerList(servers)
        hello = Hello(config["name"], config["token"], FEATURES)
        connection = Delivery(outbox, server_list, reactor, hello, config["ack-timeout"])
        service = ReconnectingService(
            server_list, connection.factory(), retryPolicy=retry, clock=reactor
        )
    poll_status = None
    if status is not None:
        poll_status = StatusPoller(
            status, connection, reactor, config["status-interval"], head_gap=config["interval"]
        )
    wire(
        outbox=outbox,
        follower=follower,
        subscriber=subscriber,
        delivery=connection,
        oneshot=oneshot,
        status=poll_status,
        metrics=metrics,
    )
    client = EthClient(poller, service, connection, outbox, node, reactor, status=poll_status)
    if metrics is not None:
        from ethtwisted.web.site import serve_agent

        web = serve_agent(reactor, registry, metrics.health, config["metrics"],
                          config["metrics_token"])  # fmt: skip
        web.setName("metrics")
        web.setServiceParent(client)
    return client


def wire(
    *,
    outbox: Outbox | None = None,
    follower: Follower | None = None,
    subscriber: Subscriber | None = None,
    delivery: Delivery | None = None,
    oneshot: OneShotDelivery | None = None,
    status: StatusPoller | None = None,
    metrics: ClientMetrics | None = None,
) -> None:
    """
    Connect the given parts of an eth-client (a delivery or a one-shot delivery, not both; a
    part in one call only): each is told here of the events of the others that it follows.
    This is the one place where parts are connected: no constructor registers itself with a
    part it is given.  A list's listeners are called in the order they are added here (the
    metrics hear of an acknowledgement before the delivery, the status poller of a new head
    before the metrics).
    """
    if outbox is not None:
        if metrics is not None:
            outbox.ack_listeners.append(metrics.acknowledged)
        if oneshot is not None:
            outbox.queue_listeners.append(oneshot.queued)
        if delivery is not None:
            outbox.queue_listeners.append(delivery.queued)
            outbox.ack_listeners.append(delivery.remember_acked)
    if delivery is not None:
        if delivery.prober is not None:
            delivery.servers.failure_listeners.append(delivery.prober.start)
            delivery.servers.answer_listeners.append(delivery.server_answered)
        if status is not None:
            delivery.welcome_listeners.append(status.welcomed)
    if follower is not None and status is not None:
        follower.sighting_listeners.append(status.changed)
    if metrics is None:
        return
    if follower is not None:
        follower.reorg_listeners.append(metrics.reorg)
        follower.sighting_listeners.append(lambda sighting: metrics.sighting(sighting.source))
    if delivery is not None:
        # What the delivery does with its connection and its servers tells how the server is
        # reached; a one-shot delivery has no connection to watch.
        delivery.connection_listeners.append(lambda up: metrics.connection(up, delivery.in_use))
        delivery.switch_listeners.append(metrics.switched)
        metrics.watch_server([name for name, _ in delivery.servers.servers],
                             lambda: delivery.refusal)  # fmt: skip
    elif oneshot is not None:
        metrics.watch_server(None)
    if subscriber is not None:
        subscriber.miss_listeners.append(metrics.subscription_missed)
        subscriber.resubscribe_listeners.append(metrics.resubscribed)
        subscriber.lag_listeners.append(metrics.subscription_late)
        metrics.watch_subscription(lambda: subscriber.active)
    if status is not None:
        status.status_listeners.append(metrics.node_status)
