"""
One connection of an eth-server (L{ServerProtocol}): frames in, each dispatched (payloads to
the shared L{Ingest}), acknowledgements and refusals out.  When reading from it pauses is
L{ethtwisted.server.flow}'s, its sightings and its client's clock
L{ethtwisted.server.sightings}'.  What it needs of the factory that builds it is said here
(L{ConnectionFactory}, L{ConnectionObserver}), so that L{ethtwisted.server.factory} imports
this module and not the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from ethtwisted.server.flow import MAX_UNREAD_ACK_BYTES, Flow
from ethtwisted.server.ingest import Ingest
from ethtwisted.server.sightings import Sightings
from ethtwisted.storage import RejectedError

log = Logger(namespace="ethtwisted.server")

SERVER_FEATURES = ("status", "sighting", "ping")
"""What this server understands beyond hello and ack; a welcome lists those the client's hello
listed too."""


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
class ServerProtocol(FrameProtocol, TimeoutMixin):
    """
    One client connection: payloads in, acknowledgements out.

    Reading stops while the stores are behind, while this peer has C{max_in_flight} messages
    not yet acknowledged, and while this peer leaves its acknowledgements unread (the
    transport, whose producer this is, pauses it once its write buffer is full); it resumes
    once none of these holds (L{Flow}).  A peer that leaves more than
    C{MAX_UNREAD_ACK_BYTES} of acknowledgements unread beyond that buffer, or reads none for
    the idle timeout, is dropped.
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
        self.flow = Flow(factory.reactor, factory.max_in_flight, self._deliver_held)
        self.sightings = Sightings(factory.reactor, self._ping, self._submit)
        self.counted = 0
        """Bytes of this connection in the factory's count of what the connections hold."""
        self.hello_deadline: IDelayedCall | None = None
        self.welcomed: frozenset[str] = frozenset()
        """The features listed in the welcome sent to this client."""
        self.last_heard = factory.reactor.seconds()
        """When bytes of this peer last arrived (or the connection opened)."""

    @property
    def held(self) -> int:
        """
        Bytes held for this peer: its partial message and the acks it has left unread.
        """
        return self.buffered + (self.flow.unread_ack_bytes or 0)

    def connectionMade(self) -> None:
        if not self.factory.admit(self):
            self.dropped = "too many connections"
            self.transport.abortConnection()
            return
        self.flow.start(self.transport)
        self.transport.registerProducer(self, True)
        self.factory.ingest.add_producer(self.flow.for_the_stores)
        self.setTimeout(self.factory.idle_timeout)
        if self.factory.tokens_required:
            self.hello_deadline = self.factory.reactor.callLater(
                self.factory.hello_timeout, self._no_hello
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        self.flow.close()
        if self.hello_deadline is not None and self.hello_deadline.active():
            self.hello_deadline.cancel()
        self.sightings.stop()
        self.factory.ingest.remove_producer(self.flow.for_the_stores)
        self.factory.gone(self)

    def _no_hello(self) -> None:
        if self.flow.paused:  # we are not reading: the hello may be waiting for us
            self.hello_deadline = self.factory.reactor.callLater(
                self.factory.hello_timeout, self._no_hello
            )
            return
        self.drop(f"no hello within {self.factory.hello_timeout:g} seconds", "no_hello")

    def timeoutConnection(self) -> None:
        if self.flow.unread_ack_bytes is not None:
            idle = self.factory.idle_timeout
            self.drop(f"read no acknowledgement for {idle:g} seconds", "slow_reader")
        elif self.flow.paused:
            self.resetTimeout()  # quiet because we stopped reading, not because of the peer
        else:
            self.drop(f"idle for {self.factory.idle_timeout:g} seconds", "idle")

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.last_heard = self.factory.reactor.seconds()
        super().dataReceived(data)
        self.factory.account(self)

    def holding(self) -> bool:
        return self.flow.holding()

    def _deliver_held(self) -> None:
        self.deliver()
        self.factory.account(self)

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full: the peer is not reading its acks.
        """
        if self.flow.acks_blocked():
            self.setTimeout(self.factory.idle_timeout)

    def resumeProducing(self) -> None:
        """
        The transport's write buffer has room again.
        """
        if self.flow.acks_read():
            self.factory.account(self)
            self.setTimeout(None if self.hello else self.factory.idle_timeout)

    def stopProducing(self) -> None:
        """The connection is closing; L{connectionLost} tidies up."""

    def sendString(self, string: bytes) -> None:
        super().sendString(string)
        if self.flow.unread_ack_bytes is not None and not self.dropped:
            if self.flow.wrote(len(string) + len(str(len(string))) + 2):
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
        reading_nothing = self.flow.stop()
        self.sightings.stop_pinging()
        super().drop(reason, kind)
        if reading_nothing and self.transport is not None:
            # The peer reads nothing: closing would wait for it for ever.
            self.transport.abortConnection()
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
            self.sightings.sighted(frame)
        elif isinstance(frame, Status) and "status" in self.welcomed:
            assert self.hello is not None
            now = self.factory.reactor.seconds()
            self.factory.ingest.report(StatusReport(self.hello.name, now, frame))
        elif isinstance(frame, Pong) and "ping" in self.welcomed:
            if not self.sightings.pong(frame.id, frame.client_ms):
                raise ProtocolError(f"pong {frame.id} answers no ping sent")
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
                self.sightings.start_pinging(self.factory.ping_interval)

    def _ping(self, ping_id: int) -> None:
        self.send_control(Ping(ping_id))

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
        self.flow.taken()
        self.sightings.received(received)

    def _submit(self, received: Received) -> None:
        for observer in self.factory.observers:
            observer.received(received)
        d = self.factory.ingest.submit(received)
        d.addCallbacks(self._acknowledge, self._rejected, errbackArgs=(received.sha256,))
        d.addBoth(self._settled)
        d.addErrback(lambda f: log.failure("acknowledging {peer}", f, peer=self.peer))

    def _settled(self, result: object) -> object:
        self.flow.settled(frames_held=self.buffered > 0 and not self.dropped)
        return result

    def _rejected(self, failure: Failure, sha256: str) -> None:
        failure.trap(RejectedError)
        # Said once with the connection's end, even when the peer has already closed it.
        self.drop(f"message {sha256} refused: {failure.value}", "rejected")

    def _acknowledge(self, sha256: str) -> None:
        if self.connected and not self.dropped:
            self.send_control(Ack(sha256))
            for observer in self.factory.observers:
                observer.acknowledged(sha256)
