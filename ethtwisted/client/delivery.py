"""
Delivery: L{Delivery} sends the outbox over one connection to the server at a time, which
L{ReconnectingService} keeps up; L{ClientProtocol} is that connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from ethtwisted.client.outbox import Outbox
from ethtwisted.logs import describe, log_observer
from ethtwisted.protocol import Ack, ControlFrame, FrameProtocol, Hello, Refusal

log = Logger(namespace="ethtwisted.client", observer=log_observer)


class ClientProtocol(FrameProtocol):
    """
    The connection to the server: payloads out, acknowledgements in.
    """

    def __init__(self, delivery: Delivery) -> None:
        super().__init__()
        self.delivery = delivery

    def connectionMade(self) -> None:
        self.delivery.connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.delivery.disconnected(self, reason)

    def controlReceived(self, frame: ControlFrame) -> None:
        if isinstance(frame, Ack):
            self.delivery.acked(frame.sha256)
        elif isinstance(frame, Refusal):
            self.delivery.refused(frame.reason)
        else:
            super().controlReceived(frame)


class ClientFactory(Factory):
    """
    Builds the L{ClientProtocol}s of one L{Delivery}.
    """

    noisy = False

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery

    def buildProtocol(self, addr: Any) -> ClientProtocol:
        return ClientProtocol(self.delivery)


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """
    An endpoint that tells C{failed} why each connection attempt failed.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, failed: Callable[[Failure], None]) -> None:
        self.endpoint = endpoint
        self.failed = failed

    def connect(self, protocolFactory: Any) -> Deferred[Any]:  # noqa: N803 -- Twisted's name
        d: Deferred[Any] = self.endpoint.connect(protocolFactory)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> Failure:
        self.failed(failure)
        return failure


@implementer(ILogObserver)
def _as_debug(event: dict[str, Any]) -> None:
    log_observer(dict(event, log_level=LogLevel.debug))


class ReconnectingService(ClientService):
    """
    C{ClientService} whose note on every retry is a debug message: L{Delivery} says once that
    the server cannot be reached.
    """

    # ClientService (Twisted 26) takes no logger and has no public way to quiet its note
    # ("Scheduling retry ..."), logged at info on every attempt through this class attribute,
    # which its __init__ hands to its state machine.  This is the one place that relies on it;
    # test_reconnecting_service_backs_off_and_reports_once fails if Twisted renames it.
    _log = Logger(observer=_as_debug)


class Delivery:
    """
    Sends the outbox over one connection at a time (C{ClientService} makes them): on connect a
    hello, then every payload not acknowledged yet, in order, then each new one as it is
    queued; an acknowledgement removes its payload from the outbox.
    """

    def __init__(self, outbox: Outbox, server: str, hello: Hello | None = None) -> None:
        self.outbox = outbox
        self.server = server
        self.hello = hello
        self.protocol: ClientProtocol | None = None
        self.stopping = False
        self.unreachable: str | None = None
        self.refusal: str | None = None
        self.connection_listeners: list[Callable[[bool], None]] = []
        """Called with C{True} on each connection to the server, C{False} when it is lost."""
        outbox.listeners.append(self._queued)

    def factory(self) -> ClientFactory:
        return ClientFactory(self)

    def endpoint(self, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
        """
        C{endpoint}, with its failures to connect reported here.
        """
        return _ReportingEndpoint(endpoint, self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        reason = describe(failure)
        if reason != self.unreachable:
            log.warn("cannot connect to {server}: {reason}; retrying", server=self.server,
                     reason=reason)  # fmt: skip
        self.unreachable = reason

    def connected(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        self.unreachable = None
        for listener in self.connection_listeners:
            listener(True)
        pending = self.outbox.pending()
        (log.debug if self.refusal else log.info)(
            "connected to {server}; sending {n} unacknowledged messages",
            server=self.server,
            n=len(pending),
        )
        if self.hello is not None:
            protocol.send_control(self.hello)
        for payload in pending:
            protocol.sendString(payload)

    def disconnected(self, protocol: ClientProtocol, reason: Failure) -> None:
        if self.protocol is protocol:
            self.protocol = None
            for listener in self.connection_listeners:
                listener(False)
        if self.stopping or self.refusal is not None:
            return
        log.warn(
            "lost the connection to {server}: {reason}; {n} messages unacknowledged",
            server=self.server,
            reason=protocol.dropped or describe(reason),
            n=len(self.outbox),
        )

    def _queued(self, payloads: Sequence[bytes]) -> None:
        if self.protocol is not None:
            for payload in payloads:
                self.protocol.sendString(payload)

    def acked(self, sha256: str) -> None:
        if self.refusal is not None:
            log.info("{server} accepts this client again", server=self.server)
            self.refusal = None
        if not self.outbox.ack(sha256):
            log.debug("acknowledgement of {sha256}, not queued", sha256=sha256)

    def refused(self, reason: str) -> None:
        if reason != self.refusal:
            log.error("{server} refused this client: {reason}", server=self.server,
                      reason=reason)  # fmt: skip
        self.refusal = reason
