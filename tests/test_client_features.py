"""
The client's side of the features a server welcomes: payloads wait for the welcome, each carries
its sighting (kept in the spool too, which still reads older files), pings are answered at once,
and a server that welcomes nothing gets exactly what a client of before sent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from ethtwisted.client.delivery import WELCOME_TIMEOUT, Delivery
from ethtwisted.client.failover import ServerList
from ethtwisted.client.follower import Follower
from ethtwisted.client.outbox import Outbox, queue_blocks
from ethtwisted.client.spool import Spool
from ethtwisted.frames import (
    FEATURES,
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
from ethtwisted.protocol import CONTROL_MARK, block_json, payload_hash
from tests.fakes import FakeEndpoint, FakeNode, one_server
from tests.helpers import Logs, wired
from tests.wire import feed, netstring

HELLO = Hello("c1", features=FEATURES)


def frames(transport: StringTransport) -> list[Any]:
    """
    What the client wrote, netstring by netstring: control frames decoded, payloads as bytes.
    """
    data, out = transport.value(), []
    while data:
        length, _, rest = data.partition(b":")
        frame, data = rest[: int(length)], rest[int(length) + 1 :]
        out.append(decode_control(frame) if frame.startswith(CONTROL_MARK) else frame)
    return out


def sighting(payload: bytes, seen_ms: int = 1_000, via: str = "poll") -> Sighting:
    return Sighting(payload_hash(payload), seen_ms, via)


def connected(delivery: Delivery) -> tuple[Any, StringTransport]:
    protocol = delivery.factory().buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_payloads_wait_for_the_welcome_then_carry_their_sightings(logs: Logs) -> None:
    """
    A hello that lists features is followed by nothing until the server's welcome; then every
    pending payload goes out right after its own sighting, and so does each one queued later.
    """
    clock, outbox = Clock(), Outbox(10)
    outbox.put([b"a", b"b"], sightings=[sighting(b"a", 5, "subscription"), sighting(b"b", 6)])
    delivery = wired(Delivery(outbox, one_server(), clock, HELLO))
    protocol, transport = connected(delivery)
    outbox.put([b"c"], sightings=[sighting(b"c", 7, "backfill")])
    assert frames(transport) == [HELLO]
    feed(protocol, netstring(encode_control(Welcome(("sighting", "status", "ping", "x")))))
    assert delivery.features == {"sighting", "status", "ping"}
    outbox.put([b"d"], sightings=[sighting(b"d", 8)])
    assert frames(transport) == [
        HELLO,
        sighting(b"a", 5, "subscription"), b"a",
        sighting(b"b", 6), b"b",
        sighting(b"c", 7, "backfill"), b"c",
        sighting(b"d", 8), b"d",
    ]  # fmt: skip
    assert not clock.getDelayedCalls()


def test_a_server_without_welcome_gets_what_an_older_client_sent(logs: Logs) -> None:
    """
    When no welcome comes within WELCOME_TIMEOUT (a server of before), the client sends its
    payloads as a client of before did: no sighting, no status, and it drops the connection
    on a ping.
    """
    clock, outbox = Clock(), Outbox(10)
    outbox.put([b"a"], sightings=[sighting(b"a")])
    delivery = wired(Delivery(outbox, one_server(), clock, HELLO))
    protocol, transport = connected(delivery)
    clock.advance(WELCOME_TIMEOUT - 0.01)
    assert frames(transport) == [HELLO]
    clock.advance(0.01)
    outbox.put([b"b"], sightings=[sighting(b"b")])
    assert not delivery.send_status(Status(peers=1))
    assert frames(transport) == [HELLO, b"a", b"b"]
    feed(protocol, netstring(encode_control(Ack(payload_hash(b"a")))))
    assert outbox.pending() == [b"b"]
    feed(protocol, netstring(encode_control(Ping(1))))
    assert protocol.dropped == "ping frame without a welcome listing ping"
    assert not clock.getDelayedCalls()


def test_a_server_that_sent_no_welcome_is_not_waited_for_again(logs: Logs) -> None:
    """
    The wait for the welcome is once per server: after a connection on which none came, the
    next connections to that server get their payloads at once, as from a client of before.
    Should a welcome come after all (the server was upgraded), what it lists is used from then
    on, and the connection after waits for the welcome again.  Another server listed is
    waited for on its own.
    """
    clock, outbox = Clock(), Outbox(10)
    outbox.put([b"a"], sightings=[sighting(b"a")])
    servers = ServerList([("old", FakeEndpoint()), ("other", FakeEndpoint())])
    delivery = wired(Delivery(outbox, servers, clock, HELLO))
    protocol, transport = connected(delivery)
    clock.advance(WELCOME_TIMEOUT)
    assert frames(transport) == [HELLO, b"a"]
    protocol.connectionLost(None)
    protocol, transport = connected(delivery)
    assert frames(transport) == [HELLO, b"a"]
    outbox.put([b"b"], sightings=[sighting(b"b")])
    assert frames(transport) == [HELLO, b"a", b"b"]
    feed(protocol, netstring(encode_control(Welcome(("sighting",)))))
    outbox.put([b"c"], sightings=[sighting(b"c")])
    assert frames(transport) == [HELLO, b"a", b"b", sighting(b"c"), b"c"]
    protocol.connectionLost(None)
    protocol, transport = connected(delivery)
    assert frames(transport) == [HELLO]
    feed(protocol, netstring(encode_control(Welcome(("sighting",)))))
    assert frames(transport)[1:] == [sighting(b"a"), b"a", sighting(b"b"), b"b",
                                     sighting(b"c"), b"c"]  # fmt: skip
    clock.advance(WELCOME_TIMEOUT)
    protocol.connectionLost(None)
    servers.current = 1
    protocol, transport = connected(delivery)
    assert frames(transport) == [HELLO]
    feed(protocol, netstring(encode_control(Welcome(("sighting",)))))
    assert frames(transport)[1:3] == [sighting(b"a"), b"a"]
    delivery.stop()
    assert not clock.getDelayedCalls()


def test_a_welcome_without_features_asked_for_costs_the_connection(logs: Logs) -> None:
    """
    A welcome to a hello that listed no features, or a second welcome, is a protocol error.
    """
    delivery = wired(Delivery(Outbox(10), one_server(), Clock(), Hello("c1")))
    protocol, _ = connected(delivery)
    feed(protocol, netstring(encode_control(Welcome(("status",)))))
    assert protocol.dropped == "unexpected welcome frame"
    delivery = wired(Delivery(Outbox(10), one_server(), Clock(), HELLO))
    protocol, _transport = connected(delivery)
    feed(protocol, netstring(encode_control(Welcome(("status",)))) * 2)
    assert protocol.dropped == "unexpected welcome frame"


def test_pings_are_answered_at_once_with_the_clock_in_ms(logs: Logs) -> None:
    """
    After a welcome listing ping, each ping is answered at once with a pong of its id and the
    injected clock's time in ms; a welcome without ping makes a ping a protocol error.
    """
    clock = Clock()
    clock.advance(1_700_000_000.1234)
    delivery = wired(Delivery(Outbox(10), one_server(), clock, HELLO))
    protocol, transport = connected(delivery)
    feed(protocol, netstring(encode_control(Welcome(("ping",)))))
    feed(protocol, netstring(encode_control(Ping(41))) + netstring(encode_control(Ping(42))))
    assert frames(transport)[1:] == [Pong(41, 1_700_000_000_123), Pong(42, 1_700_000_000_123)]
    delivery = wired(Delivery(Outbox(10), one_server(), clock, HELLO))
    protocol, transport = connected(delivery)
    feed(protocol, netstring(encode_control(Welcome(("status",)))))
    feed(protocol, netstring(encode_control(Ping(1))))
    assert protocol.dropped and frames(transport) == [HELLO]


def test_status_goes_only_where_status_was_welcomed(logs: Logs) -> None:
    """
    send_status sends a status frame only on a connection whose welcome listed status, and
    says whether it did; the welcome listeners hear of each welcome.
    """
    delivery = wired(Delivery(Outbox(10), one_server(), Clock(), HELLO))
    heard: list[frozenset[str]] = []
    delivery.welcome_listeners.append(heard.append)
    assert not delivery.send_status(Status(peers=1))
    protocol, transport = connected(delivery)
    assert not delivery.send_status(Status(peers=1))
    feed(protocol, netstring(encode_control(Welcome(("status",)))))
    assert delivery.send_status(Status(peers=2))
    assert frames(transport) == [HELLO, Status(peers=2)]
    assert heard == [frozenset({"status"})]


def test_resends_after_a_reconnect_carry_the_original_sighting(logs: Logs) -> None:
    """
    Payloads left unacknowledged on a connection that dropped go out again on the next one,
    each with the sighting it was first queued with.
    """
    clock, outbox = Clock(), Outbox(10)
    delivery = wired(Delivery(outbox, one_server(), clock, HELLO))
    protocol, transport = connected(delivery)
    feed(protocol, netstring(encode_control(Welcome(("sighting",)))))
    outbox.put([b"a"], sightings=[sighting(b"a", 11, "subscription")])
    protocol.connectionLost(None)
    protocol, transport = connected(delivery)
    feed(protocol, netstring(encode_control(Welcome(("sighting",)))))
    assert frames(transport) == [HELLO, sighting(b"a", 11, "subscription"), b"a"]


@pytest_twisted.ensureDeferred
async def test_the_follower_queues_each_block_with_how_and_when(logs: Logs) -> None:
    """
    The follower's sink queues each block's payload with a sighting: its SHA256, the time the
    client learnt of it in ms on the injected clock, and how (the head by poll, the blocks
    under it by backfill).
    """
    clock, node, outbox = Clock(), FakeNode(), Outbox(100)
    node.mine(3)
    follower = Follower(node, queue_blocks(outbox, "json"), clock=clock)
    clock.advance(12.5)
    await follower.follow()
    node.mine(2)
    clock.advance(1.0)
    await follower.follow()
    [first, *rest] = outbox.pending()
    assert outbox.sighting(first) == sighting(first, 12_500, "poll")
    assert [outbox.sighting(p) for p in rest] == [
        sighting(block_json(node.canonical[-2]), 13_500, "backfill"),
        sighting(block_json(node.canonical[-1]), 13_500, "poll"),
    ]


@pytest_twisted.ensureDeferred
async def test_the_spool_keeps_sightings_and_reads_older_files(
    tmp_path: Path, logs: Logs, reactor: Any
) -> None:
    """
    A restored spool gives each payload back with its sighting; a batch file of an older
    client (no sightings) and sightings that are not ones (wrong types, out of range, an unknown
    source, a list of the wrong length) give the payloads back without.
    """
    outbox = Outbox(100, Spool(str(tmp_path), reactor))
    await outbox.put([b"a", b"b"], sightings=[sighting(b"a", 3, "backfill")])
    await outbox.close()
    older = [
        {"payloads": ["c"]},
        {"payloads": ["d", "e", "f", "g"], "sightings": [
            {"seen_ms": -1, "via": "poll"}, {"seen_ms": 1, "via": "unknown"},
            {"seen_ms": True, "via": "poll"}, {"seen_ms": 2**63, "via": "poll"}]},
        {"payloads": ["h"], "sightings": [None, {"seen_ms": 1, "via": "poll"}]},
        {"payloads": ["i"], "sightings": [{"seen_ms": 9, "via": "subscription"}]},
    ]  # fmt: skip
    for n, obj in enumerate(older, start=10):
        (tmp_path / f"batch-{n:012d}.json").write_text(json.dumps(obj))
    again = Outbox(100, Spool(str(tmp_path), reactor))
    again.restore()
    assert again.pending() == [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i"]
    kept = {p: again.sighting(p) for p in again.pending() if again.sighting(p)}
    assert kept == {b"a": sighting(b"a", 3, "backfill"), b"i": sighting(b"i", 9, "subscription")}
    await again.close()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".bad")]


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor

    return reactor
