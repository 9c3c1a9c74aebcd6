"""
L{FleetService} on a L{Clock}, over a real SQLite store and real server connections (on
L{StringTransport}s): when it starts deciding, what it records of the connections it holds and
of those gone, how it tells each change (log and sinks), and how it rides out a store that
fails or a decision that conflicts with another server's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pymysql
import pytest_twisted
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from ethtwisted.frames import Hello, encode_control
from ethtwisted.interfaces import IEventSink, IFleet
from ethtwisted.records import StateEvent
from ethtwisted.server.factory import ServerFactory
from ethtwisted.server.fleet import DECIDE_INTERVAL, FleetService
from ethtwisted.server.ingest import Ingest
from ethtwisted.server.protocol import ServerProtocol
from ethtwisted.states import RECONNECT_GRACE, Thresholds
from ethtwisted.storage.fleet import SQLFleet
from ethtwisted.storage.memory_store import MemoryStore
from ethtwisted.storage.sql_store import SQLStore
from tests.wire import feed, netstring

T = Thresholds(silent_seconds=60)


@implementer(IEventSink)
class Sink:
    def __init__(self) -> None:
        self.events: list[StateEvent] = []

    def publish(self, event: StateEvent) -> None:
        self.events.append(event)


class Conflicting(SQLFleet):
    """
    The store's fleet, whose next decision fails with a MySQL deadlock (as when another
    server decided at the same moment) when told to.
    """

    def __init__(self, store: SQLStore) -> None:
        super().__init__(store.pool, store.url.dialect)
        self.conflict_next = False

    def decide(
        self,
        server: str,
        now: float,
        connected: Mapping[str, float],
        gone: Mapping[str, float],
        thresholds: Thresholds,
    ) -> Deferred[list[StateEvent]]:
        if self.conflict_next:
            self.conflict_next = False
            return fail(
                pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
            )
        return super().decide(server, now, connected, gone, thresholds)


class Observed(FleetService):
    """The service, keeping the Deferred of each of its runs for the test to wait on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: list[Deferred[None]] = []

    def run(self) -> Deferred[None]:
        d = super().run()
        self.runs.append(d)
        return d


class Harness:
    """
    A fleet service on a clock, its server's connections, its store and its sink.
    """

    def __init__(self, store: SQLStore, fleet: IFleet | None = None) -> None:
        self.clock = Clock()
        self.store = store
        self.factory = ServerFactory(
            Ingest(MemoryStore(), None, self.clock), self.clock, 65536, 60
        )
        self.sink = Sink()
        self.service = Observed(self.clock, fleet or store.fleet, self.factory, T, [self.sink])

    def connect(self, name: str) -> ServerProtocol:
        """A connection of client C{name}, whose hello lists features, at the clock's time."""
        connection = self.factory.buildProtocol(None)
        connection.makeConnection(StringTransport())
        feed(connection, netstring(encode_control(Hello(name, features=("status",)))))
        return connection

    async def tick(self, seconds: float = DECIDE_INTERVAL) -> bool:
        """
        Let C{seconds} pass; wait for the run they brought, if any; whether there was one.
        """
        runs = len(self.service.runs)
        self.clock.advance(seconds)
        for run in self.service.runs[runs:]:
            await run
        return len(self.service.runs) > runs

    async def presence(self) -> list[tuple[str, int, float, float]]:
        rows = await self.store.pool.runQuery(
            "SELECT client, connected, last_frame, updated FROM eth_presence ORDER BY client"
        )
        return [(c, int(on), float(heard), float(updated)) for c, on, heard, updated in rows]

    async def decided(self) -> float:
        ((decided,),) = await self.store.pool.runQuery("SELECT decided FROM eth_fleet")
        return float(decided)

    def stop(self) -> None:
        self.service.stopService()
        for connection in list(self.factory.connections):
            connection.connectionLost(Failure(ConnectionDone()))
        assert not self.clock.getDelayedCalls()


def told(events: Sequence[LogEvent], level: LogLevel | None = None) -> list[str]:
    return [
        formatEvent(e)
        for e in events
        if e["log_namespace"] == "ethtwisted.server" and (level is None or e["log_level"] == level)
    ]


@pytest_twisted.ensureDeferred
async def test_decides_after_the_grace_records_the_gone_and_tells_each_change_once(
    sqlite_store: SQLStore,
) -> None:
    """
    No decision before the server has run for RECONNECT_GRACE seconds; then every second,
    recording the clients held and when each was last heard (a client's row written again once
    a twelfth of silent_seconds has passed, 5 s here, not each second).  A connection that ends is
    recorded as gone at the next decision; once gone for longer than the grace, its client is
    silent: logged once (a warning), published to the sink once, and no longer once it comes
    back (logged once, at info).
    """
    h = Harness(sqlite_store)
    a = h.connect("a")
    h.connect("b")
    with capturedLogs() as logged:
        h.service.startService()
        for _ in range(int(RECONNECT_GRACE) - 1):
            await h.tick()
        assert len(h.service.runs) == RECONNECT_GRACE  # at 0, 1 and 2: none decided
        assert await h.presence() == [] and await h.decided() == 0
        assert await h.tick()
        assert await h.presence() == [("a", 1, 0.0, 3.0), ("b", 1, 0.0, 3.0)]

        assert not await h.tick(0.5)
        a.connectionLost(Failure(ConnectionDone()))
        assert await h.tick(0.5)
        assert await h.presence() == [("a", 0, 0.0, 4.0), ("b", 1, 0.0, 3.0)]
        assert await sqlite_store.fleet.states() == {"a": {}, "b": {}}
        for _ in range(int(RECONNECT_GRACE)):
            await h.tick()
        assert h.sink.events == []  # gone for exactly the grace: not yet
        await h.tick()
        assert [(e.client, e.state, e.event, e.since, e.at) for e in h.sink.events] == [
            ("a", "silent", "entered", 0.0, 8.0)
        ]
        assert await h.presence() == [("a", 0, 0.0, 4.0), ("b", 1, 0.0, 8.0)]
        await h.tick()
        assert len(h.sink.events) == 1

        h.connect("a")
        await h.tick()
        assert [(e.client, e.state, e.event) for e in h.sink.events[1:]] == [
            ("a", "silent", "left")
        ]
        # b's connection drops and b is back a second later: its row says so at once.
        [b] = [c for c in h.factory.connections if c.hello and c.hello.name == "b"]
        b.connectionLost(Failure(ConnectionDone()))
        await h.tick()
        assert (await h.presence())[1] == ("b", 0, 0.0, 11.0)
        h.connect("b")
        await h.tick()
        assert (await h.presence())[1] == ("b", 1, 11.0, 12.0)
        for _ in range(int(RECONNECT_GRACE) + 1):
            await h.tick()
        assert len(h.sink.events) == 2
        assert await sqlite_store.fleet.events(None, None, 10) == h.sink.events[::-1]
    h.stop()
    texts = [e.text for e in h.sink.events]
    assert told(logged, LogLevel.warn) == texts[:1]
    assert told(logged, LogLevel.info) == texts[1:]
    assert told(logged) == texts


@pytest_twisted.ensureDeferred
async def test_a_failing_store_is_said_once_and_once_when_back(sqlite_store: SQLStore) -> None:
    """
    While the store fails, each decision fails and that is said once, as a warning; once it
    works again, that is said once; meanwhile the clients that left are still recorded as gone.
    """
    h = Harness(sqlite_store)
    b = h.connect("b")
    h.connect("c")
    h.service.startService()
    with capturedLogs() as logged:
        for _ in range(int(RECONNECT_GRACE)):
            await h.tick()
        assert await h.decided() == RECONNECT_GRACE
        await sqlite_store.pool.runOperation("DROP TABLE eth_fleet")
        b.connectionLost(Failure(ConnectionDone()))
        for _ in range(3):
            assert await h.tick()
        await sqlite_store.start()  # the table made again
        await h.tick()
        await h.tick()
    h.stop()
    assert await h.decided() == RECONNECT_GRACE + 5
    assert [row[:2] for row in await h.presence()] == [("b", 0), ("c", 1)]
    assert told(logged) == [
        "cannot decide the clients' states: no such table: eth_fleet",
        "deciding the clients' states again",
    ]
    assert [e["log_level"] for e in logged if e["log_namespace"] == "ethtwisted.server"] == [
        LogLevel.warn,
        LogLevel.info,
    ]


@pytest_twisted.ensureDeferred
async def test_a_conflict_is_quiet_and_decided_again_next_second(sqlite_store: SQLStore) -> None:
    """
    A decision that conflicts with another server's is no trouble: nothing is logged (but at
    debug level), nothing told, and the next second decides as usual, the clients gone
    meanwhile recorded then.
    """
    fleet = Conflicting(sqlite_store)
    h = Harness(sqlite_store, fleet)
    b = h.connect("b")
    h.service.startService()
    with capturedLogs() as logged:
        for _ in range(int(RECONNECT_GRACE)):
            await h.tick()
        b.connectionLost(Failure(ConnectionDone()))
        fleet.conflict_next = True
        assert await h.tick()
        assert [row[:2] for row in await h.presence()] == [("b", 1)]
        assert await h.tick()
    h.stop()
    assert [row[:2] for row in await h.presence()] == [("b", 0)]
    assert await h.decided() == RECONNECT_GRACE + 2
    assert h.service.trouble.reason is None
    assert [e for e in logged if e["log_level"] > LogLevel.debug] == []
    assert h.sink.events == []


class Slow(SQLFleet):
    """The store's fleet, whose decisions answer only when the test says."""

    def __init__(self, store: SQLStore) -> None:
        super().__init__(store.pool, store.url.dialect)
        self.answers: list[Deferred[list[StateEvent]]] = []

    def decide(self, *args: Any) -> Deferred[list[StateEvent]]:
        self.answers.append(Deferred())
        return self.answers[-1]


@pytest_twisted.ensureDeferred
async def test_the_listeners_are_told_how_long_each_decision_took(
    sqlite_store: SQLStore,
) -> None:
    """
    Each decision that answers tells the decision listeners the seconds from asking the store until
    its answer, on the service's clock; one that fails tells them nothing.
    """
    fleet = Slow(sqlite_store)
    h = Harness(sqlite_store, fleet)
    took: list[float] = []
    h.service.decision_listeners.append(took.append)
    h.service.startService()
    for _ in range(int(RECONNECT_GRACE)):
        h.clock.advance(DECIDE_INTERVAL)
    assert len(fleet.answers) == 1
    h.clock.advance(0.25)
    fleet.answers[0].callback([])
    await h.service.runs[-1]
    h.clock.advance(0.75)
    assert len(fleet.answers) == 2
    h.clock.advance(0.5)
    fleet.answers[1].errback(pymysql.err.OperationalError(1213, "Deadlock found"))
    await h.service.runs[-1]
    h.stop()
    assert took == [0.25]
