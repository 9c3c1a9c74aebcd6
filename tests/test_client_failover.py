"""
Failover between the servers of C{--server}: which server the client uses, when it leaves it,
what it resends, when it comes back to the first; with C{task.Clock}, in-memory connections
and endpoints that connect only when the test says so.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.test import iosim

from ethtwisted import client_tap
from ethtwisted.client import EthClient
from ethtwisted.client.delivery import Delivery, ReconnectingService
from ethtwisted.client.failover import Prober, ServerList
from ethtwisted.client.oneshot import OneShotDelivery
from ethtwisted.client.outbox import Outbox
from ethtwisted.frames import Ack, Hello, Refusal
from ethtwisted.metrics.client import ClientMetrics
from ethtwisted.protocol import payload_hash
from tests.fakes import AckingPeer, FakeEndpoint, OneShotServer
from tests.helpers import Logs, options

ACK_TIMEOUT = 30.0


class Fleet:
    """
    A client's delivery over servers C{a}, C{b} (and more), each a L{FakeEndpoint}, through a
    C{ClientService} on a L{Clock}, paced as the server list says (reconnections at once); a
    server's probe C{n} s after its n-th failure in a row.
    """

    def __init__(self, names: str = "ab", queued: int = 2) -> None:
        self.clock = Clock()
        self.endpoints = {name: FakeEndpoint() for name in names}
        self.servers = ServerList(list(self.endpoints.items()))
        self.outbox = Outbox(100)
        self.outbox.put([f"m{i}".encode() for i in range(queued)])
        self.delivery = Delivery(self.outbox, self.servers, self.clock, Hello("c1"), ACK_TIMEOUT)
        if self.delivery.prober is not None:
            self.delivery.prober.policy = float
        self.registry = CollectorRegistry()
        self.metrics = ClientMetrics(self.registry, self.clock, lambda: len(self.outbox), None)
        client_tap.wire(outbox=self.outbox, delivery=self.delivery, metrics=self.metrics)
        self.service = ReconnectingService(
            self.servers,
            self.delivery.factory(),
            retryPolicy=lambda n: 1.0,
            clock=self.clock,
        )
        self.pumps: list[iosim.IOPump] = []

    def accept(self, name: str, peer: AckingPeer) -> iosim.IOPump:
        _, pump = self.endpoints[name].accept(peer)
        self.pumps.append(pump)
        return pump

    def flush(self) -> None:
        """
        Deliver what the connections wrote, then run what that made due at once (a
        reconnection).
        """
        for pump in self.pumps:
            pump.flush()
        self.clock.advance(0)

    def attempts(self) -> dict[str, int]:
        return {name: len(e.attempts) for name, e in self.endpoints.items()}

    def probes(self) -> dict[str, int]:
        """
        How many of each server's connection attempts waiting are probes (the others are the
        delivery's).
        """
        return {
            name: sum(getattr(factory, "delivery", None) is not self.delivery
                      for _, factory in e.attempts)
            for name, e in self.endpoints.items()
        }  # fmt: skip

    def in_use(self) -> dict[str, float | None]:
        return {
            name: self.registry.get_sample_value("ethtwisted_server_in_use", {"server": name})
            for name in self.endpoints
        }

    def switches(self) -> float | None:
        return self.registry.get_sample_value("ethtwisted_server_switches_total")

    def stop(self) -> None:
        self.delivery.stop()
        self.service.stopService()
        self.flush()
        for endpoint in self.endpoints.values():
            while endpoint.attempts:
                endpoint.refuse()
        assert not self.clock.getDelayedCalls()


def ack_of(payload: bytes) -> Ack:
    return Ack(payload_hash(payload))


def switch_lines(logs: Logs) -> list[str]:
    return logs.containing("now sending to")


def test_the_first_server_that_accepts_is_used(logs: Logs) -> None:
    """
    The client connects to the first listed server and sends it hello and the backlog; the
    others are never tried, nothing is probed, and no switch is logged or counted.
    """
    fleet = Fleet("abc")
    fleet.service.startService()
    assert fleet.attempts() == {"a": 1, "b": 0, "c": 0}
    peer = AckingPeer()
    fleet.accept("a", peer)
    assert peer.hellos == [Hello("c1")] and peer.payloads == [b"m0", b"m1"]
    assert len(fleet.outbox) == 0
    fleet.clock.advance(1000)
    assert fleet.attempts() == {"a": 0, "b": 0, "c": 0}
    assert not switch_lines(logs)
    assert fleet.in_use() == {"a": 1, "b": 0, "c": 0} and fleet.switches() == 0
    fleet.stop()


def test_a_refused_connection_moves_on_to_the_next_at_once(logs: Logs) -> None:
    """
    When the first server refuses the connection, the next is tried in the same attempt (no
    backoff) and gets hello and everything unacknowledged; the refusal and the switch are each
    logged once.  When every server has failed, the client connects to none of them until one
    acknowledges a probe (said once); each is probed on its own, the first to acknowledge gets
    the connection, and the others are still probed, later each time.
    """
    fleet = Fleet("abc")
    fleet.service.startService()
    fleet.endpoints["a"].refuse()
    assert fleet.attempts() == {"a": 0, "b": 1, "c": 0}
    fleet.endpoints["b"].refuse()
    fleet.endpoints["c"].refuse()
    assert fleet.attempts() == {"a": 0, "b": 0, "c": 0}
    [waiting] = logs.containing("every server listed has failed", LogLevel.warn)
    assert "waiting until one acknowledges a probe" in waiting
    fleet.clock.advance(1.0)
    assert fleet.attempts() == fleet.probes() == {"a": 1, "b": 1, "c": 1}
    fleet.endpoints["a"].refuse()
    fleet.endpoints["c"].refuse()
    fleet.accept("b", AckingPeer())
    assert fleet.probes() == {"a": 0, "b": 0, "c": 0}
    assert fleet.attempts() == {"a": 0, "b": 1, "c": 0}, "the delivery connects to b at once"
    peer = AckingPeer()
    fleet.accept("b", peer)
    assert peer.hellos == [Hello("c1")] and peer.payloads == [b"m0", b"m1"]
    fleet.clock.advance(1.9)
    assert fleet.attempts() == {"a": 0, "b": 0, "c": 0}
    fleet.clock.advance(0.1)
    assert fleet.attempts() == fleet.probes() == {"a": 1, "b": 0, "c": 1}
    assert len(logs.containing("cannot connect to a", LogLevel.warn)) == 1
    assert len(logs.containing("every server listed has failed")) == 1
    [line] = switch_lines(logs)
    assert "now sending to b instead of a (cannot connect: " in line
    assert "2 unacknowledged messages" in line
    assert fleet.in_use() == {"a": 0, "b": 1, "c": 0} and fleet.switches() == 1
    fleet.stop()


def test_a_server_that_stops_acknowledging_is_left_and_everything_unacked_resent(
    logs: Logs,
) -> None:
    """
    Once what was sent to the server in use has waited --ack-timeout seconds with no ack
    arriving (counted from the last ack, or from the send when nothing was outstanding; new
    sends do not reset it), the client closes that connection and goes to the next server at
    once, which gets everything unacknowledged, in order.  An ack within the timeout keeps the
    server.
    """
    fleet = Fleet(queued=0)
    fleet.service.startService()
    a = AckingPeer(ack=False)
    fleet.accept("a", a)
    fleet.outbox.put([b"x", b"y"])
    fleet.flush()
    fleet.clock.advance(ACK_TIMEOUT - 1)
    a.send_control(ack_of(b"x"))
    fleet.flush()
    fleet.clock.advance(11)
    fleet.outbox.put([b"z"])
    fleet.flush()
    fleet.clock.advance(ACK_TIMEOUT - 11 - 0.5)
    fleet.flush()
    assert fleet.outbox.pending() == [b"y", b"z"] and fleet.attempts() == {"a": 0, "b": 0}
    assert fleet.servers.name() == "a"
    fleet.clock.advance(0.5)
    fleet.flush()
    [warning] = logs.containing("acknowledged nothing for 30 s", LogLevel.warn)
    assert warning.startswith("a ") and "2 messages waiting" in warning
    assert not logs.containing("lost the connection")
    assert fleet.attempts() == {"a": 0, "b": 1}
    b = AckingPeer()
    fleet.accept("b", b)
    assert b.hellos == [Hello("c1")] and b.payloads == [b"y", b"z"]
    assert len(fleet.outbox) == 0
    [line] = switch_lines(logs)
    assert "now sending to b instead of a (no acknowledgement for 30 s)" in line
    assert fleet.in_use() == {"a": 0, "b": 1} and fleet.switches() == 1
    fleet.stop()


@pytest.mark.expected_log_errors("^a refused this client: ")
def test_a_server_that_refuses_the_token_counts_as_failed(logs: Logs) -> None:
    """
    A server that refuses this client's token is left for the next server at once; the
    refusal is logged once, and /healthz clears as soon as the next server acknowledges.
    """
    fleet = Fleet()
    fleet.service.startService()
    refusing = AckingPeer(ack=False)
    fleet.accept("a", refusing)
    refusing.send_control(Refusal("client 'c1': missing or invalid token"))
    fleet.flush()
    assert len(logs.containing("a refused this client", LogLevel.error)) == 1
    assert fleet.metrics.health()["server"] is not None
    b = AckingPeer()
    fleet.accept("b", b)
    assert b.payloads == [b"m0", b"m1"]
    [line] = switch_lines(logs)
    assert "instead of a (refused this client: client 'c1': missing or invalid token)" in line
    assert not logs.containing("lost the connection")
    assert fleet.metrics.health()["server"] is None
    fleet.stop()


def fail_over_to_b(fleet: Fleet) -> AckingPeer:
    """
    Start the fleet with server a refusing connections, so that the client ends up on b.
    """
    fleet.service.startService()
    fleet.endpoints["a"].refuse()
    b = AckingPeer()
    fleet.accept("b", b)
    return b


def test_the_first_server_is_probed_and_gone_back_to_once_it_acknowledges(logs: Logs) -> None:
    """
    While on another server, the client probes the first listed one at a growing interval: a
    probe says hello and sends one message.  Refused connections and a server that takes the
    probe but does not acknowledge it keep the client where it is; once the first server
    acknowledges a probe, the client closes its connection and goes back to it, sending it
    everything unacknowledged.  Each of the two switches is logged once.
    """
    fleet = Fleet()
    fail_over_to_b(fleet)
    fleet.outbox.put([b"n"])
    fleet.flush()
    assert len(fleet.outbox) == 0
    fleet.clock.advance(0.5)
    assert fleet.attempts() == {"a": 0, "b": 0}
    fleet.clock.advance(0.5)
    assert fleet.attempts() == {"a": 1, "b": 0}
    fleet.endpoints["a"].refuse()
    fleet.clock.advance(1.5)
    assert fleet.attempts() == {"a": 0, "b": 0}
    fleet.clock.advance(0.5)
    holding = AckingPeer(ack=False)
    fleet.accept("a", holding)
    assert holding.hellos == [Hello("c1")] and holding.payloads == [b"n"]
    fleet.clock.advance(ACK_TIMEOUT)
    fleet.flush()
    assert fleet.servers.name() == "b" and len(switch_lines(logs)) == 1
    fleet.clock.advance(3.0)
    answering = AckingPeer()
    fleet.accept("a", answering)
    assert answering.payloads == [b"n"]
    fleet.flush()
    fleet.outbox.put([b"p"])
    fleet.clock.advance(1.0)
    a = AckingPeer()
    fleet.accept("a", a)
    assert a.hellos == [Hello("c1")] and a.payloads == [b"p"]
    assert len(fleet.outbox) == 0
    first, second = switch_lines(logs)
    assert "now sending to b instead of a" in first
    assert "now sending to a instead of b (it acknowledges again)" in second
    assert not logs.containing("lost the connection")
    assert fleet.in_use() == {"a": 1, "b": 0} and fleet.switches() == 2
    fleet.clock.advance(1000)
    assert fleet.attempts() == {"a": 0, "b": 0}, "no probes while on the first server"
    fleet.stop()


def test_a_probe_with_nothing_to_send_waits_for_a_message(logs: Logs) -> None:
    """
    A probe needs a message to be acknowledged: with none sent yet, no probe connects, and
    the first message queued is the one probed with.
    """
    fleet = Fleet(queued=0)
    fail_over_to_b(fleet)
    fleet.clock.advance(10)
    assert fleet.attempts() == {"a": 0, "b": 0}
    fleet.outbox.put([b"first"])
    fleet.flush()
    fleet.clock.advance(5)
    probe = AckingPeer(ack=False)
    fleet.accept("a", probe)
    assert probe.payloads == [b"first"]
    fleet.stop()


def test_a_probe_resends_what_was_acknowledged_last_not_what_waits(logs: Logs) -> None:
    """
    A probe sends no sighting: it sends the payload acknowledged last (stored, with its
    sighting, already), not one still waiting, whose sighting would be lost should the probe
    be the first to reach a store; before any acknowledgement, the oldest waiting.
    """
    fleet = Fleet(queued=0)
    fleet.service.startService()
    fleet.endpoints["a"].refuse()
    b = AckingPeer()
    fleet.accept("b", b)
    fleet.clock.advance(1.0)
    assert fleet.probes() == {"a": 0, "b": 0}, "nothing to probe with yet"
    fleet.outbox.put([b"stored"])
    fleet.flush()
    b.ack = False
    fleet.outbox.put([b"waiting"])
    fleet.flush()
    fleet.clock.advance(1.0)
    probe = AckingPeer(ack=False)
    fleet.accept("a", probe)
    assert probe.payloads == [b"stored"]
    fleet.stop()
    fleet = Fleet(queued=1)
    fleet.service.startService()
    fleet.endpoints["a"].refuse()
    fleet.endpoints["b"].refuse()
    fleet.clock.advance(1.0)
    probe = AckingPeer(ack=False)
    fleet.accept("a", probe)
    assert probe.payloads == [b"m0"]
    fleet.stop()


def test_a_lost_connection_moves_on_and_never_back_before_a_probe(logs: Logs) -> None:
    """
    A connection lost moves the client at once to the next server that has not failed; once
    every server has failed, it goes back to none of them until one acknowledges a probe,
    and then to that one (the server it used last having failed too).  Each loss and each
    switch is logged once.
    """
    fleet = Fleet("abc")
    fleet.service.startService()
    for name in "abc":
        peer = AckingPeer()
        fleet.accept(name, peer)
        assert peer.transport is not None
        peer.transport.loseConnection()
        fleet.flush()
    assert fleet.attempts() == {"a": 0, "b": 0, "c": 0}
    fleet.outbox.put([b"n"])
    fleet.clock.advance(1.0)
    assert fleet.attempts() == fleet.probes() == {"a": 1, "b": 1, "c": 1}
    fleet.endpoints["b"].refuse()
    fleet.endpoints["c"].refuse()
    probe = AckingPeer()
    fleet.accept("a", probe)
    assert probe.payloads == [b"m1"]
    assert fleet.attempts() == {"a": 1, "b": 0, "c": 0} and fleet.probes()["a"] == 0
    fleet.accept("a", AckingPeer())
    assert len(fleet.outbox) == 0
    assert len(logs.containing("lost the connection", LogLevel.warn)) == 3
    assert [line.split(" (")[0] for line in switch_lines(logs)] == [
        "now sending to b instead of a",
        "now sending to c instead of b",
        "now sending to a instead of c",
    ]
    assert "(lost the connection: " in switch_lines(logs)[0]
    assert fleet.switches() == 3 and fleet.in_use() == {"a": 1, "b": 0, "c": 0}
    fleet.stop()


def test_a_server_acknowledging_probes_but_failing_traffic_is_probed_less_often(
    logs: Logs,
) -> None:
    """
    A server that acknowledges a probe and then fails again once it is sent to is not gone
    back to as soon: its probes wait longer after each failure in a row (probes that fail
    count too), until it acknowledges what it is sent on the connection in use.
    """
    fleet = Fleet()
    fleet.service.startService()
    fleet.accept("a", AckingPeer(ack=False))
    fleet.clock.advance(ACK_TIMEOUT)
    fleet.flush()
    fleet.accept("b", AckingPeer())
    assert len(fleet.outbox) == 0
    for failures in (1, 2):
        fleet.clock.advance(failures - 0.1)
        assert fleet.attempts() == {"a": 0, "b": 0}
        fleet.clock.advance(0.1)
        fleet.accept("a", AckingPeer())
        fleet.flush()
        fleet.outbox.put([f"after {failures}".encode()])
        fleet.flush()
        fleet.accept("a", AckingPeer(ack=False))
        fleet.clock.advance(ACK_TIMEOUT)
        fleet.flush()
        fleet.accept("b", AckingPeer())
    fleet.clock.advance(3)
    fleet.endpoints["a"].refuse()
    fleet.clock.advance(3.9)
    assert fleet.attempts() == {"a": 0, "b": 0}
    fleet.clock.advance(0.1)
    fleet.accept("a", AckingPeer())
    fleet.flush()
    working = AckingPeer()
    fleet.accept("a", working)
    fleet.outbox.put([b"stored"])
    fleet.flush()
    assert working.payloads == [b"stored"] and len(fleet.outbox) == 0
    assert working.transport is not None
    working.transport.loseConnection()
    fleet.flush()
    fleet.accept("b", AckingPeer())
    fleet.clock.advance(0.9)
    assert fleet.attempts() == {"a": 0, "b": 0}
    fleet.clock.advance(0.1)
    assert fleet.probes() == {"a": 1, "b": 0}, "acknowledged traffic: probed after 1 s again"
    assert [line.split(" (")[0] for line in switch_lines(logs)] == [
        "now sending to b instead of a",
        *["now sending to a instead of b", "now sending to b instead of a"] * 3,
    ]
    fleet.stop()


def test_the_client_goes_back_to_any_server_listed_before_the_one_in_use(logs: Logs) -> None:
    """
    On the third server, the client goes back to the second once that one acknowledges a
    probe, and then to the first.
    """
    fleet = Fleet("abc")
    fleet.service.startService()
    fleet.endpoints["a"].refuse()
    fleet.endpoints["b"].refuse()
    c = AckingPeer()
    fleet.accept("c", c)
    fleet.clock.advance(1.0)
    assert fleet.probes() == {"a": 1, "b": 1, "c": 0}
    fleet.endpoints["a"].refuse()
    fleet.accept("b", AckingPeer())
    fleet.flush()
    fleet.accept("b", AckingPeer())
    fleet.clock.advance(2.0)
    assert fleet.probes() == {"a": 1, "b": 0, "c": 0}
    fleet.accept("a", AckingPeer())
    fleet.flush()
    fleet.accept("a", AckingPeer())
    assert [line.split(" (")[0] for line in switch_lines(logs)] == [
        "now sending to c instead of a",
        "now sending to b instead of c",
        "now sending to a instead of b",
    ]
    assert "(it acknowledges again)" in switch_lines(logs)[1]
    assert fleet.in_use() == {"a": 1, "b": 0, "c": 0}
    fleet.stop()


def test_a_probe_acknowledged_by_a_server_listed_later_moves_nothing(logs: Logs) -> None:
    """
    When a server listed after the one in use acknowledges a probe, the client stays where it
    is; that server is usable again, and no longer probed.
    """
    fleet = Fleet()
    b = fail_over_to_b(fleet)
    assert b.transport is not None
    b.transport.loseConnection()
    fleet.flush()
    fleet.clock.advance(1.0)
    assert fleet.probes() == {"a": 1, "b": 1}
    fleet.accept("a", AckingPeer())
    fleet.flush()
    fleet.accept("a", AckingPeer())
    fleet.accept("b", AckingPeer())
    fleet.flush()
    assert fleet.attempts() == {"a": 0, "b": 0}
    assert fleet.servers.usable == [True, True]
    fleet.clock.advance(1000)
    assert fleet.attempts() == {"a": 0, "b": 0}
    assert fleet.in_use() == {"a": 1, "b": 0}
    fleet.stop()


def test_stopping_while_every_server_has_failed_ends_the_wait(logs: Logs) -> None:
    """
    A client stopping while it waits for a server to acknowledge a probe stops at once, and
    leaves no probe behind.
    """
    fleet = Fleet()
    fleet.service.startService()
    fleet.endpoints["a"].refuse()
    fleet.endpoints["b"].refuse()
    assert len(fleet.clock.getDelayedCalls()) == 2
    fleet.delivery.stop()
    stopped = fleet.service.stopService()
    assert stopped.called
    assert not fleet.clock.getDelayedCalls()
    fleet.clock.advance(100)
    assert fleet.attempts() == {"a": 0, "b": 0}


def test_a_single_server_is_waited_for_however_long_it_holds(logs: Logs) -> None:
    """
    With one server there is nothing to fail over to: unacknowledged messages wait for as long
    as it takes, without a watchdog, a probe or a reconnection.
    """
    fleet = Fleet("a")
    assert fleet.delivery.prober is None
    fleet.service.startService()
    holding = AckingPeer(ack=False)
    fleet.accept("a", holding)
    assert not fleet.clock.getDelayedCalls()
    fleet.clock.advance(10 * ACK_TIMEOUT)
    assert fleet.attempts() == {"a": 0} and fleet.servers.name() == "a"
    assert len(fleet.outbox) == 2
    fleet.stop()


def test_stopping_cancels_the_watchdog_and_the_probes(logs: Logs) -> None:
    """
    A stopping client leaves no timer behind: neither the acknowledgement watchdog nor a
    scheduled probe.
    """
    fleet = Fleet()
    b = fail_over_to_b(fleet)
    b.ack = False
    fleet.outbox.put([b"n"])
    fleet.flush()
    assert len(fleet.clock.getDelayedCalls()) == 2
    fleet.stop()


def test_probes_back_off_from_one_second_to_thirty() -> None:
    """
    By default a server is probed 1 s after its first failure in a row, twice as long after
    each further one, never more than 30 s after, each with less than a second of jitter.
    """
    servers = ServerList([("a", FakeEndpoint()), ("b", FakeEndpoint())])
    policy = Prober(servers, None, lambda: None, Clock(), ACK_TIMEOUT).policy
    for failures, delay in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (60, 30)]:
        for _ in range(20):
            assert delay <= policy(failures) < delay + 1


def test_oneshot_tries_the_servers_in_order_for_each_message(logs: Logs) -> None:
    """
    With --oneshot, each message is tried on the servers in order and goes to the first that
    takes it; the server that cannot be reached is logged once, the change of server once,
    and its return once.
    """
    clock = Clock()
    endpoints = {"a": FakeEndpoint(), "b": FakeEndpoint()}
    outbox = Outbox(10)
    outbox.put([b"m0", b"m1"])
    sender = OneShotDelivery(outbox, list(endpoints.items()), clock, lambda n: 1.0)
    client_tap.wire(outbox=outbox, oneshot=sender)
    sender.startService()
    received: dict[str, list[bytes]] = {"a": [], "b": []}
    for _ in range(2):
        endpoints["a"].refuse()
        endpoints["b"].accept(OneShotServer(received["b"]))[1].flush()
    outbox.put([b"m2"])
    endpoints["a"].accept(OneShotServer(received["a"]))[1].flush()
    assert received == {"a": [b"m2"], "b": [b"m0", b"m1"]}
    assert len(logs.containing("cannot send to a", LogLevel.warn)) == 1
    assert logs.containing("now sending to b instead of a")
    assert logs.containing("now sending to a instead of b")
    assert logs.containing("a takes messages again")
    outbox.put([b"m3"])
    endpoints["a"].refuse()
    endpoints["b"].refuse()
    assert not endpoints["a"].attempts
    clock.advance(1.0)
    endpoints["a"].accept(OneShotServer(received["a"]))[1].flush()
    assert received["a"] == [b"m2", b"m3"] and len(outbox) == 0
    sender.stopService()
    assert not clock.getDelayedCalls()


def test_server_is_repeatable_and_eth_server_holds_several() -> None:
    """
    --server (or -s) may be given several times, in order; ETH_SERVER holds several separated
    by spaces, and a flag beats it; a server listed twice is refused; --ack-timeout is
    seconds above 0, 30 by default.
    """
    a, b = "tcp:host=127.0.0.1:port=1", "tls:example.com:2"
    assert options("--server", a, "-s", b)["server"] == [a, b]
    assert options(ETH_SERVER=f"{a}  {b}")["server"] == [a, b]
    assert options("--server", b, ETH_SERVER=a)["server"] == [b]
    assert options()["ack-timeout"] == 30.0
    assert options("--ack-timeout", "2.5", ETH_ACK_TIMEOUT="9")["ack-timeout"] == 2.5
    for args, message in [
        (["--server", a, "--server", a], "listed once"),
        (["--server", a, "--server", "bogus:1"], "--server 'bogus:1'"),
        (["--ack-timeout", "0"], "must be above 0"),
        (["--host", "h", "--server", a], "not both"),
    ]:
        with pytest.raises(SystemExit) as e:
            options(*args)
        assert message in str(e.value)


def test_make_service_wires_every_server_listed() -> None:
    """
    makeService hands every --server to one ClientService's server list (or to the one-shot
    sender), with the acknowledgement timeout given.
    """
    clock = Clock()
    servers = ["tcp:host=127.0.0.1:port=1", "tcp:host=127.0.0.1:port=2"]
    config = options("--node", "http://127.0.0.1:1", "--ack-timeout", "5",
                     *[f"--server={s}" for s in servers])  # fmt: skip
    service = client_tap.makeService(config, clock)
    assert isinstance(service, EthClient)
    assert isinstance(service.delivery, ReconnectingService)
    assert service.connection is not None and service.connection.ack_timeout == 5.0
    assert [name for name, _ in service.connection.servers.servers] == servers
    service.outbox.close()
    config = options("--node", "http://127.0.0.1:1", "--oneshot",
                     *[f"--server={s}" for s in servers])  # fmt: skip
    service = client_tap.makeService(config, clock)
    assert isinstance(service, EthClient) and isinstance(service.delivery, OneShotDelivery)
    assert [name for name, _ in service.delivery.servers] == servers
    assert not clock.getDelayedCalls()
