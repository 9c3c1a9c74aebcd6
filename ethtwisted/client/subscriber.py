"""
Pushed heads: L{Subscriber} keeps a new-heads subscription to the node in use and hands each
header to the follower the moment it arrives; the poller's polls are its watchdog.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ethtwisted.client.follower import Follower
from ethtwisted.client.spool import SpoolError
from ethtwisted.logs import Logger, Trouble, describe
from ethtwisted.node import NodeError, RefusalError
from ethtwisted.node.interfaces import IHeadSource, IHeadSubscription
from ethtwisted.node.lacking import ASK_AGAIN_MOST, Lacking, says_missing
from ethtwisted.protocol import Block

log = Logger(namespace="ethtwisted.client")

SUBSCRIBE_MODES = ("auto", "off")
REMEMBERED = 256
"""Hashes of pushed heads remembered, to tell whether a head a poll sees was pushed."""


class Subscriber:
    """
    A subscription to the new heads of the follower's node, where the transport allows (IPC,
    WebSocket), made again whenever it ends, and after a failover on the node now in use.

    L{poll} is the poller's poll while there is a subscriber.  It asks the node for its head as
    every poll does; a head that the subscription has not delivered is left to it for one
    poll, and delivered by the next poll if it still has not (a miss).  A subscription that
    missed a head, while the chain moved on, is silent: it is dropped and made again on a new
    connection.  A quiet chain misses nothing, so its subscription lives on.  Going quiet and
    coming back are logged once each.

    A node that answers C{eth_subscribe} with "method not found" is polled, and asked to
    subscribe again a minute later, then after twice as long each time, up to ten minutes
    (L{Lacking}); at once on another node.  That is logged once, and once when it subscribes.
    Any other failure to subscribe is tried again at the next poll.
    """

    def __init__(self, follower: Follower, clock: IReactorTime) -> None:
        self.follower = follower
        self.clock = clock
        self.subscription: IHeadSubscription | None = None
        self.quiet: str | None = None
        """Why no subscription delivers heads now, after one did or was asked to."""
        self.misses = 0
        self.resubscriptions = 0
        self.miss_listeners: list[Callable[[], None]] = []
        self.resubscribe_listeners: list[Callable[[], None]] = []
        self.lag_listeners: list[Callable[[float], None]] = []
        """Called, for each head a poll sees, with the seconds from the poll seeing it to the
        subscription delivering it (0 when the subscription was first)."""
        self._subscribing: Deferred[IHeadSubscription | None] | None = None
        self._cannot_push: str | None = None
        self._lacking = Lacking(clock)
        self._lacking_node: str | None = None
        self._lacks = Trouble(log, LogLevel.info,
                              "{node} has no eth_subscribe ({reason}): polling it, and asking "
                              "again in {delay:g} s, then less often (at most every {most:g} s)",
                              "{node} subscribes to new heads now")  # fmt: skip
        self._pushed: dict[str, float] = {}
        self._pending: tuple[str, float, int] | None = None
        self._polls = 0
        self._last_polled: str | None = None
        self._generation = 0
        self._stopped = False

    @property
    def node(self) -> str:
        return str(self.follower.node.description)

    @property
    def active(self) -> bool:
        return self.subscription is not None

    def start(self) -> None:
        self._stopped = False
        self._subscribe()

    def stop(self) -> Deferred[None]:
        self._stopped = True
        if self._subscribing is not None:
            self._subscribing.cancel()
        return self._drop()

    async def poll(self) -> Block:
        """
        One watchdog poll: see to the subscription, ask the node for its head, and follow it
        unless it is left to the subscription for this poll.
        """
        self._polls += 1
        if self.subscription is not None and self.subscription.description != self.node:
            log.info("now subscribing to {node}, the node in use", node=self.node)
            self._drop()
        self._subscribe()
        moves = self.follower.moves
        head = await self.follower.node.head()
        now = self.clock.seconds()
        if self._watch(head, now):
            await self.follower.follow_head(head, "poll", now, moves)
        return head

    # -- inside

    def _watch(self, head: Block, now: float) -> bool:
        """
        Whether the poll that saw C{head} now delivers it.
        """
        first_sight, self._last_polled = head.hash != self._last_polled, head.hash
        if head.hash in self._pushed:
            if first_sight:
                self._lag(0.0)
            self._pending = None
            return True
        checkpoint = self.follower.checkpoint
        handed = checkpoint.recent.get(head.number) == head.hash
        if self.subscription is None or handed:
            self._pending = None
            return True
        if self._pending is None:
            self._pending = (head.hash, now, self._polls)
            return False
        if self._pending[2] == self._polls:
            return False
        self.misses += 1
        for listener in self.miss_listeners:
            listener()
        self._pending = None
        self._went_quiet(
            f"it did not deliver block {head.number} within a poll interval, which the poll "
            "delivers; subscribing again on a new connection"
        )
        self._drop()
        self._resubscribe()
        return True

    def _lag(self, seconds: float) -> None:
        for listener in self.lag_listeners:
            listener(seconds)

    def _subscribe(self) -> None:
        if self._stopped or self._subscribing is not None or self.subscription is not None:
            return
        node = self.follower.node
        description = self.node
        if not IHeadSource.providedBy(node) or self._cannot_push == description:
            return
        if self._lacking_node != description:
            self._lacking.clear()
            self._lacking_node = description
            self._lacks.reason = None
        elif self._lacking.skip("eth_subscribe"):
            return
        self._generation += 1
        generation = self._generation
        d: Deferred[IHeadSubscription | None] = node.subscribe_heads(
            lambda block: self._header(generation, block)
        )
        self._subscribing = d
        d.addCallbacks(self._subscribed, self._not_subscribed,
                       callbackArgs=(description,), errbackArgs=(description,))  # fmt: skip
        d.addErrback(lambda f: log.failure("bug while subscribing to {node}", f, node=description))

    def _subscribed(self, subscription: IHeadSubscription | None, description: str) -> None:
        self._subscribing = None
        if subscription is None:
            self._cannot_push = description
            log.info("{node} cannot push new heads: polling it", node=description)
            return
        if self._stopped:
            subscription.close().addErrback(self._log_close)
            return
        self.subscription = subscription
        subscription.ended.addBoth(self._ended, subscription)
        subscription.ended.addErrback(
            lambda f: log.failure(
                "bug after the subscription to {node} ended", f, node=description
            )
        )
        if self._lacking.found("eth_subscribe"):
            self._lacks.ended(node=description)
        elif self.quiet is None:
            log.info("subscribed to the new heads of {node}", node=description)
        else:
            log.debug("subscribed to the new heads of {node} again", node=description)
        # Heads made while there was no subscription come by no notification: catch up.
        catch_up = Deferred.fromCoroutine(self.follower.follow())
        catch_up.addErrback(self._follow_failed, "catching up")

    def _not_subscribed(self, failure: Failure, description: str) -> None:
        self._subscribing = None
        if failure.check(CancelledError):
            return
        if not failure.check(NodeError):
            log.failure("bug while subscribing to {node}", failure, node=description)
        if isinstance(failure.value, RefusalError) and says_missing(failure.value.error):
            delay = self._lacking.missing("eth_subscribe")
            if not self._lacks.say(describe(failure), node=description, delay=delay,
                                   most=ASK_AGAIN_MOST):  # fmt: skip
                log.debug("{node} still has no eth_subscribe: asking again in {delay:g} s",
                          node=description, delay=delay)  # fmt: skip
            return
        self._went_quiet(f"cannot subscribe: {describe(failure)}; polling meanwhile, "
                         "trying again at each poll")  # fmt: skip

    def _ended(self, result: object, subscription: IHeadSubscription) -> None:
        if subscription is not self.subscription:
            return
        self.subscription = None
        if self._stopped:
            return
        reason = "it ended"
        if isinstance(result, Failure):
            if not result.check(NodeError):
                log.failure("bug in the subscription to {node}", result, node=self.node)
            reason = describe(result)
        self._went_quiet(f"{reason}; subscribing again")
        self._resubscribe()

    def _resubscribe(self) -> None:
        self.resubscriptions += 1
        for listener in self.resubscribe_listeners:
            listener()
        self._subscribe()

    def _went_quiet(self, reason: str) -> None:
        if self.quiet is None:
            log.warn("no new heads by subscription from {node}: {reason}", node=self.node,
                     reason=reason)  # fmt: skip
        else:
            log.debug("subscription to {node} still quiet: {reason}", node=self.node,
                      reason=reason)  # fmt: skip
        self.quiet = reason

    def _header(self, generation: int, block: Block) -> None:
        now = self.clock.seconds()
        if generation == self._generation and self.quiet is not None:
            log.info("new heads from {node} arrive by subscription again, block {number} first",
                     node=self.node, number=block.number)  # fmt: skip
            self.quiet = None
        self._pushed[block.hash] = now
        if len(self._pushed) > REMEMBERED:
            del self._pushed[next(iter(self._pushed))]
        if self._pending is not None and self._pending[0] == block.hash:
            self._lag(max(now - self._pending[1], 0.0))
            self._pending = None
        pushed = Deferred.fromCoroutine(self.follower.pushed(block, now))
        pushed.addErrback(self._follow_failed, f"following pushed block {block.number}")

    def _follow_failed(self, failure: Failure, what: str) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(NodeError, SpoolError):
            # The poller's next poll meets the same trouble, and says so.
            log.debug("{what}: {reason}; the polls go on", what=what,
                      reason=describe(failure))  # fmt: skip
            return
        log.failure("bug while {what}", failure, what=what)

    def _drop(self) -> Deferred[None]:
        subscription, self.subscription = self.subscription, None
        self._pending = None
        if subscription is None:
            return succeed(None)
        return subscription.close().addErrback(self._log_close)

    def _log_close(self, failure: Failure) -> None:
        log.debug("closing a subscription: {reason}", reason=describe(failure))
