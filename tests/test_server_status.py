"""
What a client that lists features gets from the server, without a network or a database: the
welcome, pings and the clock offset estimated from their pongs, sightings attached to their
payloads and corrected for that offset, status reports committed with the payloads; and what
a client without features still gets (nothing new).  The real server and stores are in
test_server_e2e.py and test_storage_contract.py.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from ethtwisted.frames import (
    Ack,
    Hello,
    Ping,
    Pong,
    Sighting,
    Status,
    Welcome,
    decode_control,
    encode_control,
)
from ethtwisted.protocol import block_json, payload_hash
from ethtwisted.records import Received, StatusReport
from ethtwisted.server.clock import (
    FIRST_PING_INTERVAL,
    FIRST_PINGS,
    MAX_OUTSTANDING,
    PING_INTERVAL,
    SAMPLES,
    ClockOffset,
)
from ethtwisted.server.factory import ServerFactory
from ethtwisted.server.ingest import Ingest
from ethtwisted.server.protocol import ServerProtocol
from ethtwisted.server.sightings import CLOCK_WAIT, MAX_PENDING_SIGHTINGS
from tests.blocks import block
from tests.fakes import HeldStore
from tests.wire import feed, netstring, sent_frames

T0 = 1_700_000_000.0
FEATURES = ("status", "sighting", "ping")


def control(frame: object) -> bytes:
    return netstring(encode_control(frame))  # type: ignore[arg-type]


def connect(
    clock: Clock, ping_interval: float = PING_INTERVAL
) -> tuple[ServerProtocol, StringTransport, HeldStore]:
    store = HeldStore()
    ingest = Ingest(store, None, clock)
    factory = ServerFactory(ingest, clock, 65536, 60.0, ping_interval=ping_interval)
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4000))
    protocol.makeConnection(transport)
    return protocol, transport, store


def frames(transport: StringTransport) -> list[object]:
    return [decode_control(f) for f in sent_frames(transport)]


def commit_all(store: HeldStore, clock: Clock) -> None:
    """Commit every group the ingest starts, until it starts no more (bounded)."""
    for _ in range(10):
        clock.advance(0)
        pending = [d for d in store.results if not d.called]
        if not pending:
            return
        for d in pending:
            store.commit(store.results.index(d))
    raise AssertionError("the ingest kept starting groups")


def stored(store: HeldStore) -> list[Received | StatusReport]:
    return [item for batch in store.batches for item in batch]


def close(protocol: ServerProtocol, clock: Clock) -> None:
    protocol.transport.loseConnection()
    protocol.connectionLost()
    clock.advance(0)
    assert not clock.getDelayedCalls()


def test_a_hello_with_features_is_welcomed_with_those_both_understand() -> None:
    """
    A hello listing features gets a welcome listing those the server understands too (an
    unknown one left out), then a first ping when C{ping} is among them.
    """
    clock = Clock()
    clock.advance(T0)
    protocol, transport, _ = connect(clock)
    feed(protocol, control(Hello("a", features=("ping", "later-thing", "status"))))
    assert frames(transport) == [Welcome(("status", "ping")), Ping(1)]
    assert protocol.welcomed == {"status", "ping"}
    close(protocol, clock)


def test_a_hello_without_features_gets_no_welcome_nor_pings() -> None:
    """
    A client of before (no features in its hello) never gets a frame it does not know: no
    welcome, no ping, however long it stays; and its status or sighting frame costs it the
    connection as any unknown frame did.
    """
    clock = Clock()
    protocol, transport, store = connect(clock)
    feed(protocol, control(Hello("old")))
    feed(protocol, netstring(b"payload"))
    commit_all(store, clock)
    clock.advance(10 * PING_INTERVAL)
    assert frames(transport) == [Ack(payload_hash(b"payload"))]
    feed(protocol, control(Sighting("0" * 64, 1, "poll")))
    assert transport.disconnecting
    assert protocol.dropped == "unexpected sighting frame"


@pytest.mark.parametrize(
    "frame",
    [Status(peers=1), Sighting("0" * 64, 1, "poll"), Pong(1, 1)],
)
def test_frames_of_features_not_welcomed_cost_the_connection(frame: object) -> None:
    """
    A status, sighting or pong frame from a client whose welcome did not list that feature
    is a protocol error, as before.
    """
    clock = Clock()
    protocol, transport, _ = connect(clock)
    feed(protocol, control(Hello("a", features=("later-thing",))))
    assert frames(transport) == [Welcome(())]
    feed(protocol, control(frame))
    assert transport.disconnecting
    assert not clock.getDelayedCalls()


def test_pings_come_quickly_after_the_welcome_then_every_30_seconds() -> None:
    """
    The server sends L{FIRST_PINGS} pings L{FIRST_PING_INTERVAL} apart after the welcome,
    then one every L{PING_INTERVAL} on the reactor's clock, and none once the connection ends.
    """
    clock = Clock()
    protocol, transport, _ = connect(clock)
    feed(protocol, control(Hello("a", features=FEATURES)))
    clock.pump([FIRST_PING_INTERVAL] * (FIRST_PINGS - 1))
    pings = [f for f in frames(transport) if isinstance(f, Ping)]
    assert [p.id for p in pings] == list(range(1, FIRST_PINGS + 1))
    clock.advance(PING_INTERVAL - 0.01)
    assert len([f for f in frames(transport) if isinstance(f, Ping)]) == FIRST_PINGS
    clock.advance(0.01)
    assert len([f for f in frames(transport) if isinstance(f, Ping)]) == FIRST_PINGS + 1
    close(protocol, clock)


def test_offset_is_that_of_the_pong_with_the_shortest_round_trip() -> None:
    """
    Each pong gives offset = client - (t0 + t3) / 2; the estimate is the one of the shortest
    round trip among the last L{SAMPLES} (a slow, asymmetric one does not spoil it); pongs
    to unknown or forgotten pings are refused; at most L{MAX_OUTSTANDING} pings are awaited.
    """
    estimate = ClockOffset()
    first = estimate.ping(100.0)
    assert estimate.pong(first, 107_000, 100.2)  # 0.2 s round trip: offset 6.9
    assert estimate.offset == pytest.approx(6.9)
    second = estimate.ping(200.0)
    assert estimate.pong(second, 207_010, 200.02)  # 0.02 s: offset 6.9999...
    assert estimate.offset == pytest.approx(7.0)
    assert estimate.rtt == pytest.approx(0.02)
    slow = estimate.ping(300.0)
    assert estimate.pong(slow, 310_000, 302.0)  # 2 s, asymmetric: offset 9 ignored
    assert estimate.offset == pytest.approx(7.0)
    assert not estimate.pong(slow, 1, 303.0)
    assert not estimate.pong(999, 1, 303.0)
    ids = [estimate.ping(400.0 + i) for i in range(MAX_OUTSTANDING + 2)]
    assert sorted(estimate.outstanding) == ids[-MAX_OUTSTANDING:]
    assert not estimate.pong(ids[0], 1, 410.0)
    for i in range(SAMPLES):
        estimate.pong(estimate.ping(500.0 + i), int((500.0 + i + 1.5) * 1000), 500.0 + i + 1)
    assert len(estimate.samples) == SAMPLES
    assert estimate.offset == pytest.approx(1.0)  # the 0.02 s sample is gone


def test_a_client_paused_past_the_pings_awaited_keeps_its_connection() -> None:
    """
    A client that stops for longer than L{MAX_OUTSTANDING} pings (a process stopped, a host
    suspended) and then answers every one of them, late: the pongs of pings forgotten meanwhile
    are ignored, the others taken, and the connection stays, heard again; a pong of a ping never
    sent still costs it.
    """
    clock = Clock()
    clock.advance(T0)
    protocol, transport, _ = connect(clock, ping_interval=2.0)
    feed(protocol, control(Hello("paused", features=FEATURES)))
    clock.pump([FIRST_PING_INTERVAL] * (FIRST_PINGS - 1) + [2.0] * (MAX_OUTSTANDING + 2))
    pings = [f for f in frames(transport) if isinstance(f, Ping)]
    assert len(pings) > MAX_OUTSTANDING + 2
    now_ms = int(clock.seconds() * 1000)
    for ping in pings:
        feed(protocol, control(Pong(ping.id, now_ms)))
    assert not transport.disconnecting and protocol.dropped is None
    assert protocol.last_heard == clock.seconds()
    assert protocol.sightings.clock.outstanding == {}
    assert len(protocol.sightings.clock.samples) == MAX_OUTSTANDING
    feed(protocol, control(Pong(pings[-1].id + 1, now_ms)))
    assert transport.disconnecting
    assert protocol.dropped == f"pong {pings[-1].id + 1} answers no ping sent"
    close(protocol, clock)


def test_sightings_are_corrected_for_the_clients_clock_and_attached_to_their_payload() -> None:
    """
    A client whose clock is 7 s ahead: payloads sent before its first pong wait for it, then
    go on with their sightings corrected (seen 30 ms before arrival, on the server's clock,
    not 7 s after); a payload without a sighting is seen on arrival via C{unknown}; a sighting
    only attaches to the payload with its SHA256.
    """
    clock = Clock()
    clock.advance(T0)
    protocol, transport, store = connect(clock)
    feed(protocol, control(Hello("shifted", features=FEATURES)))
    a, b = block_json(block(1, 1)), block_json(block(1, 2))
    clock.advance(0.05)
    seen_ms = int((clock.seconds() + 7 - 0.03) * 1000)
    feed(protocol, control(Sighting(payload_hash(a), seen_ms, "subscription")))
    feed(protocol, control(Sighting(payload_hash(b"other"), seen_ms, "poll")))
    feed(protocol, netstring(a))
    feed(protocol, netstring(b))
    clock.advance(0)
    assert store.batches == []  # waiting for the first pong
    arrival = clock.seconds()
    clock.advance(0.01)
    feed(protocol, control(Pong(1, int((T0 + 7 + 0.03) * 1000))))  # sent at T0, 60 ms trip
    commit_all(store, clock)
    first, second = stored(store)
    assert isinstance(first, Received) and isinstance(second, Received)
    assert (first.sha256, first.via) == (payload_hash(a), "subscription")
    assert first.seen_at == pytest.approx(arrival - 0.03, abs=0.002)
    assert (second.sha256, second.via, second.seen) == (payload_hash(b), "unknown", None)
    assert second.seen_at == arrival
    assert Ack(payload_hash(a)) in frames(transport)
    close(protocol, clock)


def test_payloads_go_on_after_a_second_without_a_pong() -> None:
    """
    A client that never answers pings has its payloads stored after L{CLOCK_WAIT} anyway, its
    sightings clamped to no later than their arrival.
    """
    clock = Clock()
    clock.advance(T0)
    protocol, _transport, store = connect(clock)
    feed(protocol, control(Hello("mute", features=FEATURES)))
    payload = block_json(block(1, 1))
    ahead = int((T0 + 60) * 1000)
    feed(protocol, control(Sighting(payload_hash(payload), ahead, "poll")))
    feed(protocol, netstring(payload))
    clock.advance(CLOCK_WAIT - 0.01)
    assert store.batches == []
    clock.advance(0.01)
    commit_all(store, clock)
    (item,) = stored(store)
    assert isinstance(item, Received) and item.seen_at == T0
    close(protocol, clock)


def test_unmatched_sightings_are_bounded_and_a_late_payload_keeps_its_own() -> None:
    """
    At most L{MAX_PENDING_SIGHTINGS} sightings wait for their payloads; one more forgets the
    oldest, whose payload then counts as seen on arrival.
    """
    clock = Clock()
    clock.advance(T0)
    protocol, _, store = connect(clock)
    feed(protocol, control(Hello("a", features=("sighting",))))
    payloads = [block_json(block(1, n)) for n in range(MAX_PENDING_SIGHTINGS + 1)]
    for p in payloads:
        feed(protocol, control(Sighting(payload_hash(p), int(T0 * 1000) - 500, "poll")))
    assert len(protocol.sightings.pending) == MAX_PENDING_SIGHTINGS
    feed(protocol, netstring(payloads[0]))
    feed(protocol, netstring(payloads[-1]))
    commit_all(store, clock)
    oldest, newest = stored(store)
    assert isinstance(oldest, Received) and (oldest.via, oldest.seen_at) == ("unknown", T0)
    assert isinstance(newest, Received) and newest.seen_at == pytest.approx(T0 - 0.5)
    close(protocol, clock)


def test_status_reports_go_into_the_group_commit_one_per_client() -> None:
    """
    A status frame is committed in the next group beside the payloads, dated on arrival; two
    from one client before that group keep only the later; nothing is acknowledged for it.
    """
    clock = Clock()
    clock.advance(T0)
    protocol, transport, store = connect(clock)
    feed(protocol, control(Hello("a", features=("status",))))
    feed(protocol, control(Status(peers=1)))
    feed(protocol, netstring(b"payload"))
    feed(protocol, control(Status(peers=2)))
    commit_all(store, clock)
    assert len(store.batches) == 1
    assert [r for r in stored(store) if isinstance(r, StatusReport)] == [
        StatusReport("a", T0, Status(peers=2))
    ]
    clock.advance(1)
    assert frames(transport) == [Welcome(("status",)), Ack(payload_hash(b"payload"))]
    feed(protocol, control(Status(peers=0)))
    commit_all(store, clock)
    assert store.batches[-1] == [StatusReport("a", T0 + 1, Status(peers=0))]
    close(protocol, clock)
