"""
L{CancellingTimerService}: calls on a timer that never overlap, cancelled on stop.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from ethtwisted.timer import CancellingTimerService


class Calls:
    """
    A call whose Deferreds the test fires, recording which were cancelled.
    """

    def __init__(self) -> None:
        self.made: list[Deferred[None]] = []
        self.cancelled: list[Deferred[None]] = []

    def __call__(self) -> Deferred[None]:
        d: Deferred[None] = Deferred(self.cancelled.append)
        self.made.append(d)
        return d


def test_calls_never_overlap_and_keep_their_schedule() -> None:
    """
    The first call is made at start; while it is under way no other starts, however many
    steps pass; once it ends, the next is made at the next step, not at once.
    """
    clock, calls = Clock(), Calls()
    timer = CancellingTimerService(1.0, calls, clock)
    timer.startService()
    assert len(calls.made) == 1
    clock.advance(3.5)
    assert len(calls.made) == 1
    calls.made[0].callback(None)
    assert len(calls.made) == 1
    clock.advance(0.5)
    assert len(calls.made) == 2
    calls.made[1].callback(None)
    clock.advance(1.0)
    assert len(calls.made) == 3
    calls.made[2].callback(None)
    assert timer.stopService().called
    assert calls.cancelled == [] and not timer.running
    assert not clock.getDelayedCalls()


def test_stopping_cancels_the_call_under_way() -> None:
    """
    Stopping while a call is under way cancels it, and the stop is over at once, quietly
    (a cancelled call is no error), with nothing left on the clock.
    """
    clock, calls = Clock(), Calls()
    timer = CancellingTimerService(1.0, calls, clock)
    timer.startService()
    clock.advance(1.0)
    calls.made[0].callback(None)
    clock.advance(1.0)
    assert len(calls.made) == 2
    stopped = timer.stopService()
    assert calls.cancelled == [calls.made[1]]
    assert stopped.called and not timer.running
    clock.advance(5.0)
    assert len(calls.made) == 2
    assert not clock.getDelayedCalls()


def test_stopping_between_calls_cancels_nothing() -> None:
    """
    Stopping while no call is under way ends the loop at once and cancels no call.
    """
    clock, calls = Clock(), Calls()
    timer = CancellingTimerService(1.0, calls, clock)
    timer.startService()
    calls.made[0].callback(None)
    stopped = timer.stopService()
    assert stopped.called and calls.cancelled == []
    assert not clock.getDelayedCalls()


def test_a_call_made_now_is_cancelled_on_stop_too() -> None:
    """
    A call made with C{call_now} between the loop's steps leaves the loop's schedule as it
    was, and is cancelled on stop like the loop's own.
    """
    clock, calls = Clock(), Calls()
    timer = CancellingTimerService(1.0, calls, clock)
    timer.startService()
    calls.made[0].callback(None)
    clock.advance(0.5)
    now = timer.call_now()
    assert calls.made[1] is now
    clock.advance(0.5)
    assert len(calls.made) == 3
    calls.made[2].callback(None)
    stopped = timer.stopService()
    assert calls.cancelled == [now]
    assert stopped.called and not timer.running
    assert not clock.getDelayedCalls()
