"""
The collector without a network or a database: grouping, acknowledgement after commit,
retries, back-pressure, and what each connection may send.  The stores here are the in-memory
ones, the durable one holding each commit until the test completes it; the real ones are
exercised in test_server_e2e.py and test_storage_contract.py.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sqlite3
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence

import pymysql
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ethtwisted.frames import Ack, Hello, Refusal, encode_control
from ethtwisted.interfaces import IBlockStore, ICounterStore
from ethtwisted.logs import set_verbose
from ethtwisted.protocol import Block, block_html, block_json, payload_hash
from ethtwisted.records import Received
from ethtwisted.server.collector import STOP_TIMEOUT, CollectorService
from ethtwisted.server.factory import ClientTokens, ServerFactory
from ethtwisted.server.ingest import ENTRY_OVERHEAD_BYTES, MAX_CONFLICT_RETRIES, Ingest
from ethtwisted.server.protocol import ServerProtocol
from ethtwisted.storage import RejectedError
from ethtwisted.storage.memory_counters import MemoryCounters
from ethtwisted.storage.memory_store import MemoryStore
from tests.fakes import HeldStore
from tests.wire import feed, netstring, sent_frames

REDIS_DOWN = ConnectionError("Redis is down")


class NamedCounters(MemoryCounters):
    """
    The in-memory counters, noting the name of every group they are asked to count, and
    rejecting (as Redis would a count it cannot take) any group holding a C{poison} payload.
    """

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.poison: set[str] = set()

    def record(self, batch: Sequence[Received], group: str) -> Deferred[None]:
        self.names.append(group)
        if self.down is None and any(r.payload in self.poison for r in batch):
            return fail(RejectedError("a count the store cannot take"))
        return super().record(batch, group)


def received(text: str, client: str = "c") -> Received:
    return Received(payload_hash(text.encode()), text, "127.0.0.1", client, 0.0, None)


def test_every_server_module_logs_as_the_server() -> None:
    """
    Every module of the server package logs in the namespace C{ethtwisted.server}, and a
    connection's drops in C{ethtwisted.server.ServerProtocol}, so the lines twistd writes read
    C{[ethtwisted.server#level]} (or C{[ethtwisted.server.ServerProtocol#warn]}) whichever
    module they come from, as before the server became a package.
    """
    package = importlib.import_module("ethtwisted.server")
    names = [m.name for m in pkgutil.iter_modules(package.__path__, "ethtwisted.server.")]
    assert len(names) >= 4
    for name in names:
        assert importlib.import_module(name).log.namespace == "ethtwisted.server", name
    factory = ServerFactory(Ingest(MemoryStore(), None, Clock()), Clock(), 100, 60.0)
    connection = factory.buildProtocol(None)
    assert connection.log.namespace == "ethtwisted.server.ServerProtocol"
    connection.makeConnection(StringTransport())
    with capturedLogs() as events:
        connection.dataReceived(b"x")
    assert [e["log_namespace"] for e in events] == ["ethtwisted.server.ServerProtocol"]


def test_stores_here_provide_the_interfaces() -> None:
    """
    The stores used here implement the same interfaces as the real ones, so these tests mean
    something.
    """
    assert verifyObject(IBlockStore, HeldStore())
    assert verifyObject(ICounterStore, MemoryCounters())


def test_messages_arriving_together_are_one_transaction() -> None:
    """
    What arrives in one turn is committed as one group; what arrives during that commit goes
    into the next group; acks wait for the commit.
    """
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock)
    acked: list[str] = []
    for i in range(3):
        ingest.submit(received(f"m{i}")).addCallback(acked.append)
    assert store.calls == []
    clock.advance(0)
    assert [len(c) for c in store.calls] == [3]
    ingest.submit(received("m3")).addCallback(acked.append)
    ingest.submit(received("m4")).addCallback(acked.append)
    clock.advance(0)
    assert len(store.calls) == 1 and acked == []
    store.commit()
    assert len(acked) == 3
    assert [len(c) for c in store.calls] == [3, 2]
    store.commit()
    assert acked == [payload_hash(f"m{i}".encode()) for i in range(5)]
    assert not ingest.busy and ingest.unsettled == 0
    assert not clock.getDelayedCalls()


def test_group_size_is_bounded() -> None:
    """
    A backlog is committed in groups of at most C{max_batch}.
    """
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock, max_batch=4)
    for i in range(10):
        ingest.submit(received(f"m{i}"))
    clock.advance(0)
    while store.results and not store.results[-1].called:
        store.commit()
    assert [len(c) for c in store.calls] == [4, 4, 2]


@pytest.mark.expected_log_errors("^SQL store unavailable: ")
def test_sql_failure_is_retried_with_backoff_and_logged_once() -> None:
    """
    A failing commit is retried, the same group again, with growing delays; the outage is
    logged once and its end once; nothing is acknowledged before the commit.
    """
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock)
    acked: list[str] = []
    ingest.submit(received("a")).addCallback(acked.append)
    clock.advance(0)
    with capturedLogs() as events:
        for attempt in range(4):
            store.results[-1].errback(ConnectionError("MySQL has gone away"))
            assert acked == []
            delay = clock.getDelayedCalls()[0].getTime() - clock.seconds()
            assert delay == pytest.approx(0.1 * 2**attempt)
            clock.advance(delay)
        store.commit()
    assert acked == [payload_hash(b"a")]
    assert all(c == store.calls[0] for c in store.calls)
    errors = [e for e in events if "holding" in e.get("log_format", "")]
    assert len(errors) == 1 and "MySQL has gone away" in errors[0]["reason"]
    assert len([e for e in events if "back after" in e.get("log_format", "")]) == 1
    assert not clock.getDelayedCalls()


DEADLOCK = pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")


def test_conflict_is_retried_at_once_counted_and_not_an_outage() -> None:
    """
    A commit that loses to a concurrent transaction (a Galera certification failure, reported
    as a deadlock) is tried again at once, the same group, not split; each conflict is told to
    the conflict listeners and logged at debug level only; nothing is acknowledged before the
    commit succeeds, and the ingest never reports trouble.
    """
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock)
    conflicts: list[None] = []
    ingest.conflict_listeners.append(lambda: conflicts.append(None))
    acked: list[object] = []
    for text in ["a", "b"]:
        ingest.submit(received(text)).addBoth(acked.append)
    clock.advance(0)
    set_verbose(True)
    try:
        with capturedLogs() as events:
            for n in range(1, MAX_CONFLICT_RETRIES + 1):
                store.results[-1].errback(DEADLOCK)
                assert acked == [] and len(conflicts) == n and ingest.trouble.reason is None
                assert [c.getTime() for c in clock.getDelayedCalls()] == [clock.seconds()]
                clock.advance(0)
            assert len(store.calls) == MAX_CONFLICT_RETRIES + 1
            store.commit()
    finally:
        set_verbose(False)
    assert acked == [payload_hash(b"a"), payload_hash(b"b")]
    assert all([r.payload for r in c] == ["a", "b"] for c in store.calls)
    assert [e["log_level"].name for e in events] == ["debug"] * MAX_CONFLICT_RETRIES
    assert "Deadlock found" in events[0]["reason"]
    assert not clock.getDelayedCalls()


@pytest.mark.expected_log_errors("^SQL store unavailable: ")
def test_conflicts_past_the_retries_are_an_outage_and_counting_starts_again() -> None:
    """
    A group that conflicts more than MAX_CONFLICT_RETRIES times in a row is taken for an
    outage: logged once, tried again after the backoff delay; it is then given its at-once
    retries again.  Every conflict is counted.
    """
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock)
    conflicts: list[None] = []
    ingest.conflict_listeners.append(lambda: conflicts.append(None))
    acked: list[str] = []
    ingest.submit(received("a")).addCallback(acked.append)
    clock.advance(0)
    with capturedLogs() as events:
        for _ in range(MAX_CONFLICT_RETRIES):
            store.results[-1].errback(DEADLOCK)
            clock.advance(0)
        store.results[-1].errback(DEADLOCK)
        assert ingest.trouble.reason is not None and "1213" in ingest.trouble.reason
        assert clock.getDelayedCalls()[0].getTime() - clock.seconds() == pytest.approx(0.1)
        clock.advance(0.1)
        store.results[-1].errback(DEADLOCK)
        assert [c.getTime() for c in clock.getDelayedCalls()] == [clock.seconds()]
        clock.advance(0)
        store.commit()
    assert acked == [payload_hash(b"a")]
    assert len(conflicts) == MAX_CONFLICT_RETRIES + 2
    errors = [e for e in events if e["log_level"].name == "error"]
    assert len(errors) == 1 and "Deadlock" in errors[0]["reason"]
    assert ingest.trouble.reason is None
    assert not clock.getDelayedCalls()


@pytest.mark.expected_log_errors("^Redis store unavailable: ")
def test_redis_failure_retries_only_the_counting() -> None:
    """
    When SQL committed but Redis failed, only Redis is tried again (the client counts would
    double otherwise), and the ack waits for both.
    """
    clock, store, stats = Clock(), HeldStore(), MemoryCounters()
    ingest = Ingest(store, stats, clock)
    stats.down = REDIS_DOWN
    acked: list[str] = []
    ingest.submit(received("a")).addCallback(acked.append)
    clock.advance(0)
    store.commit()
    assert acked == []
    clock.advance(0.1)
    clock.advance(0.2)
    stats.down = None
    clock.advance(0.4)
    assert acked == [payload_hash(b"a")]
    assert len(store.calls) == 1
    assert stats.messages == Counter({"127.0.0.1": 1})
    assert not clock.getDelayedCalls()


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def test_readers_pause_past_high_water_and_resume_below_half() -> None:
    """
    While the store is stuck, readers are paused once the pending bytes pass the high-water
    mark (new ones too), and resumed when the backlog has drained.
    """
    clock, store = Clock(), HeldStore()
    size = 300 + ENTRY_OVERHEAD_BYTES
    ingest = Ingest(store, None, clock, max_batch=10, high_water_bytes=9 * size + size // 2)
    early = Producer()
    ingest.add_producer(early)
    for i in range(9):
        ingest.submit(received(f"{i:0300d}"))
    assert not early.paused
    ingest.submit(received("x" * 300))
    assert early.paused
    late = Producer()
    ingest.add_producer(late)
    assert late.paused
    clock.advance(0)
    store.commit()
    assert not early.paused and not late.paused


@pytest.mark.parametrize(
    "payload",
    [
        lambda i: block_json(Block(1, i, f"0x{i:064x}", f"0x{i + 1:064x}", 1_700_000_000 + i)),
        block_html,
    ],
    ids=["block", "older-page"],
)
def test_pending_bytes_are_what_held_messages_cost(payload: Callable[[int], bytes]) -> None:
    """
    What Ingest counts against its high-water mark for the messages it holds is close to the
    memory they take (as tracemalloc sees it, fed through a connection): never less than 90 %
    of it, nor more than half as much again.
    """
    n = 10_000
    data = b"".join(netstring(payload(i)) for i in range(n))
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock, high_water_bytes=2**40)
    connection = ServerFactory(ingest, clock, 65536, 60.0, max_in_flight=n).buildProtocol(None)
    connection.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1)))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(0, len(data), 65536):
            connection.dataReceived(data[i : i + 65536])
        clock.advance(0)  # a first group is in a transaction, the rest pending
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert ingest.unsettled == n
    assert 0.9 * held <= ingest.pending_bytes <= 1.5 * held, (ingest.pending_bytes, held)


def test_idle_fires_when_everything_pending_is_stored() -> None:
    """
    C{idle()} lets a stopping server wait for what it has accepted.
    """
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock)
    assert ingest.idle().called
    ingest.submit(received("a"))
    done = ingest.idle()
    clock.advance(0)
    assert not done.called
    store.commit()
    assert done.called


def server_connection(
    tokens: Sequence[str] | None = None, idle_timeout: float = 60.0
) -> tuple[ServerProtocol, StringTransport, HeldStore, Clock]:
    clock, store = Clock(), HeldStore()
    book = None if tokens is None else ClientTokens.parse(tokens)
    factory = ServerFactory(Ingest(store, None, clock), clock, 1000, idle_timeout, book)
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=None)
    protocol.makeConnection(transport)
    return protocol, transport, store, clock


def test_ack_is_sent_after_commit() -> None:
    """
    The server acknowledges a payload with its SHA256 once, and only once, it is committed.
    """
    protocol, transport, store, clock = server_connection()
    feed(protocol, netstring(block_html(1)))
    clock.advance(0)
    assert transport.value() == b""
    store.commit()
    assert sent_frames(transport) == [encode_control(Ack(payload_hash(block_html(1))))]
    assert store.calls[0][0].client == "192.168.1.1"


def test_oneshot_client_that_closes_at_once_is_stored() -> None:
    """
    An older client sends one netstring and closes before any commit: its message is
    stored all the same, and nothing is written to the closed connection.
    """
    protocol, transport, store, clock = server_connection()
    feed(protocol, netstring(b"<html>page</html>"))
    protocol.connectionLost(Failure(ConnectionDone()))
    transport.loseConnection()
    clock.advance(0)
    store.commit()
    assert list(store.tables.payloads.values()) == ["<html>page</html>"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (netstring(b""), "empty message"),
        (netstring(b"ok\xc3("), "not UTF-8"),
        (b"1001:" + b"x" * 1001 + b",", "over the 1000-byte cap"),
        (b"hello\n", "broken netstring framing"),
        (netstring(encode_control(Ack("00"))), "unexpected ack frame"),
    ],
)
def test_bad_input_costs_its_connection_only(data: bytes, reason: str) -> None:
    """
    Each kind of bad input drops the connection with its reason logged once; nothing is
    stored from it.
    """
    protocol, transport, store, clock = server_connection()
    with capturedLogs() as events:
        feed(protocol, data)
    clock.advance(0)
    assert transport.disconnecting
    assert store.calls == []
    drops = [e for e in events if "dropping connection" in e.get("log_format", "")]
    assert len(drops) == 1 and reason in drops[0]["reason"]


def test_silent_peer_is_dropped_after_idle_timeout() -> None:
    """
    A peer that connects and says nothing is dropped after the idle timeout.
    """
    protocol, transport, _, clock = server_connection(idle_timeout=5)
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    assert not clock.getDelayedCalls()


def test_client_that_said_hello_may_stay_quiet() -> None:
    """
    A persistent client (it said hello) waits for new blocks without being timed out, and
    its messages carry its name.
    """
    protocol, transport, store, clock = server_connection(idle_timeout=5)
    feed(protocol, netstring(encode_control(Hello("node-a"))))
    clock.advance(600)
    assert not transport.disconnecting
    feed(protocol, netstring(b"payload"))
    clock.advance(0)
    assert store.calls[0][0].client == "node-a"


def test_tokens_required_refuse_older_and_wrong_clients() -> None:
    """
    With tokens configured, a payload without hello, or a hello with a wrong token, is
    refused (with a refusal frame) and costs the connection; the token is never logged.
    """
    protocol, transport, store, clock = server_connection(tokens=["good-token"])
    feed(protocol, netstring(b"payload"))
    assert transport.disconnecting
    assert sent_frames(transport)[0].startswith(encode_control(Refusal("a"))[:20])

    protocol, transport, store, clock = server_connection(tokens=["good-token"])
    with capturedLogs() as events:
        feed(protocol, netstring(encode_control(Hello("n", token="bad-token"))))
    assert transport.disconnecting
    assert "bad-token" not in repr(list(events))

    protocol, transport, store, clock = server_connection(tokens=["good-token"])
    feed(protocol, netstring(encode_control(Hello("n", token="good-token"))))
    feed(protocol, netstring(b"payload"))
    clock.advance(0)
    store.commit()
    assert not transport.disconnecting
    assert list(store.tables.payloads.values()) == ["payload"]


def test_stop_gives_up_waiting_for_a_stuck_store() -> None:
    """
    Stopping waits for pending commits, but not for ever: past the stop timeout the service
    stops anyway, says how many messages were not stored, and closes the stores.
    """
    clock, store = Clock(), HeldStore()
    closed: list[bool] = []

    def close() -> Deferred[None]:
        closed.append(True)
        return succeed(None)

    store.close = close  # type: ignore[method-assign]
    factory = ServerFactory(Ingest(store, None, clock), clock, 1000, 60.0)
    service = CollectorService(clock, factory, [], "the fake store", wait=0)  # type: ignore[arg-type]
    service.startService()
    assert service.ready.called
    factory.ingest.submit(received("never committed"))
    clock.advance(0)
    with capturedLogs() as events:
        stopped = service.stopService()
        clock.advance(STOP_TIMEOUT - 1)
        assert not stopped.called
        clock.advance(1)
    assert stopped.called and closed == [True]
    assert [e["n"] for e in events if "not stored" in e.get("log_format", "")] == [1]


def test_redis_down_at_start_is_a_warning() -> None:
    """
    Redis that does not answer at start-up is said once as a warning; the collector starts.
    """
    clock, store, stats = Clock(), HeldStore(), MemoryCounters()
    stats.down = REDIS_DOWN
    factory = ServerFactory(Ingest(store, stats, clock), clock, 1000, 60.0)
    service = CollectorService(clock, factory, [], "the fake store", wait=0)  # type: ignore[arg-type]
    with capturedLogs() as events:
        service.startService()
    assert service.ready.called
    warnings = [e for e in events if "Redis does not answer" in e.get("log_format", "")]
    assert len(warnings) == 1 and "Redis is down" in warnings[0]["reason"]


POISON = sqlite3.IntegrityError("CHECK constraint failed: payload NOT LIKE '%poison%'")


def drive(store: HeldStore, clock: Clock, poison: set[str], limit: int = 100) -> None:
    """
    Answer every commit the store is asked for, rejecting those that hold a poisoned payload,
    until nothing more is asked (bounded).
    """
    for _ in range(limit):
        clock.advance(0)
        if not store.results or store.results[-1].called:
            return
        if any(r.payload in poison for r in store.calls[-1]):
            store.results[-1].errback(POISON)
        else:
            store.commit()
    raise AssertionError("the ingest kept asking the store")


def test_rejected_group_is_split_until_the_rejected_message_is_alone() -> None:
    """
    A group the store rejects (not an outage) is split in halves, tried again at once, until
    the one message it rejects is alone: that one fails with L{RejectedError}, the others are
    stored and acknowledged, and no retry delay is ever waited.
    """
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock)
    acked: list[str] = []
    refused: list[RejectedError] = []
    for text in ["m0", "m1", "m2", "poison", "m4"]:
        d = ingest.submit(received(text))
        d.addCallbacks(acked.append, lambda f: refused.append(f.trap(RejectedError) and f.value))
    with capturedLogs() as events:
        drive(store, clock, {"poison"})
    assert [[r.payload for r in c] for c in store.calls] == [
        ["m0", "m1", "m2", "poison", "m4"],
        ["m0", "m1"],
        ["m2", "poison", "m4"],
        ["m2"],
        ["poison", "m4"],
        ["poison"],
        ["m4"],
    ]
    assert acked == [payload_hash(t.encode()) for t in ["m0", "m1", "m2", "m4"]]
    assert len(refused) == 1 and "CHECK constraint failed" in str(refused[0])
    assert set(store.tables.payloads.values()) == {"m0", "m1", "m2", "m4"}
    assert ingest.unsettled == 0 and ingest.pending_bytes == 0 and not ingest.busy
    assert clock.seconds() == 0 and not clock.getDelayedCalls()
    assert ingest.trouble.reason is None
    assert not [e for e in events if e.get("log_level") and e["log_level"].name == "critical"]


@pytest.mark.expected_log_errors("^SQL store unavailable: ")
def test_outage_is_retried_whole_not_split() -> None:
    """
    A locked SQLite database is an outage: the same group is tried again after a delay, not
    split, and nothing is refused.
    """
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock)
    results: list[object] = []
    for text in ["a", "b"]:
        ingest.submit(received(text)).addBoth(results.append)
    clock.advance(0)
    with capturedLogs():
        store.results[-1].errback(sqlite3.OperationalError("database is locked"))
        clock.advance(0)
        assert len(store.calls) == 1 and results == []
        clock.advance(0.1)
    assert [r.payload for r in store.calls[1]] == ["a", "b"]
    store.commit()
    assert results == [payload_hash(b"a"), payload_hash(b"b")]


@pytest.mark.expected_log_errors("^Redis store unavailable: ")
def test_redis_retry_keeps_the_group_name_and_a_rejection_is_split() -> None:
    """
    Counting a group again after a Redis outage uses the same group name (so that Redis, which
    may have counted it already, counts it once); a group Redis rejects is split like a SQL
    one, its halves named anew.
    """
    clock, store, stats = Clock(), HeldStore(), NamedCounters()
    ingest = Ingest(store, stats, clock)
    stats.down = REDIS_DOWN
    results: list[object] = []
    ingest.submit(received("a")).addBoth(results.append)
    clock.advance(0)
    with capturedLogs():
        store.commit()
        clock.advance(0.1)
        clock.advance(0.2)
    stats.down = None
    clock.advance(0.4)
    assert results == [payload_hash(b"a")]
    assert len(stats.names) == 4 and len(set(stats.names)) == 1

    stats.poison = {"bad"}
    refused: list[RejectedError] = []
    for text in ["b", "bad"]:
        ingest.submit(received(text)).addCallbacks(
            results.append, lambda f: refused.append(f.trap(RejectedError) and f.value)
        )
    clock.advance(0)
    store.commit()
    clock.advance(0)
    assert results[1:] == [payload_hash(b"b")] and len(refused) == 1
    assert "Redis store refuses it" in str(refused[0])
    assert len(set(stats.names[4:])) == 3
    assert not clock.getDelayedCalls()


@pytest.mark.property
@given(
    texts=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=60),
    poisoned=st.sets(st.integers(0, 59)),
    bursts=st.lists(st.integers(1, 20), min_size=1, max_size=10),
    max_batch=st.integers(1, 40),
)
def test_only_rejected_messages_are_refused(
    texts: list[str], poisoned: set[int], bursts: list[int], max_batch: int
) -> None:
    """
    For any messages (repeats included), arriving in any bursts, of which any subset is
    rejected by a store that commits all of a transaction or none of it: every other message is
    stored and acknowledged once, after its commit; every rejected one fails once with
    L{RejectedError}; nothing is lost, and the ingest ends idle.
    """
    poison = {t for i, t in enumerate(texts) if i in poisoned}
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock, max_batch=max_batch)
    outcomes: dict[int, list[object]] = {i: [] for i in range(len(texts))}

    def acked(sha256: str, i: int) -> None:
        assert store.tables.payloads.get(sha256) == texts[i], "acknowledged before its commit"
        outcomes[i].append(sha256)

    def refused(failure: object, i: int) -> None:
        outcomes[i].append(failure.trap(RejectedError))  # type: ignore[attr-defined]

    start = 0
    for size in bursts * (len(texts) // len(bursts) + 1):
        for i in range(start, min(start + size, len(texts))):
            d = ingest.submit(received(texts[i]))
            d.addCallbacks(acked, refused, callbackArgs=(i,), errbackArgs=(i,))
        start += size
        drive(store, clock, poison, limit=1000)
        if start >= len(texts):
            break
    for i, text in enumerate(texts):
        expected = RejectedError if text in poison else payload_hash(text.encode())
        assert outcomes[i] == [expected]
    assert set(store.tables.payloads.values()) == set(texts) - poison
    assert ingest.unsettled == 0 and ingest.pending_bytes == 0 and not ingest.busy
    assert not clock.getDelayedCalls()


def test_message_the_store_rejects_costs_its_connection_only() -> None:
    """
    A message the store rejects drops its own connection, once, counted as C{rejected}, with
    no traceback; a message on another connection in the same group is stored and acked.
    """
    clock, store = Clock(), HeldStore()
    factory = ServerFactory(Ingest(store, None, clock), clock, 1000, 60.0)
    drops: list[str] = []
    factory.observers.append(
        type("O", (), {"received": lambda *a: None, "acknowledged": lambda *a: None,
                       "dropped": lambda self, kind: drops.append(kind)})()
    )  # fmt: skip
    hostile, honest = factory.buildProtocol(None), factory.buildProtocol(None)
    transports = [StringTransport(), StringTransport()]
    hostile.makeConnection(transports[0])
    honest.makeConnection(transports[1])
    with capturedLogs() as events:
        feed(hostile, netstring(b"poison"))
        feed(honest, netstring(b"honest"))
        drive(store, clock, {"poison"})
    assert transports[0].disconnecting and not transports[1].disconnecting
    assert sent_frames(transports[1]) == [encode_control(Ack(payload_hash(b"honest")))]
    assert sent_frames(transports[0]) == []
    assert drops == ["rejected"]
    dropping = [e for e in events if "dropping connection" in e.get("log_format", "")]
    assert len(dropping) == 1 and "refused" in dropping[0]["reason"]
    assert "CHECK constraint failed" in dropping[0]["reason"]
    assert not [e for e in events if "log_failure" in e]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "1 to 255 characters"),
        ("x" * 256, "1 to 255 characters"),
        ("\ud800", "lone surrogates"),
        ("node\udfff-1", "lone surrogates"),
        ("a\nb", "control characters"),
        ("a\u0000b", "control characters"),
        ("a\u0085b", "control characters"),
        ("a\u2028b", "line breaks"),
        (" node", "spaces"),
        ("node ", "spaces"),
        ("\u200bnode-1", "invisible"),
        ("node-1\u202e", "invisible"),
        ("node\u00a01", "spaces other than U+0020"),
        ("nod\u0065\u0301", "composed form"),
    ],
)
def test_hello_with_a_name_that_cannot_be_stored_is_refused(name: str, reason: str) -> None:
    """
    A hello whose name no column could hold as it is (empty, too long, a lone surrogate sent
    as a JSON escape, control characters or line breaks, spaces around it), or that would
    pass for another (invisible characters, other spaces, decomposed accents), costs the
    connection; nothing with that name reaches the store.
    """
    protocol, transport, store, clock = server_connection()
    # As JSON escapes: a lone surrogate can only arrive as one.
    frame = b"\xff" + json.dumps({"type": "hello", "name": name}).encode("ascii")
    with capturedLogs() as events:
        feed(protocol, netstring(frame) + netstring(b"payload"))
    clock.advance(0)
    assert transport.disconnecting and store.calls == []
    drops = [e for e in events if "dropping connection" in e.get("log_format", "")]
    assert len(drops) == 1 and "client name" in drops[0]["reason"]
    assert reason in drops[0]["reason"]


@pytest.mark.parametrize("name", ["node-1", "ñandú ☃ 😀", "a" * 254 + "😀", "a b"])
def test_hello_with_any_storable_name_is_accepted(name: str) -> None:
    """
    Names of 1 to 255 characters of any script, emoji included, are accepted and carried by
    the client's messages.
    """
    protocol, transport, store, clock = server_connection()
    feed(protocol, netstring(encode_control(Hello(name))) + netstring(b"payload"))
    clock.advance(0)
    assert not transport.disconnecting
    assert store.calls[0][0].client == name
