"""
Failover between the servers listed with C{--server}: L{ServerList} is the one endpoint the
delivery's C{ClientService} connects through, walking the list; L{Prober} finds out, in the
background, when the first listed server acknowledges again.
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
PROBE_INITIAL = 1.0
PROBE_MAX = 30.0
"""Seconds between two probes of the first listed server: doubling from the first to the
last, each with up to a second of random jitter."""


@implementer(IStreamClientEndpoint)
class ServerList:
    """
    The servers a client delivers to, in order of preference, as one endpoint.

    L{connect} tries the server at L{current} first, then each of the others in turn, and
    connects to the first that takes the connection; when none does, it fails with the last
    reason, and the next attempt starts again with the first listed.  The delivery moves
    L{current} on when the server in use fails (L{move_on}) and back to the first listed when
    that one acknowledges again (L{go_back}); L{arrived} tells it whether a connection made is
    a switch.  Failing to connect is logged once per server and reason.
    """

    def __init__(self, servers: Sequence[tuple[str, IStreamClientEndpoint]]) -> None:
        if not servers:
            raise ValueError("no server to deliver to")
        self.servers = list(servers)
        """Each server's description (as given) and endpoint, in order of preference."""
        self.current = 0
        """The server in use, being tried, or to try first."""
        self.used = 0
        """The server last connected to (before any connection, the first listed)."""
        self.why: str | None = None
        """Why the client left L{used}, if it did."""
        self.switches = 0
        self._unreachable = [
            Trouble(log, LogLevel.warn, "cannot connect to {server}: {reason}") for _ in servers
        ]

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
        start = self.current
        error: Exception | None = None
        for step in range(len(self.servers)):
            self.current = (start + step) % len(self.servers)
            description, endpoint = self.servers[self.current]
            try:
                # The protocol's connectionMade runs before this returns, with current set.
                return await endpoint.connect(factory)
            except CancelledError:
                raise
            except Exception as e:
                error = e
                reason = describe(e)
                self._unreachable[self.current].say(reason, server=description)
                if self.current == self.used:
                    self.why = f"cannot connect: {reason}"
        self.current = 0
        assert error is not None
        raise error

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

    def move_on(self, why: str) -> None:
        """
        The server in use failed (C{why}): the next connection tries the next one first.
        """
        self.why = why
        self.current = (self.current + 1) % len(self.servers)

    def go_back(self, why: str) -> None:
        """
        The first listed server is usable again (C{why}): the next connection tries it first.
        """
        self.why = why
        self.current = 0


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
    While the client delivers to another server, L{start} has the first listed one probed
    now and then: after C{policy(n)} seconds for the n-th probe since the start, a probe
    connects, says hello and sends one payload (C{payload()}: the oldest unacknowledged, or
    else the last sent; none yet means no probe this time).  Once the server acknowledges it
    within C{timeout} seconds, C{answered} is called and probing stops.  Sending a payload
    again is harmless: storing is idempotent.
    """

    def __init__(
        self,
        servers: ServerList,
        hello: Hello | None,
        payload: Callable[[], bytes | None],
        clock: IReactorTime,
        timeout: float,
        answered: Callable[[], None],
        policy: Callable[[int], float] | None = None,
    ) -> None:
        self.servers = servers
        self.hello = hello
        self.payload = payload
        self.clock = clock
        self.timeout = timeout
        self.answered = answered
        self.policy = policy or backoffPolicy(PROBE_INITIAL, PROBE_MAX, factor=2.0)
        self.probes = 0
        self._call: IDelayedCall | None = None
        self._probing: Deferred[None] | None = None

    @property
    def active(self) -> bool:
        return self._call is not None or self._probing is not None

    def start(self) -> None:
        if not self.active:
            self.probes = 0
            self._schedule()

    def stop(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._probing is not None:
            probing, self._probing = self._probing, None
            probing.cancel()

    def _schedule(self) -> None:
        self.probes += 1
        self._call = self.clock.callLater(self.policy(self.probes), self._probe)

    def _probe(self) -> None:
        self._call = None
        payload = self.payload()
        if payload is None:
            self._schedule()
            return
        d = Deferred.fromCoroutine(self._attempt(payload))
        self._probing = d
        d.addCallbacks(self._succeeded, self._failed, errbackArgs=(d,), callbackArgs=(d,))
        d.addErrback(lambda f: log.failure("bug while probing {server}", f,
                                           server=self.servers.name(0)))  # fmt: skip

    async def _attempt(self, payload: bytes) -> None:
        protocol = _ProbeProtocol(self.hello, payload)
        try:
            await connectProtocol(self.servers.servers[0][1], protocol).addTimeout(
                self.timeout, self.clock
            )
            await protocol.acked.addTimeout(self.timeout, self.clock)
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    def _succeeded(self, _: None, d: Deferred[None]) -> None:
        if self._probing is d:
            self._probing = None
            log.debug("{server} acknowledged a probe", server=self.servers.name(0))
            self.answered()

    def _failed(self, failure: Failure, d: Deferred[None]) -> None:
        if self._probing is not d:
            return  # stopped
        self._probing = None
        log.debug("probe of {server}: {reason}", server=self.servers.name(0),
                  reason=describe(failure))  # fmt: skip
        self._schedule()
