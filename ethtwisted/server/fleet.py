"""
The fleet view on an eth-server (L{FleetService}): once a second, tell the store which
clients this server holds and when each was last heard, have it decide every client's states
(L{IFleet.decide}), and tell each change this server recorded: in the log, once, and to the
event sinks (webhooks).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel

from ethtwisted.interfaces import IEventSink, IFleet
from ethtwisted.logs import Logger, Trouble, describe
from ethtwisted.records import StateEvent
from ethtwisted.server.factory import ServerFactory
from ethtwisted.states import RECONNECT_GRACE, Thresholds
from ethtwisted.storage import is_conflict

log = Logger(namespace="ethtwisted.server")

DECIDE_INTERVAL = 1.0


class FleetService(TimerService):
    """
    Decides the fleet's states every L{DECIDE_INTERVAL} seconds, once C{ready} says the stores
    are, and not before this server has run for L{RECONNECT_GRACE} seconds (its clients are
    still coming back: they are not silent).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        fleet: IFleet,
        factory: ServerFactory,
        thresholds: Thresholds,
        sinks: Sequence[IEventSink] = (),
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(DECIDE_INTERVAL, self.run)
        self.clock = self.reactor = reactor
        self.fleet = fleet
        self.factory = factory
        self.thresholds = thresholds
        self.sinks = list(sinks)
        self.ready = ready
        self.server = uuid.uuid4().hex
        """This run of this server, in C{eth_presence}."""
        self.started: float | None = None
        self.held: dict[str, float] = {}
        """The clients this server last recorded as held: name → last heard."""
        self.decision_listeners: list[Callable[[float], None]] = []
        """Told the seconds each decision took, from asking the store until it answered."""
        self.trouble = Trouble(log, LogLevel.warn, "cannot decide the clients' states: {reason}",
                               "deciding the clients' states again")  # fmt: skip

    def startService(self) -> None:
        self.started = self.reactor.seconds()
        super().startService()

    def connected(self) -> dict[str, float]:
        """
        The watched clients whose connections this server holds: name → when a frame of it
        last arrived (the latest of its connections).
        """
        held: dict[str, float] = {}
        for connection in self.factory.connections:
            hello = connection.hello
            if hello is None or hello.features is None or connection.dropped:
                continue
            held[hello.name] = max(held.get(hello.name, 0.0), connection.last_heard)
        return held

    def run(self) -> Deferred[None]:
        """
        One decision; never fails (a failing timer would stop for good).
        """
        now = self.reactor.seconds()
        if not self.ready() or self.started is None or now - self.started < RECONNECT_GRACE:
            return succeed(None)
        return Deferred.fromCoroutine(self._run(now))

    async def _run(self, now: float) -> None:
        held = self.connected()
        gone = {c: t for c, t in self.held.items() if c not in held}
        try:
            events = await self.fleet.decide(self.server, now, held, gone, self.thresholds)
            for observe in self.decision_listeners:
                observe(self.reactor.seconds() - now)
        except Exception as e:
            if is_conflict(e):
                # Another server decided at the same moment; the next second decides again.
                log.debug("deciding the states conflicted with another server")
                return
            self.trouble.say(describe(e))
            return
        self.trouble.ended()
        self.held = held
        for event in events:
            self.tell(event)

    def tell(self, event: StateEvent) -> None:
        level = LogLevel.warn if event.event == "entered" else LogLevel.info
        log.emit(level, "{text}", text=event.text, state=event.state, client=event.client)
        for sink in self.sinks:
            sink.publish(event)
