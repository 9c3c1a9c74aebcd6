"""
The node's status: L{StatusPoller} reads it every C{--status-interval} seconds and at once when
something changes, and sends it to the server that welcomed status frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ethtwisted.client.delivery import Delivery
from ethtwisted.frames import Status
from ethtwisted.logs import Logger, describe
from ethtwisted.node import NodeError
from ethtwisted.node.status import StatusReader
from ethtwisted.timer import CancellingTimerService

log = Logger(namespace="ethtwisted.client")

DEFAULT_STATUS_INTERVAL = 15.0


def _unchanged(a: Status | None, b: Status | None) -> bool:
    """
    Whether two statuses say the same, but for the round-trip time (which always differs).
    """
    if a is None or b is None:
        return a is b
    return replace(a, rtt_ms=None) == replace(b, rtt_ms=None)


class StatusPoller(CancellingTimerService):
    """
    Reads the node's status every C{interval} seconds on C{clock}, and when L{changed} is
    called (a new head): at once, unless a read began less than C{head_gap} seconds ago, then
    once that much time has passed since, however many heads came meanwhile (a chain of four
    blocks a second is not asked nine methods a block).  Never two reads at once (one asked
    for during a read follows it), and a read never fails: a node that does not answer is said
    once, and once when it answers again.  Each status read goes to the C{status_listeners};
    it goes to the server through C{delivery} when it changed, at most every C{interval}
    seconds when it did not, and at once to a server that has just welcomed status frames.
    """

    def __init__(
        self,
        reader: StatusReader,
        delivery: Delivery | None,
        clock: IReactorTime,
        interval: float = DEFAULT_STATUS_INTERVAL,
        head_gap: float = 0.0,
    ) -> None:
        super().__init__(interval, self.poll, clock)
        self.head_gap = head_gap
        self.reader = reader
        self.delivery = delivery
        self.status: Status | None = None
        """The last status read."""
        self.status_listeners: list[Callable[[Status], None]] = []
        """Called with each status read."""
        self.trouble: str | None = None
        self._sent: Status | None = None
        self._sent_at: float | None = None
        self._current: Deferred[None] | None = None
        self._again = False
        self._waiting: list[Deferred[None]] = []
        self._began: float | None = None
        """When the last read began."""
        self._later: IDelayedCall | None = None
        """The read a head asked for, due once C{head_gap} has passed since the last began."""

    def changed(self, *_: object) -> None:
        """
        Something changed (a new head): read the status now, or right after the read under
        way, or once C{head_gap} has passed since the last read began.
        """
        if not self.running or (self._later is not None and self._later.active()):
            return
        wait = 0.0 if self._began is None else self._began + self.head_gap - self.clock.seconds()
        if wait > 0:
            self._later = self.clock.callLater(wait, self._read_later)
        else:
            self.call_now()

    def _read_later(self) -> None:
        self._later = None
        if self.running:
            self.call_now()

    def stopService(self) -> Deferred[None]:
        if self._later is not None and self._later.active():
            self._later.cancel()
        self._later = None
        return super().stopService()

    def poll(self) -> Deferred[None]:
        """
        Read the status (after the read under way, if there is one); never fails.
        """
        self._began = self.clock.seconds()
        if self._current is not None:
            self._again = True
            d: Deferred[None] = Deferred()
            self._waiting.append(d)
            return d
        current = self._current = Deferred.fromCoroutine(self._reads())
        current.addErrback(lambda f: log.failure("bug while reading the node's status", f))
        current.addBoth(self._done)
        return current

    def _done(self, _: object) -> None:
        self._current = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    async def _reads(self) -> None:
        for _ in range(2):  # the read asked for, and one more if more were asked for meanwhile
            self._again = False
            try:
                status = await self.reader.read()
            except CancelledError:
                return
            except NodeError as e:
                if self.trouble is None:
                    log.warn("cannot read the status of node {node}: {reason}",
                             node=self.reader.node.description, reason=describe(e))  # fmt: skip
                self.trouble = describe(e)
            else:
                if self.trouble is not None:
                    log.info("the status of node {node} can be read again",
                             node=self.reader.node.description)  # fmt: skip
                    self.trouble = None
                self._read(status)
            if not self._again:
                return

    def _read(self, status: Status) -> None:
        self.status = status
        for listener in self.status_listeners:
            listener(status)
        now = self.clock.seconds()
        due = self._sent_at is None or now - self._sent_at >= self.step
        if due or not _unchanged(status, self._sent):
            self._send(status)

    def _send(self, status: Status) -> None:
        if self.delivery is not None and self.delivery.send_status(status):
            log.debug("sent the node's status: {status}", status=status)
            self._sent, self._sent_at = status, self.clock.seconds()

    def welcomed(self, features: frozenset[str]) -> None:
        """
        The server welcomed C{features}: send it the last status read if it takes status frames.
        """
        if "status" in features and self.status is not None:
            self._send(self.status)
