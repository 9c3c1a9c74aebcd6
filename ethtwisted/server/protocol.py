"""
One connection of an eth-server (L{ServerProtocol}): frames in, each payload handed to the
shared L{Ingest}, acknowledgements out; and when reading from it pauses and why.  What it needs
of the factory that builds it is said here (L{ConnectionFactory}, L{ConnectionObserver}), so
that L{ethtwisted.server.factory} imports this module and not the other way round.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from ethtwisted.frames import (
    Ack,
    ControlFrame,
    Hello,
    Ping,
    Pong,
    Refusal,
    Sighting,
    Status,
    Welcome,
)
from ethtwisted.framing import FrameProtocol
from ethtwisted.logs import Logger
from ethtwisted.protocol import ProtocolError, check_payload, parse_block, payload_hash
from ethtwisted.records import Received, StatusReport
from ethtwisted.server.clock import FIRST_PING_INTERVAL, FIRST_PINGS, ClockOffset
from ethtwisted.server.ingest import Ingest
from ethtwisted.storage import RejectedError

log = Logger(namespace="ethtwisted.server")

MAX_UNREAD_ACK_BYTES = 256 * 1024
"""Acks a peer may leave unread beyond its transport's write buffer before it is dropped."""
MAX_IN_FLIGHT = 1000
"""Messages of one connection received and not yet acknowledged, past which no more of its
frames are taken (nor read) until acknowledgements go out: one flooding peer cannot fill the
ingest and so pause every other reader.  A group commit's worth, so a busy peer keeps a whole
group in each transaction."""
SERVER_FEATURES = ("status", "sighting", "ping")
"""What this server understands beyond hello and ack; a welcome lists those the client's hello
listed too."""
MAX_PENDING_SIGHTINGS = 16
"""Sightings awaiting their payload on one connection; one more forgets the oldest."""
CLOCK_WAIT = 1.0
"""How long a connection's payloads wait for the first pong (so that their sightings are
corrected for the client's clock) before they go on with the clock taken as right."""


class ConnectionObserver(Protocol):
    """
    Told what happens on the connections of a factory (metrics).
    """

    def received(self, received: Received) -> None:
        """A payload arrived."""

    def acknowledged(self, sha256: str) -> None:
        """An acknowledgement was sent."""

    def dropped(self, kind: str) -> None:
        """A connection is being dropped; C{kind} as in L{FrameProtocol.drop}."""


class ConnectionFactory(Protocol):
    """
    What a L{ServerProtocol} needs of the factory that builds it: the settings every
    connection shares, the ingest, the observers, and the bookkeeping of the connections
    together (L{ethtwisted.server.factory.ServerFactory} says what each does).
    """

    @property
    def reactor(self) -> IReactorTime: ...
    @property
    def ingest(self) -> Ingest: ...
    @property
    def observers(self) -> Sequence[ConnectionObserver]: ...
    @property
    def max_message_bytes(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def tokens_required(self) -> bool: ...
    @property
    def hello_timeout(self) -> float: ...
    @property
    def max_in_flight(self) -> int: ...
    @property
    def ping_interval(self) -> float: ...

    def admit(self, connection: ServerProtocol) -> bool:
        """Whether C{connection}, just made, may stay."""

    def claim(self, connection: ServerProtocol, hello: Hello) -> tuple[str, bool] | None:
        """Let C{connection} be the client C{hello} names, or say why not."""

    def gone(self, connection: ServerProtocol) -> None:
        """C{connection} has ended."""

    def account(self, connection: ServerProtocol) -> None:
        """Count the bytes C{connection} holds now."""


@implementer(IPushProducer)
class _ForTheStores:
    """
    What L{Ingest} pauses and resumes: reading from one connection, for the stores' sake.
    """

    def __init__(self, connection: ServerProtocol) -> None:
        self.connection = connection

    def pauseProducing(self) -> None:
        self.connection.pause_reading("stores")

    def resumeProducing(self) -> None:
        self.connection.resume_reading("stores")

    def stopProducing(self) -> None:
        """Ingest never stops a connection; the connection ends by itself."""


@implementer(IPushProducer)
class ServerProtocol(FrameProtocol, TimeoutMixin):
    """
    One client connection: payloads in, acknowledgements out.

    Reading stops while the stores are behind (L{Ingest} pauses every connection), while
    this peer has C{max_in_flight} messages not yet acknowledged (only this connection: not
    one frame more is taken, even of a read under way, until acks go out), and while this peer
    leaves its acknowledgements unread (the transport, whose producer this is, pauses it once
    its write buffer is full); it resumes once none of these holds.  A peer that leaves more
    than C{MAX_UNREAD_ACK_BYTES} of acknowledgements unread beyond that buffer, or reads none
    for the idle timeout, is dropped.
    """

    factory: ConnectionFactory
    transport: Any
    """A TCP or TLS transport: also a consumer and a push producer, and it can abort."""

    def __init__(self, factory: ConnectionFactory) -> None:
        super().__init__(factory.max_message_bytes)
        # Named as it was when this class lived in the module ethtwisted.server.
        self.log = Logger("ethtwisted.server.ServerProtocol", self)
        self.factory = factory
        self.callLater = factory.reactor.callLater  # type: ignore[method-assign, assignment]
        self.hello: Hello | None = None
        self.sent_payload = False
        self.for_the_stores = _ForTheStores(self)
        self.paused_for: set[str] = set()
        """Why reading is paused: C{stores}, C{in_flight} (too many messages not yet
        acknowledged), C{acks} (the peer is slow), C{stopping}."""
        self.in_flight = 0
        """Messages received and not yet settled: neither acknowledged nor refused."""
        self.delivering: IDelayedCall | None = None
        """The handing on of frames held back, once this peer's acks have gone out."""
        self.unread_ack_bytes: int | None = None
        """Acks written since the transport's buffer filled up; None while it has room."""
        self.counted = 0
        """Bytes of this connection in the factory's count of what the connections hold."""
        self.hello_deadline: IDelayedCall | None = None
        self.welcomed: frozenset[str] = frozenset()
        """The features listed in the welcome sent to this client."""
        self.sightings: OrderedDict[str, Sighting] = OrderedDict()
        """Sightings received, by SHA256, awaiting their payload."""
        self.clock = ClockOffset()
        self.pinging: IDelayedCall | None = None
        self.pings_sent = 0
        self.awaiting_clock: list[tuple[Received, Sighting | None]] | None = None
        """Payloads waiting for the first pong (L{CLOCK_WAIT} at most), while one is awaited."""
        self.clock_deadline: IDelayedCall | None = None
        self.last_heard = factory.reactor.seconds()
        """When bytes of this peer last arrived (or the connection opened)."""

    @property
    def held(self) -> int:
        """
        Bytes held for this peer: its partial message and the acks it has left unread.
        """
        return self.buffered + (self.unread_ack_bytes or 0)

    def connectionMade(self) -> None:
        if not self.factory.admit(self):
            self.dropped = "too many connections"
            self.transport.abortConnection()
            return
        self.transport.registerProducer(self, True)
        self.factory.ingest.add_producer(self.for_the_stores)
        self.setTimeout(self.factory.idle_timeout)
        if self.factory.tokens_required:
            self.hello_deadline = self.factory.reactor.callLater(
                self.factory.hello_timeout, self._no_hello
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        if self.delivering is not None and self.delivering.active():
            self.delivering.cancel()
        if self.hello_deadline is not None and self.hello_deadline.active():
            self.hello_deadline.cancel()
        if self.pinging is not None and self.pinging.active():
            self.pinging.cancel()
        # What was read is stored, even from a client gone before its first pong.
        self._clock_ready()
        self.factory.ingest.remove_producer(self.for_the_stores)
        self.factory.gone(self)

    def _no_hello(self) -> None:
        if self.paused_for:  # we are not reading: the hello may be waiting for us
            self.hello_deadline = self.factory.reactor.callLater(
                self.factory.hello_timeout, self._no_hello
            )
            return
        self.drop(f"no hello within {self.factory.hello_timeout:g} seconds", "no_hello")

    def timeoutConnection(self) -> None:
        if self.unread_ack_bytes is not None:
            idle = self.factory.idle_timeout
            self.drop(f"read no acknowledgement for {idle:g} seconds", "slow_reader")
        elif self.paused_for:
            self.resetTimeout()  # quiet because we stopped reading, not because of the peer
        else:
            self.drop(f"idle for {self.factory.idle_timeout:g} seconds", "idle")

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.last_heard = self.factory.reactor.seconds()
        super().dataReceived(data)
        self.factory.account(self)

    def holding(self) -> bool:
        # Not one frame past the bound: a single read can hold thousands of tiny ones.
        return "in_flight" in self.paused_for

    def _settled(self, result: object) -> object:
        self.in_flight -= 1
        if self.in_flight < self.factory.max_in_flight and "in_flight" in self.paused_for:
            self.resume_reading("in_flight")
            if self.buffered and not self.dropped:
                # From the reactor: the other acks of this commit go out first.
                self.delivering = self.callLater(0, self._deliver_held)
        return result

    def _deliver_held(self) -> None:
        self.delivering = None
        self.deliver()
        self.factory.account(self)

    def pause_reading(self, reason: str) -> None:
        """
        Stop reading from this peer because of C{reason}, until it is resumed.
        """
        if not self.paused_for and not self.dropped and self.transport is not None:
            self.transport.pauseProducing()
        self.paused_for.add(reason)

    def resume_reading(self, reason: str) -> None:
        """
        C{reason} no longer holds: read again, unless another reason still does.
        """
        if reason not in self.paused_for:
            return
        self.paused_for.discard(reason)
        if not self.paused_for and not self.dropped and self.transport is not None:
            self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full: the peer is not reading its acks.
        """
        if self.unread_ack_bytes is None:
            self.unread_ack_bytes = 0
            self.pause_reading("acks")
            self.setTimeout(self.factory.idle_timeout)

    def resumeProducing(self) -> None:
        """
        The transport's write buffer has room again.
        """
        if self.unread_ack_bytes is not None:
            self.unread_ack_bytes = None
            self.factory.account(self)
            self.setTimeout(None if self.hello else self.factory.idle_timeout)
            self.resume_reading("acks")

    def stopProducing(self) -> None:
        """The connection is closing; L{connectionLost} tidies up."""

    def sendString(self, string: bytes) -> None:
        super().sendString(string)
        if self.unread_ack_bytes is not None and not self.dropped:
            self.unread_ack_bytes += len(string) + len(str(len(string))) + 2
            if self.unread_ack_bytes > MAX_UNREAD_ACK_BYTES:
                self.drop(
                    f"left over {MAX_UNREAD_ACK_BYTES} bytes of acknowledgements unread",
                    "slow_reader",
                )
            else:
                self.factory.account(self)

    def drop(self, reason: str, kind: str = "bad_message") -> None:
        if self.dropped:
            return
        for observer in self.factory.observers:
            observer.dropped(kind)
        super().drop(reason, kind)
        if self.unread_ack_bytes is not None and self.transport is not None:
            # The peer reads nothing: closing would wait for it for ever.
            self.transport.abortConnection()
        self.unread_ack_bytes = None
        self.factory.account(self)

    def refuse(self, reason: str, in_use: bool = False) -> None:
        self.send_control(Refusal(reason))
        if in_use:
            self.drop(reason, "name_in_use")
        else:
            self.drop(reason, "unauthorized")

    def controlReceived(self, frame: ControlFrame) -> None:
        if isinstance(frame, Hello):
            self._hello(frame)
        elif isinstance(frame, Sighting) and "sighting" in self.welcomed:
            self.sightings.pop(frame.sha256, None)
            self.sightings[frame.sha256] = frame
            if len(self.sightings) > MAX_PENDING_SIGHTINGS:
                self.sightings.popitem(last=False)
        elif isinstance(frame, Status) and "status" in self.welcomed:
            assert self.hello is not None
            now = self.factory.reactor.seconds()
            self.factory.ingest.report(StatusReport(self.hello.name, now, frame))
        elif isinstance(frame, Pong) and "ping" in self.welcomed:
            taken = self.clock.pong(frame.id, frame.client_ms, self.factory.reactor.seconds())
            # A pong of a ping forgotten is late, not bad: a client that stopped for a while
            # answers every ping it missed at once.  It is only not taken.
            if not taken and not self.clock.sent(frame.id):
                raise ProtocolError(f"pong {frame.id} answers no ping sent")
            self._clock_ready()
        else:
            raise ProtocolError(f"unexpected {type(frame).__name__.lower()} frame")

    def _hello(self, frame: Hello) -> None:
        if self.hello is not None:
            raise ProtocolError("second hello")
        if self.sent_payload:
            raise ProtocolError("hello after payloads: it must come first")
        refused = self.factory.claim(self, frame)
        if refused is not None:
            self.refuse(f"client {frame.name!r}: {refused[0]}", refused[1])
            return
        self.hello = frame
        if self.hello_deadline is not None and self.hello_deadline.active():
            self.hello_deadline.cancel()
        # A client that said hello keeps its connection open between blocks by design.
        self.setTimeout(None)
        log.debug("{peer} is client {name}", peer=self.peer, name=frame.name)
        if frame.features is not None:
            features = tuple(f for f in SERVER_FEATURES if f in frame.features)
            self.welcomed = frozenset(features)
            self.send_control(Welcome(features))
            if "ping" in self.welcomed:
                self.awaiting_clock = []
                self.clock_deadline = self.callLater(CLOCK_WAIT, self._clock_ready)
                self._ping()

    def _ping(self) -> None:
        self.pinging = None
        if not self.connected or self.dropped:
            return
        self.send_control(Ping(self.clock.ping(self.factory.reactor.seconds())))
        self.pings_sent += 1
        delay = self.factory.ping_interval
        if self.pings_sent < FIRST_PINGS:
            delay = FIRST_PING_INTERVAL
        self.pinging = self.callLater(delay, self._ping)

    def _clock_ready(self) -> None:
        """
        The first pong came (or L{CLOCK_WAIT} passed, or the connection ended): hand on the
        payloads that waited for it.
        """
        if self.clock_deadline is not None and self.clock_deadline.active():
            self.clock_deadline.cancel()
        self.clock_deadline = None
        waiting, self.awaiting_clock = self.awaiting_clock, None
        for received, sighting in waiting or ():
            self._submit(received, sighting)

    def payloadReceived(self, payload: bytes) -> None:
        if self.factory.tokens_required and self.hello is None:
            self.refuse("a token is required: send a hello with a token first")
            return
        self.sent_payload = True
        text = check_payload(payload)
        address = self.peer_host
        received = Received(
            sha256=payload_hash(payload),
            payload=text,
            address=address,
            client=self.hello.name if self.hello else address,
            received=self.factory.reactor.seconds(),
            block=parse_block(payload),
        )
        sighting = self.sightings.pop(received.sha256, None)
        self.in_flight += 1
        if self.in_flight >= self.factory.max_in_flight:
            self.pause_reading("in_flight")
        if self.awaiting_clock is not None:
            self.awaiting_clock.append((received, sighting))
        else:
            self._submit(received, sighting)

    def _submit(self, received: Received, sighting: Sighting | None) -> None:
        if sighting is not None:
            seen = self.clock.server_time(sighting.seen_ms, received.received)
            received = replace(received, seen=seen, via=sighting.via)
        for observer in self.factory.observers:
            observer.received(received)
        d = self.factory.ingest.submit(received)
        d.addCallbacks(self._acknowledge, self._rejected, errbackArgs=(received.sha256,))
        d.addBoth(self._settled)
        d.addErrback(lambda f: log.failure("acknowledging {peer}", f, peer=self.peer))

    def _rejected(self, failure: Failure, sha256: str) -> None:
        failure.trap(RejectedError)
        # Said once with the connection's end, even when the peer has already closed it.
        self.drop(f"message {sha256} refused: {failure.value}", "rejected")

    def _acknowledge(self, sha256: str) -> None:
        if self.connected and not self.dropped:
            self.send_control(Ack(sha256))
            for observer in self.factory.observers:
                observer.acknowledged(sha256)
