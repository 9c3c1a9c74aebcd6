"""
When reading from one connection of an eth-server pauses, and why (L{Flow}): while the stores
are behind (L{Ingest<ethtwisted.server.ingest.Ingest>} pauses every connection), while its peer
has L{MAX_IN_FLIGHT} messages not yet acknowledged (the frames read meanwhile are held back,
then handed on), while its peer leaves its acknowledgements unread (counted, up to
L{MAX_UNREAD_ACK_BYTES}), and while the server stops.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from ethtwisted.logs import Logger

log = Logger(namespace="ethtwisted.server")

MAX_UNREAD_ACK_BYTES = 256 * 1024
"""Acks a peer may leave unread beyond its transport's write buffer before it is dropped."""
MAX_IN_FLIGHT = 1000
"""Messages of one connection received and not yet acknowledged, past which no more of its
frames are taken (nor read) until acknowledgements go out: one flooding peer cannot fill the
ingest and so pause every other reader.  A group commit's worth, so a busy peer keeps a whole
group in each transaction."""


@implementer(IPushProducer)
class _ForTheStores:
    """
    What L{Ingest<ethtwisted.server.ingest.Ingest>} pauses and resumes: reading from one
    connection, for the stores' sake.
    """

    def __init__(self, flow: Flow) -> None:
        self.flow = flow

    def pauseProducing(self) -> None:
        self.flow.pause("stores")

    def resumeProducing(self) -> None:
        self.flow.resume("stores")

    def stopProducing(self) -> None:
        """Ingest never stops a connection; the connection ends by itself."""


class Flow:
    """
    Whether one connection is read from: its transport is paused while any reason in
    L{paused_for} holds, and resumed once none does.  C{deliver_held} hands on the frames
    held back while the peer had C{max_in_flight} messages unsettled; it is called from the
    reactor once one settles, so that the other acks of the same commit go out first.
    """

    def __init__(
        self, reactor: IReactorTime, max_in_flight: int, deliver_held: Callable[[], None]
    ) -> None:
        self.reactor = reactor
        self.max_in_flight = max_in_flight
        self.deliver_held = deliver_held
        self.reading: IPushProducer | None = None
        """What is paused and resumed: the connection's transport, from L{start} until
        L{stop}."""
        self.for_the_stores = _ForTheStores(self)
        self.paused_for: set[str] = set()
        """Why reading is paused: C{stores}, C{in_flight} (too many messages not yet
        acknowledged), C{acks} (the peer is slow), C{stopping}."""
        self.in_flight = 0
        """Messages received and not yet settled: neither acknowledged nor refused."""
        self.unread_ack_bytes: int | None = None
        """Acks written since the transport's buffer filled up; None while it has room."""
        self.delivering: IDelayedCall | None = None
        """The handing on of frames held back, once this peer's acks have gone out."""

    def start(self, transport: IPushProducer) -> None:
        """
        The connection is made and let in: pause and resume C{transport} from now on.
        """
        self.reading = transport

    def stop(self) -> bool:
        """
        The connection is being dropped: pause and resume its transport no more, and count no
        more unread acks.  Whether its peer was leaving them unread (closing would wait for
        it for ever).
        """
        self.reading = None
        slow, self.unread_ack_bytes = self.unread_ack_bytes is not None, None
        return slow

    def close(self) -> None:
        """
        The connection has ended: nothing held back is handed on any more.
        """
        if self.delivering is not None and self.delivering.active():
            self.delivering.cancel()
        self.delivering = None

    @property
    def paused(self) -> bool:
        return bool(self.paused_for)

    def holding(self) -> bool:
        """
        Whether to take no more frames, even of a read under way (a single read can hold
        thousands of tiny ones): the peer has C{max_in_flight} messages unsettled.
        """
        return "in_flight" in self.paused_for

    def pause(self, reason: str) -> None:
        """
        Stop reading because of C{reason}, until it is resumed.
        """
        if not self.paused_for and self.reading is not None:
            self.reading.pauseProducing()
        self.paused_for.add(reason)

    def resume(self, reason: str) -> None:
        """
        C{reason} no longer holds: read again, unless another reason still does.
        """
        if reason not in self.paused_for:
            return
        self.paused_for.discard(reason)
        if not self.paused_for and self.reading is not None:
            self.reading.resumeProducing()

    def taken(self) -> None:
        """
        A message was taken: at C{max_in_flight} unsettled, pause.
        """
        self.in_flight += 1
        if self.in_flight >= self.max_in_flight:
            self.pause("in_flight")

    def settled(self, frames_held: bool) -> None:
        """
        A message was acknowledged or refused: under C{max_in_flight} again, read again and,
        when C{frames_held}, hand them on from the reactor.
        """
        self.in_flight -= 1
        if self.in_flight < self.max_in_flight and "in_flight" in self.paused_for:
            self.resume("in_flight")
            if frames_held and self.reading is not None:
                self.delivering = self.reactor.callLater(0, self._deliver_held)

    def _deliver_held(self) -> None:
        self.delivering = None
        self.deliver_held()

    def acks_blocked(self) -> bool:
        """
        The transport's write buffer is full (the peer is not reading its acks): pause and
        count what is written from now on.  Whether it was not full already.
        """
        if self.unread_ack_bytes is not None:
            return False
        self.unread_ack_bytes = 0
        self.pause("acks")
        return True

    def acks_read(self) -> bool:
        """
        The transport's write buffer has room again: count no more, read again.  Whether it
        was full.
        """
        if self.unread_ack_bytes is None:
            return False
        self.unread_ack_bytes = None
        self.resume("acks")
        return True

    def wrote(self, frame_bytes: int) -> bool:
        """
        A frame of C{frame_bytes} was written while the peer reads none: whether the peer
        has now left more than L{MAX_UNREAD_ACK_BYTES} unread.
        """
        if self.unread_ack_bytes is None:
            return False
        self.unread_ack_bytes += frame_bytes
        return self.unread_ack_bytes > MAX_UNREAD_ACK_BYTES
