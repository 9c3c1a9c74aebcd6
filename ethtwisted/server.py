"""
The collecting side: a netstring server that hands each payload to L{Ingest}, which commits
what arrives together in one transaction and acknowledges each payload once it is stored.
"""

from __future__ import annotations

import hmac
import unicodedata
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import (
    Deferred,
    TimeoutError,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from ethtwisted.interfaces import IBlockStore, IStatsStore, Received
from ethtwisted.logs import describe, log_observer
from ethtwisted.protocol import (
    Ack,
    ControlFrame,
    FrameProtocol,
    Hello,
    ProtocolError,
    Refusal,
    check_payload,
    parse_block,
    payload_hash,
)
from ethtwisted.startup import StartingService, listen_on
from ethtwisted.storage import RejectedError, is_rejection, wait_for

log = Logger(observer=log_observer)

MAX_BATCH = 1000
HIGH_WATER_BYTES = 8 * 1024 * 1024
LOW_WATER_BYTES = HIGH_WATER_BYTES // 2
MAX_RETRY_DELAY = 5.0
MAX_NAME_LENGTH = 255
STOP_TIMEOUT = 10.0
MAX_UNREAD_ACK_BYTES = 256 * 1024
"""Acks a peer may leave unread beyond its transport's write buffer before it is dropped."""
DEFAULT_HELLO_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024


class ConnectionObserver(Protocol):
    """
    Told what happens on the connections of a L{ServerFactory} (metrics).
    """

    def received(self, received: Received) -> None:
        """A payload arrived."""

    def acknowledged(self, sha256: str) -> None:
        """An acknowledgement was sent."""

    def dropped(self, kind: str) -> None:
        """A connection is being dropped; C{kind} as in L{FrameProtocol.drop}."""


@dataclass
class _Entry:
    received: Received
    size: int
    done: Deferred[str] = field(default_factory=Deferred)


class Ingest:
    """
    Payloads on their way into the stores.

    Whatever arrives while a transaction is being committed goes into the next one, so a lone
    message is committed at once and a busy server commits in large groups.  A group is
    committed to SQL, then counted in Redis (when configured); only then is each payload's
    Deferred fired and its sender acknowledged.  A store that is unavailable is retried with
    capped backoff, the same group again; meanwhile readers are paused past a high-water mark
    of pending bytes and resumed below half of it.  A store that rejects what a group holds
    (L{is_rejection}) has the group split in halves, tried again at once, until the message it
    rejects is alone: that message's Deferred fails with L{RejectedError}, the others are stored.
    """

    def __init__(
        self,
        store: IBlockStore,
        stats: IStatsStore | None,
        reactor: IReactorTime,
        max_batch: int = MAX_BATCH,
        high_water_bytes: int = HIGH_WATER_BYTES,
    ) -> None:
        self.store = store
        self.stats = stats
        self.reactor = reactor
        self.max_batch = max_batch
        self.high_water_bytes = high_water_bytes
        self.pending: deque[_Entry] = deque()
        """Received, not yet taken into a transaction."""
        self.halves: deque[tuple[list[_Entry], Callable[[list[_Entry]], None]]] = deque()
        """Parts of a rejected group, each with the step to try it again at, before anything
        pending."""
        self.unsettled = 0
        """Received, not yet stored and counted: pending or in a transaction under way."""
        self.pending_bytes = 0
        self.busy = False
        self.paused = False
        self.producers: set[IPushProducer] = set()
        self.trouble: str | None = None
        self.failures = 0
        self._idle: list[Deferred[None]] = []
        self.observers: list[Callable[[Sequence[Received], int], None]] = []
        """Called with each committed group and how many of its payloads were new."""

    def submit(self, received: Received) -> Deferred[str]:
        """
        Queue C{received}; the Deferred fires with its SHA256 once it is stored and counted.
        """
        entry = _Entry(received, len(received.payload) + 200)
        self.pending.append(entry)
        self.unsettled += 1
        self.pending_bytes += entry.size
        if not self.busy:
            self.busy = True
            # Let the rest of this read be parsed first, so that it joins the same group.
            self.reactor.callLater(0, self._next)
        if self.pending_bytes > self.high_water_bytes and not self.paused:
            self.paused = True
            log.info("pausing {n} readers: {bytes} bytes waiting for the stores",
                     n=len(self.producers), bytes=self.pending_bytes)  # fmt: skip
            for producer in self.producers:
                producer.pauseProducing()
        return entry.done

    def add_producer(self, producer: IPushProducer) -> None:
        self.producers.add(producer)
        if self.paused:
            producer.pauseProducing()

    def remove_producer(self, producer: IPushProducer) -> None:
        self.producers.discard(producer)

    def _next(self) -> None:
        if self.halves:
            group, step = self.halves.popleft()
            step(group)
            return
        if not self.pending:
            self.busy = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        group = [self.pending.popleft() for _ in range(min(self.max_batch, len(self.pending)))]
        self._store(group)

    def _store(self, group: list[_Entry]) -> None:
        d = self.store.store([e.received for e in group])
        d.addCallbacks(
            lambda new: self._stored(group, new),
            lambda f: self._failed(group, "SQL", f, self._store),
        )
        d.addErrback(lambda f: log.failure("storing a group", f))

    def _stored(self, group: list[_Entry], new: int) -> None:
        for observer in self.observers:
            observer([e.received for e in group], new)
        self._record(group)

    def _record(self, group: list[_Entry], name: str | None = None) -> None:
        if self.stats is None:
            self._done(group)
            return
        # A retry keeps the group's name, so that Redis counts it once however often it is sent.
        name = name or uuid.uuid4().hex
        d = self.stats.record([e.received for e in group], name)
        d.addCallbacks(
            lambda _: self._done(group),
            lambda f: self._failed(group, "Redis", f, lambda g: self._record(g, name)),
        )
        d.addErrback(lambda f: log.failure("counting a group", f))

    def _failed(
        self,
        group: list[_Entry],
        store: str,
        failure: Failure,
        again: Callable[[list[_Entry]], None],
    ) -> None:
        if not is_rejection(failure):
            self._retry(group, store, failure, again)
            return
        if len(group) > 1:
            # Redis halves are counted under names of their own: the whole was not counted.
            step = self._store if store == "SQL" else self._record
            middle = len(group) // 2
            self.halves.extendleft([(group[middle:], step), (group[:middle], step)])
            log.debug("{store} store rejects a group of {n}: trying its halves", store=store,
                      n=len(group))  # fmt: skip
        else:
            entry = group[0]
            self._settle(group)
            entry.done.errback(RejectedError(f"the {store} store refuses it: {describe(failure)}"))
        # At once, but from the reactor: a store failing synchronously must not recurse.
        self.reactor.callLater(0, self._next)

    def _retry(
        self,
        group: list[_Entry],
        store: str,
        failure: Failure,
        again: Callable[[list[_Entry]], None],
    ) -> None:
        self.failures += 1
        reason = f"{store} store unavailable: {describe(failure)}"
        if reason != self.trouble:
            self.trouble = reason
            log.error("{reason}; holding {n} messages and retrying", reason=reason,
                      n=self.unsettled)  # fmt: skip
        delay = min(0.1 * 2 ** min(self.failures - 1, 10), MAX_RETRY_DELAY)
        self.reactor.callLater(delay, again, group)

    def _done(self, group: list[_Entry]) -> None:
        if self.trouble is not None:
            log.info("stores are back after {n} failed attempts", n=self.failures)
            self.trouble = None
        self.failures = 0
        self._settle(group)
        for e in group:
            e.done.callback(e.received.sha256)
        self._next()

    def _settle(self, group: list[_Entry]) -> None:
        self.pending_bytes -= sum(e.size for e in group)
        self.unsettled -= len(group)
        if self.paused and self.pending_bytes <= self.high_water_bytes // 2:
            self.paused = False
            log.info("resuming {n} readers", n=len(self.producers))
            for producer in self.producers:
                producer.resumeProducing()

    def idle(self) -> Deferred[None]:
        """
        Fire once nothing is pending any more.
        """
        if not self.busy:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d


_NAME_FORBIDDEN = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Unicode categories a client name may not contain: control characters, surrogates, line
and paragraph separators."""


def name_problem(name: str) -> str | None:
    """
    Why C{name} cannot be a client's name (a phrase), or L{None}: it must be 1 to
    L{MAX_NAME_LENGTH} characters (a C{VARCHAR(255)} in utf8mb4 holds any 255), encodable as
    UTF-8 (no lone surrogate, which JSON's C{"\\ud800"} can carry), without control characters
    or line breaks, and without spaces around it (MySQL compares names without trailing spaces).
    """
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"must be 1 to {MAX_NAME_LENGTH} characters"
    if any(unicodedata.category(c) in _NAME_FORBIDDEN for c in name):
        return "must not contain control characters, line breaks or lone surrogates"
    if name != name.strip():
        return "must not begin or end with spaces"
    return None


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

    Reading stops while the stores are behind (L{Ingest} pauses every connection) and while
    this peer leaves its acknowledgements unread (the transport, whose producer this is,
    pauses it once its write buffer is full); it resumes once neither holds.  A peer that
    leaves more than C{MAX_UNREAD_ACK_BYTES} of acknowledgements unread beyond that buffer,
    or reads none for the idle timeout, is dropped.
    """

    factory: ServerFactory
    transport: Any
    """A TCP or TLS transport: also a consumer and a push producer, and it can abort."""

    def __init__(self, factory: ServerFactory) -> None:
        super().__init__(factory.max_message_bytes)
        self.factory = factory
        self.callLater = factory.reactor.callLater  # type: ignore[method-assign, assignment]
        self.hello: Hello | None = None
        self.sent_payload = False
        self.for_the_stores = _ForTheStores(self)
        self.paused_for: set[str] = set()
        """Why reading is paused: C{stores}, C{acks} (the peer is slow), C{stopping}."""
        self.unread_ack_bytes: int | None = None
        """Acks written since the transport's buffer filled up; None while it has room."""
        self.counted = 0
        """Bytes of this connection in the factory's L{ServerFactory.buffered_bytes}."""
        self.hello_deadline: IDelayedCall | None = None

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
        if self.factory.tokens is not None:
            self.hello_deadline = self.factory.reactor.callLater(
                self.factory.hello_timeout, self._no_hello
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        if self.hello_deadline is not None and self.hello_deadline.active():
            self.hello_deadline.cancel()
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
        elif self.factory.ingest.paused:
            self.resetTimeout()  # quiet because we stopped reading, not because of the peer
        else:
            self.drop(f"idle for {self.factory.idle_timeout:g} seconds", "idle")

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)
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

    def refuse(self, reason: str) -> None:
        self.send_control(Refusal(reason))
        self.drop(reason, "unauthorized")

    def controlReceived(self, frame: ControlFrame) -> None:
        if not isinstance(frame, Hello):
            raise ProtocolError(f"unexpected {type(frame).__name__.lower()} frame")
        if self.hello is not None:
            raise ProtocolError("second hello")
        if self.sent_payload:
            raise ProtocolError("hello after payloads: it must come first")
        problem = name_problem(frame.name)
        if problem is not None:
            raise ProtocolError(f"client name {problem}")
        if self.factory.tokens is not None and not self.factory.token_valid(frame.token):
            self.refuse(f"client {frame.name!r}: missing or invalid token")
            return
        self.hello = frame
        if self.hello_deadline is not None and self.hello_deadline.active():
            self.hello_deadline.cancel()
        # A client that said hello keeps its connection open between blocks by design.
        self.setTimeout(None)
        log.debug("{peer} is client {name}", peer=self.peer, name=frame.name)

    def payloadReceived(self, payload: bytes) -> None:
        if self.factory.tokens is not None and self.hello is None:
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
        for observer in self.factory.observers:
            observer.received(received)
        d = self.factory.ingest.submit(received)
        d.addCallbacks(self._acknowledge, self._rejected, errbackArgs=(received.sha256,))
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


class ServerFactory(Factory):
    """
    Builds L{ServerProtocol}s sharing one L{Ingest}, and bounds what they hold together: at
    most C{max_connections} at a time (one more is closed at once), at most
    C{max_buffered_bytes} of partial messages and unread acks (past it, the connection
    holding the most is dropped).
    """

    noisy = False

    def __init__(
        self,
        ingest: Ingest,
        reactor: IReactorTime,
        max_message_bytes: int,
        idle_timeout: float,
        tokens: Sequence[str] | None = None,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    ) -> None:
        self.ingest = ingest
        self.reactor = reactor
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.tokens = list(tokens) if tokens is not None else None
        self.hello_timeout = hello_timeout
        self.max_connections = max_connections
        self.max_buffered_bytes = max_buffered_bytes
        self.connections: set[ServerProtocol] = set()
        self.observers: list[ConnectionObserver] = []
        self.turned_away = 0
        """Connections closed at once since the last one was let in (the cap was reached)."""
        self.buffered_bytes = 0
        """What the connections hold together: partial messages and unread acks."""

    def token_valid(self, token: str | None) -> bool:
        if token is None or self.tokens is None:
            return False
        given = token.encode("utf-8")
        return any(hmac.compare_digest(given, t.encode("utf-8")) for t in self.tokens)

    def buildProtocol(self, addr: Any) -> ServerProtocol:  # type: ignore[override]
        return ServerProtocol(self)

    def admit(self, connection: ServerProtocol) -> bool:
        """
        Whether C{connection} may stay: fewer than C{max_connections} are open.  A burst of
        connections turned away is logged once, and once when one is let in again.
        """
        if len(self.connections) >= self.max_connections:
            for observer in self.observers:
                observer.dropped("too_many_connections")
            if not self.turned_away:
                log.warn("{n} connections open, the most allowed: closing new ones at once",
                         n=len(self.connections))  # fmt: skip
            self.turned_away += 1
            return False
        if self.turned_away:
            log.info("accepting connections again; closed {n} meanwhile", n=self.turned_away)
            self.turned_away = 0
        self.connections.add(connection)
        return True

    def gone(self, connection: ServerProtocol) -> None:
        self.connections.discard(connection)
        self.buffered_bytes -= connection.counted
        connection.counted = 0

    def account(self, connection: ServerProtocol) -> None:
        """
        Count what C{connection} holds now; past C{max_buffered_bytes} in all, drop the
        connection that holds the most (this one or another) until under it again.
        """
        if connection not in self.connections:
            return
        held = 0 if connection.dropped else connection.held
        self.buffered_bytes += held - connection.counted
        connection.counted = held
        while self.buffered_bytes > self.max_buffered_bytes:
            largest = max(self.connections, key=lambda c: c.counted)
            largest.drop(
                f"holding {largest.counted} bytes, the most, while connections hold"
                f" {self.buffered_bytes} in all, over the {self.max_buffered_bytes}-byte bound",
                "buffered_bytes",
            )


class CollectorService(StartingService):
    """
    Waits for the SQL store (up to C{wait} seconds), then listens on every endpoint; on stop,
    stops listening and reading, lets what was read be committed, then closes the connections
    and the stores.
    """

    what = "the collector"

    def __init__(
        self,
        reactor: IReactorCore,
        factory: ServerFactory,
        endpoints: Sequence[tuple[str, IStreamServerEndpoint]],
        store_name: str,
        wait: float,
    ) -> None:
        super().__init__(reactor)
        self.factory = factory
        self.endpoints = endpoints
        self.store_name = store_name
        self.wait = wait
        self.ports: list[IListeningPort] = []

    async def start_up(self) -> None:
        ingest = self.factory.ingest
        await wait_for(ingest.store.start, self.store_name, self.wait, self.factory.reactor)
        if ingest.stats is not None:
            # Redis may come later: messages wait to be counted (and acknowledged) until then.
            ingest.stats.ping().addErrback(
                lambda f: log.warn("Redis does not answer yet: {reason}", reason=describe(f))
            )
        self.ports = await listen_on(self.endpoints, self.factory, "collecting")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.ready.cancel()
        for port in self.ports:
            await maybeDeferred(port.stopListening)
        ingest = self.factory.ingest
        # Read no more from anyone, but let what was read be stored and acknowledged.
        for connection in self.factory.connections:
            ingest.remove_producer(connection.for_the_stores)
            connection.pause_reading("stopping")
        try:
            await ingest.idle().addTimeout(STOP_TIMEOUT, self.factory.reactor)
        except TimeoutError:
            log.warn(
                "stopping with {n} messages not stored; clients resend what was not acknowledged",
                n=ingest.unsettled,
            )
        for connection in list(self.factory.connections):
            if connection.transport is not None:
                connection.transport.loseConnection()
        await ingest.store.close()
        if ingest.stats is not None:
            await ingest.stats.close()
