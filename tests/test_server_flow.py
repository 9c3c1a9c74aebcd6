"""
When reading from one connection pauses, and why (L{ethtwisted.server.flow.Flow}), without a
connection: the reasons composed, the in-flight bound and the frames held back, the count of
acknowledgements left unread, and what a dropped connection no longer does.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from zope.interface import implementer

from ethtwisted.server.flow import MAX_UNREAD_ACK_BYTES, Flow


@implementer(IPushProducer)
class Reading:
    """
    A transport as its producer: records each pause and resume it is told.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def started(max_in_flight: int = 3) -> tuple[Flow, Reading, Clock, list[float]]:
    """A flow reading from a new L{Reading}, and when each delivery of held frames ran."""
    clock = Clock()
    delivered: list[float] = []
    flow = Flow(clock, max_in_flight, lambda: delivered.append(clock.seconds()))
    reading = Reading()
    flow.start(reading)
    return flow, reading, clock, delivered


def test_the_transport_is_paused_once_and_resumed_when_no_reason_holds() -> None:
    """
    However many reasons hold together (the stores, through the producer L{Ingest} pauses;
    a slow peer; stopping), the transport is paused once, when the first begins, and resumed
    once, when the last ends; a reason ended twice, or never begun, resumes nothing.
    """
    flow, reading, clock, _ = started()
    flow.for_the_stores.pauseProducing()
    flow.pause("stopping")
    assert flow.acks_blocked()
    assert reading.calls == ["pause"] and flow.paused_for == {"stores", "stopping", "acks"}
    flow.resume("stopping")
    flow.resume("stopping")
    flow.resume("in_flight")
    assert flow.acks_read()
    assert reading.calls == ["pause"] and flow.paused
    flow.for_the_stores.resumeProducing()
    assert reading.calls == ["pause", "resume"] and not flow.paused
    flow.for_the_stores.stopProducing()  # the ingest never stops a connection
    assert reading.calls == ["pause", "resume"]
    assert not clock.getDelayedCalls()


def test_at_the_in_flight_bound_frames_are_held_then_handed_on_from_the_reactor() -> None:
    """
    At C{max_in_flight} messages unsettled, the flow pauses and holds frames back; the first
    to settle below the bound resumes reading and hands on what was held, from the reactor
    (so that the other acks of its commit go out first), once.
    """
    flow, reading, clock, delivered = started(max_in_flight=3)
    flow.taken()
    flow.taken()
    assert not flow.holding() and reading.calls == []
    flow.taken()
    assert flow.holding() and flow.paused_for == {"in_flight"} and reading.calls == ["pause"]
    flow.settled(frames_held=True)
    assert not flow.holding() and reading.calls == ["pause", "resume"]
    assert delivered == []  # not while the commit's other acks are being sent
    flow.settled(frames_held=True)  # already under the bound: nothing more to hand on
    clock.advance(0)
    assert delivered == [0.0] and flow.in_flight == 1
    assert not clock.getDelayedCalls()


def test_nothing_held_nothing_handed_on() -> None:
    """
    Under the bound again with no frames held back, reading resumes and nothing is scheduled.
    """
    flow, reading, clock, delivered = started(max_in_flight=1)
    flow.taken()
    flow.settled(frames_held=False)
    assert reading.calls == ["pause", "resume"] and not clock.getDelayedCalls()
    assert delivered == []


def test_acknowledgements_left_unread_are_counted_up_to_the_bound() -> None:
    """
    Once the transport's buffer is full, every frame written is counted; the flow says when
    the peer has left more than L{MAX_UNREAD_ACK_BYTES} unread, and counts nothing while the
    buffer has room.
    """
    flow, reading, _, _ = started()
    assert not flow.wrote(100) and flow.unread_ack_bytes is None
    assert flow.acks_blocked() and not flow.acks_blocked()  # said once
    assert flow.unread_ack_bytes == 0 and reading.calls == ["pause"]
    assert not flow.wrote(MAX_UNREAD_ACK_BYTES)
    assert flow.wrote(1)
    assert flow.acks_read() and not flow.acks_read()
    assert flow.unread_ack_bytes is None and reading.calls == ["pause", "resume"]


def test_a_dropped_connection_is_paused_and_resumed_no_more() -> None:
    """
    Stopping the flow (the connection is being dropped) says whether its peer was leaving
    acks unread, and from then on the transport is neither paused nor resumed, nor are held
    frames handed on; closing it cancels a delivery already scheduled.
    """
    flow, reading, clock, delivered = started(max_in_flight=1)
    flow.taken()
    flow.settled(frames_held=True)
    assert clock.getDelayedCalls()
    flow.close()
    clock.advance(0)
    assert delivered == [] and not clock.getDelayedCalls()

    flow, reading, clock, delivered = started(max_in_flight=1)
    assert flow.acks_blocked()
    assert flow.stop() and flow.unread_ack_bytes is None
    flow.taken()
    flow.pause("stopping")
    flow.settled(frames_held=True)
    flow.resume("acks")
    flow.resume("stopping")
    assert reading.calls == ["pause"] and not clock.getDelayedCalls() and delivered == []

    flow, reading, _, _ = started()
    assert not flow.stop()  # its peer was reading: closing may wait for it
