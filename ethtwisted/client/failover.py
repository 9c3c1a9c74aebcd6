"""
Failover between the servers listed with C{--server}: L{ServerList} is the one endpoint the
delivery's C{ClientService} connects through, to the first listed server that has not failed;
L{Prober} finds out, in the background, when a server that failed acknowledges again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from ethtwisted.frames import Ack, ControlFrame, Hello, Refusal
from ethtwisted.framing import FrameProtocol
from ethtwisted.logs import Logger, Trouble, describe
from ethtwisted.protocol import payload_hash

log = Logger(namespace="ethtwisted.client")

DEFAULT_ACK_TIMEOUT = 30.0
"""Seconds a server may leave what it was sent unacknowledged before the client leaves it."""
PROBE_INITIAL = 0.5
PROBE_MAX = 30.0
"""A server's next probe comes PROBE_INITIAL * 2**n seconds after its n-th failure in a row,
at most PROBE_MAX (1, 2, 4, 8, 16, then 30 s), each with up to a second of random jitter."""


@implementer(IStreamClientEndpoint)
class ServerList:
    """
    The servers a client delivers to, in order of preference, as one endpoint.

    A server is usable until it fails (L{failed}: the connection to it cannot be made or is
    lost, it refuses this client, it leaves what it was sent unacknowledged), and again once it
    acknowledges a probe (L{answered}).  L{connect} connects to the first usable server that
    takes the connection; when none is usable, it waits until one is.  So the client never
    sends to a server that failed before that server has acknowledged a probe.  With a single
    server listed, that server is always usable and L{connect} fails as its endpoint does
    (C{ClientService} backs off and tries again).  L{arrived} tells the delivery whether a
    connection made is a switch.  Failing to connect is logged once per server and reason.
    """

    def __init__(self, servers: Sequence[tuple[str, IStreamClientEndpoint]]) -> None:
        if not servers:
            raise ValueError("no server to deliver to")
        self.servers = list(servers)
        """Each server's description (as given) and endpoint, in order of preference."""
        self.current = 0
        """The server in use, or being tried."""
        self.used = 0
        """The server last connected to (before any connection, the first listed)."""
        self.why: str | None = None
        """Why the client left L{used}, if it did."""
        self.switches = 0
        self.usable = [True] * len(self.servers)
        """Whether each server may be sent to: until it fails, and again once it acknowledges
        a probe."""
        self.failures = [0] * len(self.servers)
        """Each server's failures (in use or probed) since it last acknowledged what it was
        sent on the connection in use: how long its next probe waits."""
        self.failure_listeners: list[Callable[[int], None]] = []
        """Called with the index of each server that fails, when several are listed."""
        self.answer_listeners: list[Callable[[int], None]] = []
        """Called with the index of each server that acknowledges a probe."""
        self._unreachable = [
            Trouble(log, LogLevel.warn, "cannot connect to {server}: {reason}") for _ in servers
        ]
        self._waiting: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self.servers)

    def name(self, index: int | None = None) -> str:
        """
        The description of server C{index}, by default of the L{current} one.
        """
        return self.servers[self.current if index is None else index][0]

    def connect(self, protocolFactory: Any) -> Deferred[Any]:  # noqa: N803 -- Twisted's name
        return Deferred.fromCoroutine(self._walk(protocolFactory))

    async def _walk(self, factory: Any) -> Any:
        while True:
            error: Exception | None = None
            for index, (description, endpoint) in enumerate(self.servers):
                if not self.usable[index]:
                    continue
                self.current = index
                try:
                    # The protocol's connectionMade runs before this returns, with current set.
                    return await endpoint.connect(factory)
                except CancelledError:
                    raise
                except Exception as e:
                    error = e
                    reason = describe(e)
                    self._unreachable[index].say(reason, server=description)
                    self.failed(index, f"cannot connect: {reason}")
            if len(self.servers) == 1:
                assert error is not None
                raise error
            log.warn("every server listed has failed: waiting until one acknowledges a probe")
            await self._answer()

    def _answer(self) -> Deferred[None]:
        d: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(d)
        return d

    def arrived(self) -> tuple[str, str] | None:
        """
        A connection to the L{current} server is made: if it is not the one used before,
        count the switch and return that one's description and why it was left.
        """
        self._unreachable[self.current].ended()
        left, why = self.used, self.why or "it failed"
        self.why = None
        if self.current == left:
            return None
        self.used = self.current
        self.switches += 1
        return self.name(left), why

    def failed(self, index: int, why: str | None = None) -> None:
        """
        Server C{index} failed (C{why}, said when the client was using it): with several
        servers listed, it is not connected to again before it acknowledges a probe.
        """
        if why is not None and index == self.used:
            self.why = why
        if len(self.servers) == 1:
            return
        self.usable[index] = False
        self.failures[index] += 1
        for listener in self.failure_listeners:
            listener(index)

    def acknowledged(self) -> None:
        """
        The server in use acknowledged what it was sent: its failures are forgotten.
        """
        self.failures[self.current] = 0

    def answered(self, index: int) -> None:
        """
        Server C{index} acknowledged a probe: it is usable again.
        """
        self.usable[index] = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        for listener in self.answer_listeners:
            listener(index)

    def go_back(self, why: str) -> None:
        """
        The client leaves the server in use for a usable one listed before it (C{why}).
        """
        self.why = why


class ProbeError(Exception):
    """
    The probed server refused this client or closed before acknowledging.
    """


class _ProbeProtocol(FrameProtocol):
    """
    A probe: hello, one payload; L{acked} fires once that payload is acknowledged.
    """

    def __init__(self, hello: Hello | None, payload: bytes) -> None:
        super().__init__()
        self.hello = hello
        self.payload = payload
        self.acked: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.hello is not None:
            self.send_control(self.hello)
        self.sendString(self.payload)

    def controlReceived(self, frame: ControlFrame) -> None:
        if isinstance(frame, Ack) and frame.sha256 == payload_hash(self.payload):
            self._settle(None)
        elif isinstance(frame, Refusal):
            self._settle(Failure(ProbeError(f"refused this client: {frame.reason}")))
        elif not isinstance(frame, Ack):
            super().controlReceived(frame)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._settle(Failure(ProbeError(f"closed before acknowledging: {describe(reason)}")))

    def _settle(self, result: Failure | None) -> None:
        if not self.acked.called:
            if result is None:
                self.acked.callback(None)
            else:
                self.acked.errback(result)


class Prober:
    """
    Probes each server of a L{ServerList} that fails (L{start}, one of its failure listeners),
    until it acknowledges again: C{policy(n)} seconds after its n-th failure in a row
    (L{ServerList.failures}), a probe connects, says hello and sends one payload
    (C{payload()}; none yet means no probe this time, and another try as long after).  A probe
    acknowledged within C{timeout} seconds makes the server usable again
    (L{ServerList.answered}); any other outcome is one more failure, so the next probe waits
    longer.  Sending a payload again is harmless: storing is idempotent.
    """

    def __init__(
        self,
        servers: ServerList,
        hello: Hello | None,
        payload: Callable[[], bytes | None],
        clock: IReactorTime,
        timeout: float,
        policy: Callable[[int], float] | None = None,
    ) -> None:
        self.servers = servers
        self.hello = hello
        self.payload = payload
        self.clock = clock
        self.timeout = timeout
        self.policy = policy or backoffPolicy(PROBE_INITIAL, PROBE_MAX, factor=2.0)
        self.stopped = False
        self._probes: dict[int, IDelayedCall | Deferred[None]] = {}
        """The next probe of each server being probed, or the probe under way."""

    def start(self, index: int) -> None:
        """
        Probe server C{index} until it acknowledges, unless it is being probed already.
        """
        if not self.stopped and index not in self._probes:
            delay = self.policy(self.servers.failures[index])
            self._probes[index] = self.clock.callLater(delay, self._probe, index)

    def stop(self) -> None:
        """
        No more probes: the client is stopping.
        """
        self.stopped = True
        probes, self._probes = self._probes, {}
        for probe in probes.values():
            probe.cancel()

    def _probe(self, index: int) -> None:
        del self._probes[index]
        payload = self.payload()
        if payload is None:
            self.start(index)
            return
        d = Deferred.fromCoroutine(self._attempt(index, payload))
        self._probes[index] = d
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(index, d),
                       errbackArgs=(index, d))  # fmt: skip
        d.addErrback(lambda f: log.failure("bug while probing {server}", f,
                                           server=self.servers.name(index)))  # fmt: skip

    async def _attempt(self, index: int, payload: bytes) -> None:
        protocol = _ProbeProtocol(self.hello, payload)
        try:
            await connectProtocol(self.servers.servers[index][1], protocol).addTimeout(
                self.timeout, self.clock
            )
            await protocol.acked.addTimeout(self.timeout, self.clock)
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    def _succeeded(self, _: None, index: int, d: Deferred[None]) -> None:
        if self._probes.get(index) is d:
            del self._probes[index]
            log.debug("{server} acknowledged a probe", server=self.servers.name(index))
            self.servers.answered(index)

    def _failed(self, failure: Failure, index: int, d: Deferred[None]) -> None:
        if self._probes.get(index) is not d:
            return  # stopped
        del self._probes[index]
        log.debug("probe of {server}: {reason}", server=self.servers.name(index),
                  reason=describe(failure))  # fmt: skip
        self.servers.failed(index)
