"""
L{CancellingTimerService}: a L{TimerService} whose stop cancels the call under way instead of
waiting for it to end by itself.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure


class CancellingTimerService(TimerService):
    """
    Makes C{call} every C{step} seconds on C{clock}, the first time when it starts, as
    L{TimerService} does: the loop waits for the Deferred a call returns before the next, so
    its calls never overlap, and C{stopService} fires once the loop has ended.  On stop, every
    call under way, from the loop or from L{call_now}, is cancelled; one that ends cancelled
    ends quietly.  C{call} never fails: a failing call stops the loop for good.
    """

    def __init__(self, step: float, call: Callable[[], Deferred[None]], clock: IReactorTime):
        super().__init__(step, self.call_now)
        self.clock: IReactorTime = clock
        self._call = call
        self._under_way: list[Deferred[None]] = []

    def call_now(self) -> Deferred[None]:
        """
        Make the call now, besides the loop's (which this does not wait for, nor delay).
        """
        d = self._call()
        self._under_way.append(d)
        return d.addBoth(self._ended, d)

    def _ended(self, result: object, d: Deferred[None]) -> object:
        self._under_way.remove(d)
        if isinstance(result, Failure) and result.check(CancelledError):
            return None
        return result

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()
        for d in list(self._under_way):
            d.cancel()
        return stopped
