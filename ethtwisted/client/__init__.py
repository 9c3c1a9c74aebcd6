"""
The following side: poll an Ethereum node, turn every new canonical block into a payload, and
deliver the payloads to an eth-server until each one is acknowledged.

The modules, in the order the data flows: L{follower} follows the chain (backfill, reorgs),
L{poller} runs it every interval and rides out node trouble, L{outbox} holds what the server
has not acknowledged yet (in memory, and in a L{spool} directory when asked), L{delivery}
keeps one connection to a server through C{ClientService}, failing over between the servers
of L{failover}, L{oneshot} talks to older servers instead; L{EthClient}, here, runs them and
stops them in order.  C{ethtwisted.client_tap} builds them and connects them (its C{wire}).
"""

from __future__ import annotations

import contextlib

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime

from ethtwisted.client.delivery import Delivery
from ethtwisted.client.outbox import Outbox
from ethtwisted.client.poller import Poller
from ethtwisted.logs import Logger, describe
from ethtwisted.node.interfaces import INode

log = Logger(namespace="ethtwisted.client")

FLUSH_TIMEOUT = 5.0
"""Seconds a stopping client waits for the server to acknowledge what is still queued."""


class EthClient(MultiService):
    """
    The poller and the delivery over one outbox, and the node's status poller (when the node
    takes raw requests).  Stopping is graceful: polling stops, what is
    queued has C{flush_timeout} seconds to be acknowledged, then the connection closes; what
    is left stays in the spool (when there is one).
    """

    def __init__(
        self,
        poller: Poller,
        delivery: Service,
        connection: Delivery | None,
        outbox: Outbox,
        node: INode,
        clock: IReactorTime,
        flush_timeout: float = FLUSH_TIMEOUT,
        status: Service | None = None,
    ) -> None:
        super().__init__()
        self.poller = poller
        self.delivery = delivery
        self.connection = connection
        self.outbox = outbox
        self.node = node
        self.clock = clock
        self.flush_timeout = flush_timeout
        self.status = status
        delivery.setServiceParent(self)
        poller.setServiceParent(self)
        if status is not None:
            status.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self.poller.stopService()
        if self.status is not None:
            await self.status.stopService()
        if len(self.outbox):
            log.info("waiting up to {t:g} s for {n} messages to be acknowledged",
                     t=self.flush_timeout, n=len(self.outbox))  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await self.outbox.empty().addTimeout(self.flush_timeout, self.clock)
        if self.connection is not None:
            self.connection.stop()
        await self.delivery.stopService()
        try:
            await self.node.close()
        except Exception as e:
            log.debug("closing the node: {reason}", reason=describe(e))
        left = len(self.outbox)
        if left and self.outbox.spool is not None:
            log.info("{n} unacknowledged messages kept in the spool {directory}", n=left,
                     directory=self.outbox.spool.directory)  # fmt: skip
        elif left:
            log.warn("{n} unacknowledged messages lost: no --spool given", n=left)
        await self.outbox.close()
        for service in self:
            if service.running and service not in (self.poller, self.delivery, self.status):
                await service.stopService()
