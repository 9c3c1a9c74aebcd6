"""
Polling: L{Poller} runs the follower every interval and rides out node and spool trouble; with
a L{Subscriber}, its polls are the subscription's watchdog and fallback.
"""

from __future__ import annotations

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from ethtwisted.client.follower import Follower
from ethtwisted.client.spool import SpoolError
from ethtwisted.client.subscriber import Subscriber
from ethtwisted.logs import Logger, describe
from ethtwisted.node import NodeError
from ethtwisted.protocol import Block
from ethtwisted.timer import CancellingTimerService

log = Logger(namespace="ethtwisted.client")

DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.05
MAX_NODE_BACKOFF = 10.0
"""Longest wait, in seconds, between two polls of a node that does not answer."""


_RECOVERED = {
    "node": "{node} answers again after {n} failed polls; its head is block {number}",
    "spool": "the spool can be written again after {n} failed polls; the head of {node} is "
    "block {number}",
    "bug": "following {node} again after {n} failed polls; its head is block {number}",
}


class Poller(CancellingTimerService):
    """
    Runs L{Follower.follow} every C{interval} seconds, never two at once.  A poll never fails:
    when the node does not answer, the next polls wait longer (doubling, up to
    C{max_backoff}); the node going away and coming back are logged once each.  With a
    C{subscriber}, each poll is its L{Subscriber.poll}, and the subscriber runs while this does.
    """

    def __init__(
        self,
        follower: Follower,
        clock: IReactorTime,
        interval: float = DEFAULT_INTERVAL,
        max_backoff: float = MAX_NODE_BACKOFF,
        subscriber: Subscriber | None = None,
    ) -> None:
        super().__init__(interval, self.poll, clock)
        self.follower = follower
        self.subscriber = subscriber
        self.max_backoff = max(max_backoff, interval)
        self.backoff = backoffPolicy(
            initialDelay=interval, maxDelay=self.max_backoff, factor=2.0, jitter=lambda: 0.0
        )
        """The wait after the n-th failed poll in a row (0 for the first): doubling, no jitter."""
        self.trouble: str | None = None
        self.trouble_kind: str | None = None
        """Whose the trouble is: C{node}, C{spool} or C{bug}."""
        self.failures = 0
        self.polls = 0

    def startService(self) -> None:
        # Subscribe before the first poll, which the timer makes as it starts.
        if self.subscriber is not None:
            self.subscriber.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        if self.subscriber is None:
            return stopped
        both = gatherResults([stopped, self.subscriber.stop()], consumeErrors=True)
        return both.addCallback(lambda _: None)

    def poll(self) -> Deferred[None]:
        """
        One poll, and the wait after it when the node is in trouble; never fails.
        """
        return Deferred.fromCoroutine(self._poll())

    @property
    def node(self) -> str:
        return str(self.follower.node.description)

    async def _poll(self) -> None:
        self.polls += 1
        try:
            if self.subscriber is None:
                head = await self.follower.follow()
            else:
                head = await self.subscriber.poll()
        except CancelledError:
            return
        except NodeError as e:
            self._poll_failed(describe(e), "node")
        except SpoolError as e:
            self._poll_failed(f"cannot write the spool: {e}", "spool")
        except Exception:
            if self.trouble_kind != "bug":
                log.failure("bug while following {node}", node=self.node)
            self._poll_failed("internal error", "bug")
        else:
            self._answered(head)
            return
        delay = self.backoff(self.failures - 1)
        try:
            await deferLater(self.clock, delay)
        except CancelledError:
            return

    def _answered(self, head: Block) -> None:
        if self.trouble_kind is not None:
            log.info(_RECOVERED[self.trouble_kind], node=self.node, n=self.failures,
                     number=head.number)  # fmt: skip
        elif self.polls == 1:
            log.info("following {node}; its head is block {number}", node=self.node,
                     number=head.number)  # fmt: skip
        self.trouble = None
        self.trouble_kind = None
        self.failures = 0

    def _poll_failed(self, reason: str, kind: str) -> None:
        self.failures += 1
        if self.trouble is None or kind != self.trouble_kind:
            if kind == "node":
                log.warn(
                    "node {node} does not serve us: {reason}; retrying (every {cap:g} s at most)",
                    node=self.node,
                    reason=reason,
                    cap=self.max_backoff,
                )
            elif kind == "spool":
                log.error("{reason}; retrying (every {cap:g} s at most)", reason=reason,
                          cap=self.max_backoff)  # fmt: skip
        else:
            log.debug("poll failed again: {reason}", reason=reason)
        self.trouble = reason
        self.trouble_kind = kind
