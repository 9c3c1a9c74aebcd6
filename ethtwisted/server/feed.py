"""
The state events from their durable log (C{eth_state_events}) to the webhooks
(L{WebhookFeed}).  One server at a time delivers to a set of webhooks: it holds a lease in
C{eth_webhooks}, renewed every second, hands each event after the last one delivered to its
L{WebhookService} and records, with each renewal, how far every URL has got.  A server that
stops hands the delivery on at once; one that dies, when its lease runs out.  So each event
reaches every URL at least once and in order, whichever server recorded it and whichever
servers restart meanwhile.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel
from zope.interface import implementer

from ethtwisted.interfaces import IDeliveries, IEventSink
from ethtwisted.logs import Logger, Trouble, describe
from ethtwisted.records import StateEvent
from ethtwisted.server.webhooks import WebhookService, WebhookURL
from ethtwisted.storage import is_conflict

log = Logger(namespace="ethtwisted.server")

FEED_INTERVAL = 1.0
LEASE = 10.0
"""Seconds a server holds the delivery without renewing it; then another takes over."""
BATCH = 500
MAX_BATCHES = 20
"""Batches of events read per run at most; what is left waits for the next."""


def hook_id(urls: Sequence[WebhookURL]) -> str:
    """
    The name of a set of webhooks in C{eth_webhooks}: the SHA256 of its URLs and
    credentials, so the servers given the same URLs share one delivery and no URL is stored.
    """
    text = "\n".join(sorted(f"{u.url!r} {u.authorization!r}" for u in urls))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@implementer(IEventSink)
class WebhookFeed(TimerService):
    """
    Feeds C{webhooks} from the log of C{deliveries}, while this server holds the delivery to
    C{hook}; once C{ready} says the stores are.  Told of an event recorded here (L{publish}),
    it feeds at once rather than at the next second.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        deliveries: IDeliveries,
        webhooks: WebhookService,
        hook: str,
        ready: Callable[[], bool] = lambda: True,
        lease: float = LEASE,
    ) -> None:
        super().__init__(FEED_INTERVAL, self.run)
        self.lease = lease
        self.clock = self.reactor = reactor
        self.deliveries = deliveries
        self.webhooks = webhooks
        self.hook = hook
        self.ready = ready
        self.owner = uuid.uuid4().hex
        self.fed: int | None = None
        """The id of the last event handed to the webhooks; L{None} while another server
        delivers."""
        self.busy = False
        self.again = False
        self.trouble = Trouble(log, LogLevel.warn, "cannot feed the webhooks: {reason}",
                               "feeding the webhooks again")  # fmt: skip

    def publish(self, event: StateEvent) -> None:
        if self.running:
            self.run()

    def run(self) -> Deferred[None]:
        """
        Feed once, or once more after the run under way; never fails.
        """
        if self.busy:
            self.again = True
            return succeed(None)
        if not self.ready():
            return succeed(None)
        return Deferred.fromCoroutine(self._runs())

    async def _runs(self) -> None:
        self.busy = True
        try:
            for _ in range(MAX_BATCHES):
                self.again = False
                await self._feed()
                if not self.again or not self.running:
                    break
        finally:
            self.busy = False

    async def _feed(self) -> None:
        settled = None if self.fed is None else self.webhooks.settled()
        try:
            now = self.reactor.seconds()
            delivered = await self.deliveries.claim(
                self.hook, self.owner, now, self.lease, settled
            )
            if delivered is None:
                if self.fed is not None:
                    log.info("another server delivers the webhooks now")
                    self.fed = None
                    self.webhooks.restart(0)
                return
            if self.fed is None:
                log.debug("delivering the webhooks from event {id} on", id=delivered)
                self.fed = delivered
                self.webhooks.restart(delivered)
            for _ in range(MAX_BATCHES):
                events = await self.deliveries.pending(self.fed, BATCH)
                for event in events:
                    self.webhooks.publish(event)
                    self.fed = event.id
                if len(events) < BATCH:
                    break
        except Exception as e:
            if is_conflict(e):
                log.debug("claiming the webhooks conflicted with another server")
                return
            self.trouble.say(describe(e))
            return
        self.trouble.ended()

    def stopService(self) -> Deferred[None]:
        d: Deferred[None] = super().stopService()
        return d.addCallback(lambda _: self._release())

    def _release(self) -> Deferred[None] | None:
        if self.fed is None:
            return None
        settled, self.fed = self.webhooks.settled(), None
        d = self.deliveries.release(self.hook, self.owner, settled)
        # Not released, the lease runs out by itself.
        return d.addErrback(lambda f: log.debug("webhooks not handed on: {f}", f=describe(f)))
