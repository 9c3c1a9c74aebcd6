"""
The server's connections without a network: framing of hostile bytes, pausing for a peer that
does not read its acks composed with pausing for the stores, the hello deadline, and the bounds
on connections and buffered bytes; then property tests feeding generated hostile input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs

from ethtwisted.frames import Ack, Hello, encode_control
from ethtwisted.interfaces import IBlockStore
from ethtwisted.protocol import CONTROL_MARK, block_json, payload_hash
from ethtwisted.records import Received
from ethtwisted.server.factory import ClientTokens, ServerFactory
from ethtwisted.server.flow import MAX_IN_FLIGHT, MAX_UNREAD_ACK_BYTES
from ethtwisted.server.ingest import Ingest
from ethtwisted.server.protocol import ServerProtocol
from ethtwisted.storage.memory_store import MemoryStore
from tests.fakes import HeldStore
from tests.wire import BLOCK, feed, netstring, sent_frames


class Drops:
    """
    A connection observer that keeps the kind of every drop, and counts acks.
    """

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.acks = 0

    def received(self, received: Received) -> None:
        pass

    def acknowledged(self, sha256: str) -> None:
        self.acks += 1

    def dropped(self, kind: str) -> None:
        self.kinds.append(kind)


def make_factory(
    store: IBlockStore | None = None, clock: Clock | None = None, **kwargs: Any
) -> tuple[ServerFactory, Drops]:
    clock = clock or Clock()
    ingest = Ingest(store or HeldStore(), None, clock)
    factory = ServerFactory(
        ingest, clock, kwargs.pop("max_message_bytes", 1000), kwargs.pop("idle_timeout", 60.0),
        **kwargs,
    )  # fmt: skip
    drops = Drops()
    factory.observers.append(drops)
    return factory, drops


def connect(factory: ServerFactory) -> tuple[ServerProtocol, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=None)
    protocol.makeConnection(transport)
    return protocol, transport


def close(protocol: ServerProtocol) -> None:
    protocol.connectionLost(None)  # type: ignore[arg-type]


def drop_warnings(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if "dropping connection" in e.get("log_format", "")]


def no_failures(events: Sequence[dict[str, Any]]) -> bool:
    return not [
        e
        for e in events
        if e.get("log_failure") is not None or e.get("log_level") == LogLevel.critical
    ]


# -- framing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("digits", [7, 4_301, 100_000])
def test_a_length_prefix_too_long_is_refused_unparsed(digits: int) -> None:
    """
    A length prefix of more digits than the cap has is a message over the cap: refused at once,
    whether it arrives in one piece (Python's int() refuses over 4,300 digits) or a few bytes at
    a time, counted once, logged once, without a traceback.
    """
    for deliver in (lambda p, d: p.dataReceived(d), feed):
        factory, drops = make_factory()
        protocol, transport = connect(factory)
        with capturedLogs() as events:
            deliver(protocol, b"9" * digits + b":" + b"x" * 50)
        assert transport.disconnecting and drops.kinds == ["too_large"]
        assert len(drop_warnings(events)) == 1 and no_failures(events)
        assert protocol.buffered == 0 and factory.buffered_bytes == 0


@pytest.mark.parametrize(
    "data",
    [b":", b"01:a,", b"-1:", b"1:ab,", b" 1:a,", b"3:abc\n", b"\xff\xff", b"1e3:"],
)
def test_broken_framing_is_a_framing_error(data: bytes) -> None:
    """
    A prefix that is not a decimal number without leading zeros, or a frame without its comma,
    is a framing error: counted as such and logged once, nothing handed on.
    """
    factory, drops = make_factory()
    protocol, transport = connect(factory)
    with capturedLogs() as events:
        feed(protocol, data + netstring(b"after"))
    assert transport.disconnecting and drops.kinds == ["framing"]
    assert len(drop_warnings(events)) == 1 and no_failures(events)
    assert not factory.ingest.pending


def test_deep_control_frame_is_a_protocol_error() -> None:
    """
    A control frame nested far deeper than any hello is a bad message, not a bug: no failure
    is logged and only that connection goes.
    """
    factory, drops = make_factory(max_message_bytes=300_000)
    protocol, _transport = connect(factory)
    with capturedLogs() as events:
        protocol.dataReceived(netstring(CONTROL_MARK + b"[" * 100_000 + b"]" * 100_000))
    assert drops.kinds == ["bad_message"] and no_failures(events)


def test_deep_json_payload_is_stored_as_opaque_text() -> None:
    """
    A payload of valid UTF-8 that is deeply nested JSON is just text to the server: stored as
    given and acked, never refused as an internal error.
    """
    store = HeldStore()
    clock = Clock()
    factory, drops = make_factory(store, clock, max_message_bytes=300_000)
    protocol, transport = connect(factory)
    payload = b"{" + b'"a":{' * 40_000 + b"}" * 40_001
    with capturedLogs() as events:
        feed(protocol, netstring(payload)[:100])
        protocol.dataReceived(netstring(payload)[100:])
        clock.advance(0)
        store.commit()
    assert drops.kinds == [] and no_failures(events)
    assert store.calls[0][0].block is None
    assert sent_frames(transport) == [encode_control(Ack(payload_hash(payload)))]


def test_hello_after_a_payload_is_refused() -> None:
    """
    The hello, when sent, comes first: one after a payload costs the connection.
    """
    factory, drops = make_factory()
    protocol, transport = connect(factory)
    feed(protocol, netstring(b"payload") + netstring(encode_control(Hello("late"))))
    assert transport.disconnecting and drops.kinds == ["bad_message"]
    assert "hello after" in str(protocol.dropped)


# -- a peer that does not read its acks ---------------------------------------------------------


def test_connection_is_its_transports_producer() -> None:
    """
    Each connection registers with its transport as a streaming producer, so the transport
    can pause it when the peer does not read what is written.
    """
    factory, _ = make_factory()
    protocol, transport = connect(factory)
    assert transport.producer is protocol and transport.streaming


def test_pausing_for_a_slow_peer_and_for_the_stores_compose() -> None:
    """
    Reading resumes only once neither the transport (peer not reading its acks) nor the
    ingest (stores behind) holds it paused, in either order.
    """
    factory, _ = make_factory()
    protocol, transport = connect(factory)
    stores = protocol.flow.for_the_stores
    for first, second in [("transport", "stores"), ("stores", "transport")]:
        pause = {"transport": protocol.pauseProducing, "stores": stores.pauseProducing}
        resume = {"transport": protocol.resumeProducing, "stores": stores.resumeProducing}
        pause[first]()
        pause[second]()
        assert transport.producerState == "paused"
        resume[first]()
        assert transport.producerState == "paused"
        resume[second]()
        assert transport.producerState == "producing"


def test_ingest_resume_does_not_resume_a_slow_peer() -> None:
    """
    When the stores catch up, Ingest resumes every reader, but not one whose peer still has
    not read its acks.
    """
    clock, store = Clock(), HeldStore()
    ingest = Ingest(store, None, clock, high_water_bytes=1000)
    factory = ServerFactory(ingest, clock, 1000, 60.0)
    slow, slow_transport = connect(factory)
    other, other_transport = connect(factory)
    slow.pauseProducing()  # its transport's write buffer is full
    feed(other, netstring(b"x" * 900))
    assert ingest.paused and other_transport.producerState == "paused"
    clock.advance(0)
    store.commit()
    assert not ingest.paused
    assert other_transport.producerState == "producing"
    assert slow_transport.producerState == "paused"


def test_peer_leaving_acks_unread_is_dropped_past_the_bound() -> None:
    """
    Acks written while the transport's buffer is full are counted; past the bound the peer is
    dropped as a slow reader, aborted (closing would wait for it to read), logged once.
    """
    clock, store = Clock(), HeldStore()
    factory, drops = make_factory(store, clock)
    protocol, transport = connect(factory)
    ack_size = len(netstring(encode_control(Ack("0" * 64))))
    n = MAX_UNREAD_ACK_BYTES // ack_size + 10
    feed(protocol, netstring(b"dup") * n)
    protocol.pauseProducing()
    with capturedLogs() as events:
        clock.advance(0)
        for i in range(n):  # groups of at most MAX_BATCH, committed one after the other
            if i == len(store.calls):
                break
            store.commit(i)
            clock.advance(0)  # what was held back past MAX_IN_FLIGHT is taken
    assert drops.kinds == ["slow_reader"]
    assert transport.disconnected  # aborted
    assert len(drop_warnings(events)) == 1 and no_failures(events)
    assert len(sent_frames(transport)) <= MAX_UNREAD_ACK_BYTES // ack_size + 1
    close(protocol)
    assert factory.buffered_bytes == 0
    assert not clock.getDelayedCalls()


def test_a_flooding_peer_alone_waits_for_its_acks() -> None:
    """
    A peer with MAX_IN_FLIGHT messages not yet acknowledged is read from no more, and not one
    frame more is taken even of the read under way, while another connection is read as
    before and its message joins the next transaction; once the flooder's acks go out, what it
    had sent is taken, in order, and it is read again.  Pausing for it composes with pausing
    for the stores and for unread acks.
    """
    clock, store = Clock(), HeldStore()
    factory, drops = make_factory(store, clock)
    flooder, flooder_transport = connect(factory)
    honest, honest_transport = connect(factory)
    flood = [b"f%d" % i for i in range(MAX_IN_FLIGHT + 5)]
    flooder.dataReceived(b"".join(netstring(p) for p in flood))  # one read holds them all
    assert factory.ingest.unsettled == MAX_IN_FLIGHT
    assert flooder.flow.in_flight == MAX_IN_FLIGHT and flooder.flow.paused_for == {"in_flight"}
    assert flooder_transport.producerState == "paused"
    assert flooder.buffered == len(b"".join(netstring(p) for p in flood[MAX_IN_FLIGHT:]))
    feed(honest, netstring(b"honest"))
    assert honest_transport.producerState == "producing" and not honest.flow.paused_for
    clock.advance(0)
    assert [len(c) for c in store.calls] == [MAX_IN_FLIGHT]
    flooder.pauseProducing()  # meanwhile, its transport's buffer fills up too
    store.commit(0)
    assert len(sent_frames(flooder_transport)) == MAX_IN_FLIGHT
    assert flooder.flow.in_flight == 0 and flooder.flow.paused_for == {"acks"}
    # The honest message is in the next transaction, before what the flooder held back.
    assert [len(c) for c in store.calls] == [MAX_IN_FLIGHT, 1]
    store.commit(1)
    assert sent_frames(honest_transport) == [encode_control(Ack(payload_hash(b"honest")))]
    clock.advance(0)  # the frames held back are taken, though not read anew (acks unread)
    assert flooder.buffered == 0 and flooder.flow.in_flight == 5
    assert [len(c) for c in store.calls] == [MAX_IN_FLIGHT, 1, 5]
    assert flooder_transport.producerState == "paused"
    flooder.resumeProducing()
    assert flooder_transport.producerState == "producing" and not flooder.flow.paused_for
    store.commit(2)
    assert sent_frames(flooder_transport)[MAX_IN_FLIGHT:] == [
        encode_control(Ack(payload_hash(p))) for p in flood[MAX_IN_FLIGHT:]
    ]
    assert drops.kinds == [] and factory.ingest.unsettled == 0
    close(flooder)
    close(honest)
    assert factory.buffered_bytes == 0
    assert not clock.getDelayedCalls()


def test_peer_reading_no_ack_for_the_idle_timeout_is_dropped() -> None:
    """
    A client that said hello may stay quiet for ever, but not leave its acks unread: once its
    transport's buffer is full, it has the idle timeout to read them.
    """
    clock = Clock()
    factory, drops = make_factory(clock=clock, idle_timeout=5.0)
    protocol, _transport = connect(factory)
    feed(protocol, netstring(encode_control(Hello("node"))))
    clock.advance(100)
    protocol.pauseProducing()
    clock.advance(4.9)
    protocol.resumeProducing()  # it read them: quiet is fine again
    clock.advance(100)
    assert drops.kinds == []
    protocol.pauseProducing()
    clock.advance(5.1)
    assert drops.kinds == ["slow_reader"]
    close(protocol)
    assert not clock.getDelayedCalls()


# -- deadlines and bounds -----------------------------------------------------------------------


def test_hello_deadline_is_not_reset_by_trickling() -> None:
    """
    With tokens required, a connection that has not completed its hello within the hello
    timeout is dropped, however steadily it trickles bytes; a prompt client is not.
    """
    clock = Clock()
    factory, drops = make_factory(
        clock=clock, tokens=ClientTokens.parse(["t"]), hello_timeout=10.0
    )
    trickler, transport = connect(factory)
    hello = netstring(encode_control(Hello("slow", token="t")))
    for byte in hello[:-1][:12]:
        clock.advance(1)
        trickler.dataReceived(bytes([byte]))
    assert transport.disconnecting and drops.kinds == ["no_hello"]
    close(trickler)

    prompt, prompt_transport = connect(factory)
    feed(prompt, hello)
    clock.advance(600)
    assert not prompt_transport.disconnecting
    close(prompt)
    assert not clock.getDelayedCalls()


def test_hello_deadline_waits_while_reading_is_paused() -> None:
    """
    While the server is not reading (stores behind), a waiting hello is not the peer's fault:
    the deadline starts again.
    """
    clock = Clock()
    factory, drops = make_factory(
        clock=clock, tokens=ClientTokens.parse(["t"]), hello_timeout=10.0
    )
    protocol, _ = connect(factory)
    protocol.flow.for_the_stores.pauseProducing()
    clock.advance(15)
    assert drops.kinds == []
    protocol.flow.for_the_stores.resumeProducing()
    clock.advance(10)
    assert drops.kinds == ["no_hello"]
    close(protocol)


def test_connections_beyond_the_cap_are_closed_at_once_logged_once_per_burst() -> None:
    """
    Past --max-connections a new connection is closed at once and counted; a burst of them is
    logged once, and once more when connections are let in again.
    """
    factory, drops = make_factory(max_connections=2)
    first, _ = connect(factory)
    connect(factory)
    with capturedLogs() as events:
        turned = [connect(factory) for _ in range(5)]
    assert all(t.disconnected for _, t in turned)
    assert drops.kinds == ["too_many_connections"] * 5
    assert len([e for e in events if e["log_level"] == LogLevel.warn]) == 1
    assert len(factory.connections) == 2
    for p, _ in turned:
        p.dataReceived(netstring(b"ignored"))
        close(p)
    close(first)
    with capturedLogs() as events:
        _, transport = connect(factory)
    assert not transport.disconnecting
    assert [e["n"] for e in events if "accepting" in e["log_format"]] == [5]


def test_total_buffered_bytes_are_bounded() -> None:
    """
    Partial messages of all connections together stay under --max-buffered-bytes: past it,
    the connection holding the most is dropped and the others go on.
    """
    factory, drops = make_factory(max_buffered_bytes=2000)
    big, big_transport = connect(factory)
    small, small_transport = connect(factory)
    feed(big, b"999:" + b"x" * 900)
    feed(small, b"999:" + b"x" * 500)
    assert factory.buffered_bytes == 1400 and drops.kinds == []
    third, _third_transport = connect(factory)
    feed(third, b"999:" + b"y" * 700)
    assert drops.kinds == ["buffered_bytes"]
    assert big_transport.disconnecting and not small_transport.disconnecting
    assert factory.buffered_bytes == 1200
    feed(small, b"y" * 499 + b",")
    assert factory.buffered_bytes == 700
    for p in (big, small, third):
        close(p)
    assert factory.buffered_bytes == 0


# -- properties ---------------------------------------------------------------------------------


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def deep(opener: str, depth: int) -> bytes:
    closer = {"[": "]", "{": "}"}[opener[0]]
    return (opener * depth + "1" + closer * depth).encode()


control_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["hello", "ack", "refusal", "x"])},
        optional={"name": json_values, "token": json_values, "sha256": json_values},
    ).map(lambda v: json.dumps(v).encode()),
    st.builds(deep, st.sampled_from(["[", '{"a":']), st.integers(1, 400)),
    st.text(alphabet=st.characters() | st.characters(categories=["Cs"]), max_size=20).map(
        lambda t: ('{"type":"hello","name":"' + t + '"}').encode("utf-8", "surrogatepass")
    ),
    st.just(b'{"type":"hello","name":"\\ud800"}'),
    st.integers(0, 10**5).map(lambda n: b'{"type":"hello","name":"' + b"n" * n + b'"}'),
    st.binary(max_size=50),
)
payload_frames = st.one_of(
    st.text(st.characters() | st.characters(categories=["Cs"]), max_size=60).map(
        lambda t: netstring(t.encode("utf-8", "surrogatepass"))
    ),
    st.just(netstring(block_json(BLOCK))),
    st.just(netstring(encode_control(Hello("node")))),
)
hostile_frames = st.one_of(
    st.binary(max_size=40),  # raw bytes, framing or not
    st.binary(max_size=60).map(netstring),
    control_bodies.map(lambda b: netstring(CONTROL_MARK + b)),
    st.integers(1, 20_000).map(lambda n: b"9" * n + b":"),
)
frames = payload_frames | hostile_frames


@pytest.mark.property
@given(
    first=st.lists(payload_frames, max_size=4),
    then=st.lists(frames, max_size=6),
    cuts=st.lists(st.integers(1, 64), max_size=40),
)
def test_hostile_streams_cost_only_their_own_connection(
    first: list[bytes], then: list[bytes], cuts: list[int]
) -> None:
    """
    Whatever a peer sends, in whatever chunks: dataReceived never raises and nothing is logged
    as a bug; a dropped connection is counted once; each ack names a payload that was sent and
    is stored byte for byte under its SHA256; another connection is still acked afterwards.
    """
    clock, store = Clock(), MemoryStore()
    factory, drops = make_factory(store, clock)
    hostile, transport = connect(factory)
    data = b"".join(first + then)
    with capturedLogs() as events:
        i = n = 0
        while i < len(data):
            size = cuts[n % len(cuts)] if cuts else len(data)
            hostile.dataReceived(data[i : i + size])
            clock.advance(0)  # commit what was read, and ack it
            i, n = i + size, n + 1
        honest, honest_transport = connect(factory)
        feed(honest, netstring(b"honest"))
        clock.advance(0)
    event(f"dropped: {drops.kinds[0] if drops.kinds else 'no'}")
    assert no_failures(events)
    assert len(drops.kinds) == (1 if hostile.dropped else 0)
    assert sent_frames(honest_transport) == [encode_control(Ack(payload_hash(b"honest")))]
    for frame in sent_frames(transport):
        assert frame.startswith(CONTROL_MARK)
        obj = json.loads(frame[1:])
        if obj["type"] == "ack":
            text = store.tables.payloads[obj["sha256"]]
            raw = text.encode("utf-8")
            assert hashlib.sha256(raw).hexdigest() == obj["sha256"]
            assert netstring(raw) in data
            event("acked a hostile payload")
    close(hostile)
    close(honest)
    assert factory.buffered_bytes == 0
