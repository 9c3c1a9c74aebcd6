"""
The collector without a network or a database: grouping, acknowledgement after commit,
retries, back-pressure, and what each connection may send.  The stores here are the in-memory
ones, the durable one holding each commit until the test completes it; the real ones are
exercised in test_server_e2e.py and test_storage_contract.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from ethtwisted.interfaces import IBlockStore, IStatsStore, Received
from ethtwisted.protocol import Ack, Hello, Refusal, block_html, encode_control, payload_hash
from ethtwisted.server import (
    STOP_TIMEOUT,
    CollectorService,
    Ingest,
    ServerFactory,
    ServerProtocol,
)
from ethtwisted.storage.memory_store import MemoryCounters, MemoryStore
from tests.test_protocol import feed, netstring


class HeldStore(MemoryStore):
    """
    The in-memory store, with each commit held until the test completes it (L{commit}) or
    fails it (C{results[i].errback}).
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[Received]] = []
        self.results: list[Deferred[int]] = []

    def store(self, batch: Sequence[Received]) -> Deferred[int]:
        self.calls.append(list(batch))
        d: Deferred[int] = Deferred()
        self.results.append(d)
        return d

    def commit(self, index: int = -1) -> None:
        super().store(self.calls[index]).chainDeferred(self.results[index])


REDIS_DOWN = ConnectionError("Redis is down")


def received(text: str, client: str = "c") -> Received:
    return Received(payload_hash(text.encode()), text, "127.0.0.1", client, 0.0, None)


def test_stores_here_provide_the_interfaces() -> None:
    """
    The stores used here implement the same interfaces as the real ones, so these tests mean
    something.
    """
    assert verifyObject(IBlockStore, HeldStore())
    assert verifyObject(IStatsStore, MemoryCounters())


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
    ingest = Ingest(store, None, clock, max_batch=10, high_water_bytes=4800)
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
    factory = ServerFactory(Ingest(store, None, clock), clock, 1000, idle_timeout, tokens)
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=None)
    protocol.makeConnection(transport)
    return protocol, transport, store, clock


def sent_frames(transport: StringTransport) -> list[bytes]:
    data, frames = transport.value(), []
    while data:
        length, _, rest = data.partition(b":")
        frames.append(rest[: int(length)])
        data = rest[int(length) + 1 :]
    return frames


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
    protocol.connectionLost(None)  # type: ignore[arg-type]
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
    protocol.connectionLost(None)  # type: ignore[arg-type]
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
    store.close = lambda: closed.append(True) or succeed(None)  # type: ignore[method-assign]
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
