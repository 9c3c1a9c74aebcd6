"""
Delivery: L{Delivery} sends the outbox over one connection to a server at a time, which
L{ReconnectingService} keeps up through a L{ServerList}; L{ClientProtocol} is that connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import ILogObserver, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from ethtwisted.client.failover import DEFAULT_ACK_TIMEOUT, Prober, ServerList
from ethtwisted.client.outbox import Outbox
from ethtwisted.frames import Ack, ControlFrame, Hello, Ping, Pong, Refusal, Status, Welcome
from ethtwisted.framing import FrameProtocol
from ethtwisted.logs import Logger, Trouble, describe, log_observer
from ethtwisted.protocol import ProtocolError

log = Logger(namespace="ethtwisted.client")

WELCOME_TIMEOUT = 1.0
"""Seconds a client whose hello listed features waits for the welcome before it sends payloads;
without one by then, the server is taken for one that knows no features, and not waited for on
the next connections to it."""


class ClientProtocol(FrameProtocol):
    """
    The connection to the server: payloads (and sightings, status, pongs) out,
    acknowledgements (and the welcome, pings) in.
    """

    transport: Any
    """A TCP or TLS transport: it can abort."""

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
        elif isinstance(frame, Welcome):
            self.delivery.welcomed(self, frame.features)
        elif isinstance(frame, Ping):
            self.delivery.pinged(self, frame)
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


@implementer(ILogObserver)
def _as_debug(event: dict[str, Any]) -> None:
    log_observer(dict(event, log_level=LogLevel.debug))


class ReconnectingService(ClientService):
    """
    C{ClientService} over a L{ServerList}.  With a single server, it waits as C{retryPolicy}
    says before it connects again; with several, it connects again at once (the server list
    then goes to a server that has not failed, or waits for one to acknowledge a probe, and
    the probes back off).  Its note on every retry is a debug message: the server list says
    once per server and reason that a server cannot be reached.
    """

    # ClientService (Twisted 26) takes no logger and has no public way to quiet its note
    # ("Scheduling retry ..."), logged at info on every attempt through this class attribute,
    # which its __init__ hands to its state machine.  This is the one place that relies on it;
    # test_reconnecting_service_backs_off_and_reports_once fails if Twisted renames it.
    _log = Logger(observer=_as_debug)

    def __init__(
        self,
        servers: ServerList,
        factory: Factory,
        retryPolicy: Callable[[int], float],  # noqa: N803 -- ClientService's name
        clock: IReactorTime,
    ) -> None:
        policy = retryPolicy if len(servers) == 1 else _at_once
        super().__init__(servers, factory, retryPolicy=policy, clock=clock)


def _at_once(attempt: int) -> float:
    return 0.0


class Delivery:
    """
    Sends the outbox over one connection at a time (C{ClientService} makes them, through the
    L{ServerList}): on connect a hello, then every payload not acknowledged yet, in order, then
    each new one as it is queued; an acknowledgement removes its payload from the outbox.

    When the hello lists features, the payloads wait for the server's welcome (at most
    C{WELCOME_TIMEOUT} seconds; a server that sends none knows none, and gets what a client
    without features sends), so that those sent again carry their sightings.  A server that
    sent no welcome on its last connection is not waited for: its payloads go at once.  What a
    welcome lists is then used on that connection: each payload's sighting right before it
    (C{sighting}), L{send_status} (C{status}), a pong for each ping (C{ping}).

    With several servers listed, the server in use fails when its connection fails, when it
    refuses this client, or when what it was sent has waited C{ack_timeout} seconds with no
    acknowledgement arriving: the client leaves it, and the next connection goes to the first
    listed server that has not failed (L{ServerList}), which gets everything unacknowledged.  A
    L{Prober} probes each server that failed, and the client goes back to one listed before
    the server in use once it acknowledges a probe.  Each switch is logged once.
    """

    def __init__(
        self,
        outbox: Outbox,
        servers: ServerList,
        clock: IReactorTime,
        hello: Hello | None = None,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
    ) -> None:
        self.outbox = outbox
        self.servers = servers
        self.clock = clock
        self.hello = hello
        self.ack_timeout = ack_timeout
        self.protocol: ClientProtocol | None = None
        self.features: frozenset[str] = frozenset()
        """What the server in use welcomed, of what the hello listed."""
        self.welcome_listeners: list[Callable[[frozenset[str]], None]] = []
        """Called with the features of each welcome."""
        self._welcome_wait: IDelayedCall | None = None
        self._no_welcome_from: set[int] = set()
        """The servers (by index) that sent no welcome on their last connection."""
        self.in_use: str | None = None
        """The server connected to now, if any."""
        self.stopping = False
        self.refusal: str | None = None
        """Why the server last refused this client, until a server acknowledges."""
        self.connection_listeners: list[Callable[[bool], None]] = []
        """Called with C{True} on each connection to a server, C{False} when it is lost."""
        self.switch_listeners: list[Callable[[str, str], None]] = []
        """Called with the server left and the server now in use, on each switch."""
        self._refused_by = {
            name: Trouble(log, LogLevel.error, "{server} refused this client: {reason}",
                          "{server} accepts this client again")
            for name, _ in servers.servers
        }  # fmt: skip
        self._leaving: str | None = None
        self._watchdog: IDelayedCall | None = None
        self._last_acked: bytes | None = None
        self.prober: Prober | None = None
        if len(servers) > 1:
            # A probe says hello as a client without features: no welcome, no pings.
            plain = None if hello is None else replace(hello, features=None)
            self.prober = Prober(servers, plain, self._probe_payload, clock, ack_timeout)

    def factory(self) -> ClientFactory:
        return ClientFactory(self)

    def stop(self) -> None:
        """
        The client is stopping: no more probes, no more switches.
        """
        self.stopping = True
        if self.prober is not None:
            self.prober.stop()
        self._stop_watchdog()

    def connected(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        self.in_use = self.servers.name()
        switched = self.servers.arrived()
        for listener in self.connection_listeners:
            listener(True)
        pending = self.outbox.pending()
        if switched is not None:
            left, why = switched
            log.info("now sending to {server} instead of {left} ({why}); {n} unacknowledged "
                     "messages to send", server=self.in_use, left=left, why=why,
                     n=len(pending))  # fmt: skip
            for switch_listener in self.switch_listeners:
                switch_listener(left, self.in_use)
        else:
            (log.debug if self.refusal else log.info)(
                "connected to {server}; sending {n} unacknowledged messages",
                server=self.in_use,
                n=len(pending),
            )
        if self.hello is not None:
            protocol.send_control(self.hello)
            if self.hello.features and self.servers.current not in self._no_welcome_from:
                self._welcome_wait = self.clock.callLater(
                    WELCOME_TIMEOUT, self._no_welcome, protocol
                )
                return
        self._send(protocol, pending)

    def _no_welcome(self, protocol: ClientProtocol) -> None:
        self._welcome_wait = None
        if protocol is self.protocol:
            log.debug("no welcome from {server} within {t:g} s: sending as to a server that "
                      "knows no features, and at once from now on", server=self.in_use,
                      t=WELCOME_TIMEOUT)  # fmt: skip
            self._no_welcome_from.add(self.servers.current)
            self._send(protocol, self.outbox.pending())

    def welcomed(self, protocol: ClientProtocol, features: Sequence[str]) -> None:
        """
        The server welcomed this client: use what it lists of what the hello did, and send
        the payloads that waited for it.
        """
        if protocol is not self.protocol:
            return
        listed = self.hello.features if self.hello is not None else None
        if not listed or self.features:
            raise ProtocolError("unexpected welcome frame")
        self.features = frozenset(features) & frozenset(listed)
        self._no_welcome_from.discard(self.servers.current)
        log.debug("{server} welcomes {features}", server=self.in_use,
                  features=", ".join(sorted(self.features)) or "no features")  # fmt: skip
        if self._welcome_wait is not None:
            self._welcome_wait.cancel()
            self._welcome_wait = None
            self._send(protocol, self.outbox.pending())
        for listener in self.welcome_listeners:
            listener(self.features)

    def pinged(self, protocol: ClientProtocol, ping: Ping) -> None:
        """
        Answer a ping at once with this client's clock, in ms.
        """
        if "ping" not in self.features:
            raise ProtocolError("ping frame without a welcome listing ping")
        protocol.send_control(Pong(ping.id, round(self.clock.seconds() * 1000)))

    def send_status(self, status: Status) -> bool:
        """
        Send C{status} if the server in use welcomed status frames; whether it was sent.
        """
        if self.protocol is None or "status" not in self.features:
            return False
        self.protocol.send_control(status)
        return True

    def disconnected(self, protocol: ClientProtocol, reason: Failure) -> None:
        if self.protocol is not protocol:
            return
        self.protocol = None
        server, self.in_use = self.in_use, None
        self.features = frozenset()
        if self._welcome_wait is not None:
            self._welcome_wait.cancel()
            self._welcome_wait = None
        self._stop_watchdog()
        for listener in self.connection_listeners:
            listener(False)
        leaving, self._leaving = self._leaving, None
        if self.stopping or leaving is not None:
            return
        why = protocol.dropped or describe(reason)
        log.warn("lost the connection to {server}: {reason}; {n} messages unacknowledged",
                 server=server, reason=why, n=len(self.outbox))  # fmt: skip
        self.servers.failed(self.servers.current, f"lost the connection: {why}")

    def _leave(self, why: str) -> None:
        """
        Leave the server in use, the L{ServerList} already told why.
        """
        self._leaving = why
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abortConnection()

    def _send(self, protocol: ClientProtocol, payloads: Sequence[bytes]) -> None:
        sightings = "sighting" in self.features
        for payload in payloads:
            sighting = self.outbox.sighting(payload) if sightings else None
            if sighting is not None:
                protocol.send_control(sighting)
            protocol.sendString(payload)
        if payloads and self._watchdog is None and len(self.servers) > 1:
            self._watchdog = self.clock.callLater(self.ack_timeout, self._unacknowledged)

    def queued(self, payloads: Sequence[bytes]) -> None:
        """
        The outbox queued C{payloads}: send them now, unless there is no connection or it
        waits for the welcome (then they go with the others when it is over).
        """
        if self.protocol is not None and self._welcome_wait is None:
            self._send(self.protocol, payloads)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            if self._watchdog.active():
                self._watchdog.cancel()
            self._watchdog = None

    def _unacknowledged(self) -> None:
        self._watchdog = None
        if self.protocol is None or self.stopping:
            return
        why = f"no acknowledgement for {self.ack_timeout:g} s"
        log.warn("{server} acknowledged nothing for {t:g} s, {n} messages waiting: leaving it",
                 server=self.in_use, t=self.ack_timeout, n=len(self.outbox))  # fmt: skip
        self.servers.failed(self.servers.current, why)
        self._leave(why)

    def remember_acked(self, payload: bytes) -> None:
        """
        The outbox let go of acknowledged C{payload}: the next probe sends it.
        """
        self._last_acked = payload

    def _probe_payload(self) -> bytes | None:
        # A probe sends no sighting: what was acknowledged is stored with its own already,
        # while a payload still waiting would be stored as seen when the probe arrived.
        return self._last_acked or self.outbox.first()

    def server_answered(self, index: int) -> None:
        """
        Server C{index} acknowledged a probe: leave the server in use for it if it is listed
        before.
        """
        if self.protocol is None or self.stopping or index >= self.servers.current:
            return
        self.servers.go_back("it acknowledges again")
        self._leave(f"{self.servers.name(index)} acknowledges again")

    def acked(self, sha256: str) -> None:
        self._stop_watchdog()
        if not self.outbox.ack(sha256):
            log.debug("acknowledgement of {sha256}, not queued", sha256=sha256)
        self.servers.acknowledged()
        if len(self.outbox) and self.protocol is not None and len(self.servers) > 1:
            self._watchdog = self.clock.callLater(self.ack_timeout, self._unacknowledged)
        if self.in_use is not None:
            self._refused_by[self.in_use].ended(server=self.in_use)
        self.refusal = None

    def refused(self, reason: str) -> None:
        server = self.in_use or self.servers.name()
        self._refused_by[server].say(reason, server=server)
        self.refusal = reason
        why = f"refused this client: {reason}"
        self.servers.failed(self.servers.current, why)
        self._leave(why)
