"""
Delivery to older servers: a new connection per payload, sent and closed, no acknowledgement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ethtwisted.client.outbox import Outbox
from ethtwisted.frames import ControlFrame
from ethtwisted.framing import FrameProtocol
from ethtwisted.logs import Logger, Trouble, describe
from ethtwisted.protocol import payload_hash

log = Logger(namespace="ethtwisted.client")

ONESHOT_TIMEOUT = 30.0
"""Seconds an older server has to take one message (connect, send, close)."""


class _OneShotProtocol(FrameProtocol):
    """
    The older client's exchange: one payload, then close.
    """

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.sendString(self.payload)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ConnectionDone):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def controlReceived(self, frame: ControlFrame) -> None:
        pass  # a newer server's acknowledgement: not awaited


class OneShotDelivery(Service):
    """
    Delivery to older servers: a new connection per payload, which is sent and closed, without
    waiting for an acknowledgement; the outbox is worked through in order.  Each payload is
    tried on the C{servers} in order (their descriptions and endpoints) and goes to the first
    that takes it; when none does, it is tried again after C{retry_policy(attempt)} seconds.
    Trouble with a server is logged once, and once when it takes messages again; a change of
    the server that takes them, once.
    """

    def __init__(
        self,
        outbox: Outbox,
        servers: Sequence[tuple[str, IStreamClientEndpoint]],
        clock: IReactorTime,
        retry_policy: Callable[[int], float],
        timeout: float = ONESHOT_TIMEOUT,
    ) -> None:
        self.outbox = outbox
        self.servers = list(servers)
        self.clock = clock
        self.retry_policy = retry_policy
        self.timeout = timeout
        self.in_use = 0
        """The server that took the last payload (before any, the first listed)."""
        self._trouble = [
            Trouble(log, LogLevel.warn, "cannot send to {server}: {reason}",
                    "{server} takes messages again")
            for _ in servers
        ]  # fmt: skip
        self._sending: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._kick()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._sending is not None:
            self._sending.cancel()
        return succeed(None)

    def queued(self, payloads: Sequence[bytes]) -> None:
        """
        The outbox queued C{payloads}: send what is queued, unless that is under way already
        (it goes on to them).
        """
        self._kick()

    def _kick(self) -> None:
        if not self.running or self._sending is not None or not len(self.outbox):
            return
        d = Deferred.fromCoroutine(self._drain())
        if not d.called:
            self._sending = d
            d.addBoth(self._drained)
        d.addErrback(lambda f: log.failure("bug while sending", f))

    def _drained(self, result: object) -> object:
        self._sending = None
        return result

    async def _drain(self) -> None:
        failures = 0
        while self.running and (payload := self.outbox.first()) is not None:
            for index, (server, endpoint) in enumerate(self.servers):
                try:
                    await self._send_one(endpoint, payload)
                except CancelledError:
                    return
                except Exception as e:
                    self._trouble[index].say(describe(e), server=server)
                    continue
                self._took(index)
                break
            else:
                failures += 1
                try:
                    await deferLater(self.clock, self.retry_policy(failures))
                except CancelledError:
                    return
                continue
            failures = 0
            self.outbox.ack(payload_hash(payload))

    async def _send_one(self, endpoint: IStreamClientEndpoint, payload: bytes) -> None:
        protocol = _OneShotProtocol(payload)
        connecting = connectProtocol(endpoint, protocol)
        await connecting.addTimeout(self.timeout, self.clock)
        await protocol.done.addTimeout(self.timeout, self.clock)

    def _took(self, index: int) -> None:
        server = self.servers[index][0]
        self._trouble[index].ended(server=server)
        if index != self.in_use:
            log.info("now sending to {server} instead of {left}", server=server,
                     left=self.servers[self.in_use][0])  # fmt: skip
            self.in_use = index
