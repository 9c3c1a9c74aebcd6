"""What several test modules share: one wait, one acking peer, one in-process eth-server, logs.

- ``wait_for(condition, timeout)``: for what no event announces (a file's contents, rows
  another process writes, a page in a browser), check ``condition`` on the reactor's clock,
  bounded in count and time. Where an event exists, wait for a Deferred it fires instead:
  ``Peer.send``, ``Peer.lost``, ``Committed.wait_for``.
- ``Peer``: a client that says hello (when named), sends netstrings with at most ``window``
  unacknowledged, and collects the acks; ``connect_peer`` connects one over TCP.
- ``start_server(args)``: ``eth-server`` built by its own ``makeService`` in this process,
  listening on free loopback ports, once it serves; ``Server.committed`` sees every commit.
- ``closing(node)``: ``async with closing(node) as node:`` closes the node when the block
  ends, however it ends.
- ``Logs``: what a test logged (the ``logs`` fixture of conftest.py), by level and text.
- ``options(*args, **environ)``: eth-client's options parsed; ``usage_error`` the message
  of options it refuses.

The reactor is the one pytest-twisted runs, imported when first needed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol as TypingProtocol
from typing import TypeVar, cast

import pytest
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure

from ethtwisted import client_tap
from ethtwisted.client.delivery import Delivery
from ethtwisted.client_tap import wire
from ethtwisted.frames import Ack, ControlFrame, Hello, Refusal
from ethtwisted.framing import FrameProtocol
from ethtwisted.protocol import Block, payload_hash
from ethtwisted.records import Received
from ethtwisted.server.collector import CollectorService
from ethtwisted.server_tap import Options, makeService
from ethtwisted.web.site import WebService

TIMEOUT = 30.0  # seconds for anything a test waits for
LISTEN = "tcp:0:interface=127.0.0.1"
# For @pytest.mark.expected_log_errors: adbapi's own log.failure when the MySQL connection it
# rolls back is gone, as when a test kills or stops MariaDB under a pool.
ROLLBACK_FAILED = r"^Rollback failed\b"


def the_reactor() -> IReactorTime:
    """The global reactor (pytest-twisted's), imported only once a test runs."""
    from twisted.internet import reactor

    return cast(IReactorTime, reactor)


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = TIMEOUT,
    interval: float = 0.01,
    what: str | Callable[[], str] = "condition",
) -> None:
    """
    Return once C{condition()} (a function, or an async one) holds; fail after C{timeout}
    seconds of the reactor's clock, saying C{what} (or what C{what()} returns: a log file).
    The reactor runs meanwhile: C{condition} is checked every C{interval} seconds, and an
    exception it raises (a process that died) ends the wait.
    """
    clock = the_reactor()
    deadline = clock.seconds() + timeout
    for _ in range(math.ceil(timeout / interval) + 1):
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return
        if clock.seconds() >= deadline:
            break
        await deferLater(clock, interval)
    raise AssertionError(
        f"not met within {timeout:g} s: {what if isinstance(what, str) else what()}"
    )


class Peer(FrameProtocol):
    """
    A client for tests: says hello when named, sends payloads with at most C{window} of them
    unacknowledged, and collects the acks in order of arrival (and the refusals).
    """

    def __init__(self, name: str | None = None, window: int = 50) -> None:
        super().__init__()
        self.name = name
        self.window = window
        self.queue: list[bytes] = []
        self.unacked: dict[str, bytes] = {}
        self.acked: list[str] = []
        self.refusals: list[Refusal] = []
        self.on_ack: Callable[[str], None] | None = None
        self.waiting: list[tuple[int, Deferred[None]]] = []
        self.lost: Deferred[None] = Deferred()
        self.expected = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.name is not None:
            self.send_control(Hello(self.name))

    def send(self, payloads: Sequence[bytes], timeout: float = TIMEOUT) -> Deferred[None]:
        """
        Send C{payloads}; the Deferred fires once as many acks arrived as were sent, or fails
        with a timeout after C{timeout} seconds.
        """
        self.queue.extend(payloads)
        self.expected += len(payloads)
        done: Deferred[None] = Deferred()
        self.waiting.append((self.expected, done))
        self._fill()
        return done.addTimeout(timeout, the_reactor())

    def _fill(self) -> None:
        while self.queue and len(self.unacked) < self.window:
            payload = self.queue.pop(0)
            self.unacked[payload_hash(payload)] = payload
            self.sendString(payload)

    def controlReceived(self, frame: ControlFrame) -> None:
        if isinstance(frame, Refusal):
            self.refusals.append(frame)
            return
        assert isinstance(frame, Ack), frame
        self.unacked.pop(frame.sha256, None)
        self.acked.append(frame.sha256)
        if self.on_ack is not None:
            self.on_ack(frame.sha256)
        self._fill()
        while self.waiting and len(self.acked) >= self.waiting[0][0]:
            self.waiting.pop(0)[1].callback(None)

    def close(self) -> None:
        """Close the connection (once the written data is sent)."""
        assert self.transport is not None, "not connected"
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


P = TypeVar("P", bound=Protocol)


def connect(port: int, protocol: P) -> Deferred[P]:
    """Fires with C{protocol} once connected to C{port} of 127.0.0.1."""
    reactor = cast(IReactorTCP, the_reactor())
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    return connectProtocol(endpoint, protocol)


def connect_peer(port: int, name: str | None = None, window: int = 50) -> Deferred[Peer]:
    """Fires with a new L{Peer} once connected to C{port} of 127.0.0.1."""
    return connect(port, Peer(name, window))


class Committed:
    """
    The blocks a server reports committed to SQL (through its ingest's commit listeners), and
    Deferreds that fire once given hashes are among them.
    """

    def __init__(self) -> None:
        self.hashes: set[str] = set()
        self.new: list[int] = []
        """How many payloads each commit stored for the first time."""
        self._waiting: list[tuple[set[str], Deferred[None]]] = []

    def __call__(self, batch: Sequence[Received], new: int) -> None:
        self.new.append(new)
        for received in batch:
            if isinstance(received.block, Block):
                self.hashes.add(received.block.hash)
        waiting, self._waiting = self._waiting, []
        for wanted, d in waiting:
            if wanted <= self.hashes:
                # Not from inside the server's ingest: the test goes on in a turn of its own.
                the_reactor().callLater(0, d.callback, None)
            else:
                self._waiting.append((wanted, d))

    def wait_for(self, hashes: Iterable[str], timeout: float = TIMEOUT) -> Deferred[None]:
        """Fires once every one of C{hashes} is committed; fails after C{timeout} seconds."""
        wanted = set(hashes)
        d: Deferred[None] = Deferred()
        if wanted <= self.hashes:
            d.callback(None)
            return d
        self._waiting.append((wanted, d))

        def missing(failure: Failure) -> None:
            absent = sorted(wanted - self.hashes)
            raise AssertionError(f"{len(absent)} blocks not committed in time: {absent[:3]}...")

        return d.addTimeout(timeout, the_reactor()).addErrback(missing)


@dataclass
class Server:
    """An eth-server running in this process."""

    args: Sequence[str]
    environ: Mapping[str, str]
    service: MultiService
    collector: CollectorService
    stats: WebService | None
    committed: Committed
    port: int  # the collector's, on 127.0.0.1

    @property
    def client_endpoint(self) -> str:
        """What a client's C{--server} says to reach this server."""
        return f"tcp:host=127.0.0.1:port={self.port}"

    @property
    def stats_url(self) -> str:
        """C{http://127.0.0.1:port} of the stats API (C{--stats} given)."""
        assert self.stats is not None, "started without --stats"
        address = self.stats.ports[0].getHost()
        assert isinstance(address, IPv4Address)
        return f"http://127.0.0.1:{address.port}"

    async def stop(self) -> None:
        """
        Stop as the process would: the service, then the connections (which exiting closes).
        """
        await self.service.stopService()
        for protocol in list(self.collector.factory.connections):
            if protocol.transport is not None:
                protocol.transport.abortConnection()

    def restart(self) -> Deferred[Server]:
        """
        Fires with a new server, started as this one was, on the same port, reporting its
        commits to the same L{Committed} (stop this one first).
        """
        assert "--listen" not in self.args, "restart() keeps the port: start without --listen"
        args = [*self.args, "--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        return Deferred.fromCoroutine(start_server(args, self.environ, self.committed))


async def start_server(
    args: Sequence[str],
    environ: Mapping[str, str] | None = None,
    committed: Committed | None = None,
    timeout: float = TIMEOUT,
) -> Server:
    """
    C{eth-server} with the command-line C{args} (and C{environ} as its environment), listening
    on a free port of 127.0.0.1 unless C{args} say C{--listen}; returns once it serves. Its
    commits are reported to C{committed} (a new L{Committed} by default).
    """
    options = Options()
    options.environ = dict(environ or {})
    listens = any(arg == "--listen" or arg.startswith("--listen=") for arg in args)
    options.parseOptions([*args] if listens else ["--listen", LISTEN, *args])
    service = makeService(options, the_reactor())
    assert isinstance(service, MultiService)
    service.startService()
    collector = service.getServiceNamed("collector")
    assert isinstance(collector, CollectorService)
    await collector.ready.addTimeout(timeout, the_reactor())
    stats: WebService | None = None
    if options["stats"]:
        stats = service.getServiceNamed("stats")
        assert isinstance(stats, WebService)
        await stats.ready.addTimeout(timeout, the_reactor())
    address = collector.ports[0].getHost()
    assert isinstance(address, IPv4Address)
    server = Server(
        list(args),
        dict(environ or {}),
        service,
        collector,
        stats,
        committed or Committed(),
        address.port,
    )
    collector.factory.ingest.commit_listeners.append(server.committed)
    return server


def wired(delivery: Delivery) -> Delivery:
    """
    C{delivery}, told of its outbox's and its servers' events as eth-client tells it
    (L{ethtwisted.client_tap.wire}).
    """
    wire(outbox=delivery.outbox, delivery=delivery)
    return delivery


class Logs:
    """
    What was logged during a test (errors it did not expect fail it: see conftest.py).
    """

    def __init__(self, events: Sequence[LogEvent]) -> None:
        self.events = events

    def texts(self, level: LogLevel | None = None) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace", "").startswith("ethtwisted")
            and (level is None or e.get("log_level") == level)
        ]

    def containing(self, text: str, level: LogLevel | None = None) -> list[str]:
        return [t for t in self.texts(level) if text in t]


def options(*args: str, **environ: str) -> client_tap.Options:
    config = client_tap.Options()
    config.environ = dict(environ)
    config.parseOptions(list(args))
    return config


def usage_error(*args: str, **environ: str) -> str:
    with pytest.raises(SystemExit) as raised:
        options(*args, **environ)
    return str(raised.value)


class Closable(TypingProtocol):
    def close(self) -> Awaitable[object]: ...


C = TypeVar("C", bound=Closable)


@asynccontextmanager
async def closing(node: C) -> AsyncIterator[C]:
    """C{node} for the block, closed (and waited for) when the block ends, however it ends."""
    try:
        yield node
    finally:
        await node.close()
