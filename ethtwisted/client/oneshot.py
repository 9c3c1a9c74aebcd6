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
from twisted.logger import Logger
from twisted.python.failure import Failure

from ethtwisted.client.outbox import Outbox
from ethtwisted.logs import describe, log_observer
from ethtwisted.protocol import ControlFrame, FrameProtocol, payload_hash

log = Logger(namespace="ethtwisted.client", observer=log_observer)

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
    waiting for an acknowledgement; the outbox is worked through in order.  A failed attempt
    is retried after C{retry_policy(attempt)} seconds.
    """

    def __init__(
        self,
        outbox: Outbox,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        server: str,
        retry_policy: Callable[[int], float],
        timeout: float = ONESHOT_TIMEOUT,
    ) -> None:
        self.outbox = outbox
        self.endpoint = endpoint
        self.clock = clock
        self.server = server
        self.retry_policy = retry_policy
        self.timeout = timeout
        self._sending: Deferred[None] | None = None
        outbox.listeners.append(self._kick)

    def startService(self) -> None:
        super().startService()
        self._kick()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._sending is not None:
            self._sending.cancel()
        return succeed(None)

    def _kick(self, new: Sequence[bytes] = ()) -> None:
        if not self.running or self._sending is not None or not len(self.outbox):
            return
        d = Deferred.fromCoroutine(self._drain())
        if not d.called:
            self._sending = d
            d.addBoth(self._drained)
        d.addErrback(lambda f: log.failure("bug while sending to {server}", f,
                                           server=self.server))  # fmt: skip

    def _drained(self, result: object) -> object:
        self._sending = None
        return result

    async def _drain(self) -> None:
        failures = 0
        trouble: str | None = None
        while self.running and (payload := self.outbox.first()) is not None:
            protocol = _OneShotProtocol(payload)
            try:
                connecting = connectProtocol(self.endpoint, protocol)
                await connecting.addTimeout(self.timeout, self.clock)
                await protocol.done.addTimeout(self.timeout, self.clock)
            except CancelledError:
                return
            except Exception as e:
                failures += 1
                reason = describe(e)
                if reason != trouble:
                    log.warn("cannot send to {server}: {reason}; retrying", server=self.server,
                             reason=reason)  # fmt: skip
                trouble = reason
                try:
                    await deferLater(self.clock, self.retry_policy(failures))
                except CancelledError:
                    return
                continue
            if trouble is not None:
                log.info("{server} takes messages again", server=self.server)
                trouble = None
            failures = 0
            self.outbox.ack(payload_hash(payload))
