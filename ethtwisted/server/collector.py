"""
The collector as a service: wait for the stores, listen, and stop in order (stop listening and
reading, let what was read be stored and acknowledged, then close the connections and stores).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import TimeoutError
from twisted.internet.interfaces import IReactorCore, IStreamServerEndpoint

from ethtwisted.logs import Logger, describe
from ethtwisted.server.factory import ServerFactory
from ethtwisted.startup import StartingService, listen_on
from ethtwisted.storage import wait_for

log = Logger(namespace="ethtwisted.server")

STOP_TIMEOUT = 10.0


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

    async def start_up(self) -> None:
        ingest = self.factory.ingest
        await wait_for(ingest.store.start, self.store_name, self.wait, self.factory.reactor)
        if ingest.counters is not None:
            # Redis may come later: messages wait to be counted (and acknowledged) until then.
            ingest.counters.ping().addErrback(
                lambda f: log.warn("Redis does not answer yet: {reason}", reason=describe(f))
            )
        self.ports = await listen_on(self.endpoints, self.factory, "collecting")

    async def shut_down(self) -> None:
        ingest = self.factory.ingest
        # Read no more from anyone, but let what was read be stored and acknowledged.
        for connection in self.factory.connections:
            ingest.remove_producer(connection.flow.for_the_stores)
            connection.flow.pause("stopping")
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
        if ingest.counters is not None:
            await ingest.counters.close()
