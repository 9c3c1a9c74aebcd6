"""
One connection's sightings matched to their payloads, without a connection
(L{ethtwisted.server.sightings.Sightings}): the bound on those waiting, the pings sent, the
payloads held for the first pong and their times corrected for the client's clock.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
from twisted.internet.task import Clock

from ethtwisted.frames import Sighting
from ethtwisted.records import Received
from ethtwisted.server.clock import FIRST_PING_INTERVAL, FIRST_PINGS, MAX_OUTSTANDING
from ethtwisted.server.sightings import CLOCK_WAIT, MAX_PENDING_SIGHTINGS, Sightings

T0 = 1_700_000_000.0


class Recorded:
    """What a L{Sightings} sends and hands on, with the time of each."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pings: list[tuple[int, float]] = []
        self.submitted: list[tuple[Received, float]] = []

    def ping(self, ping_id: int) -> None:
        self.pings.append((ping_id, self.clock.seconds()))

    def submit(self, received: Received) -> None:
        self.submitted.append((received, self.clock.seconds()))


def make() -> tuple[Sightings, Recorded, Clock]:
    clock = Clock()
    clock.advance(T0)
    recorded = Recorded(clock)
    return Sightings(clock, recorded.ping, recorded.submit), recorded, clock


def payload(n: int, at: float) -> Received:
    return Received(f"{n:064x}", f"payload {n}", "127.0.0.1", "c", at, None)


def test_a_payload_takes_its_sighting_and_one_without_goes_as_it_came() -> None:
    """
    Before any ping, a payload goes on at once: with the time and source of the sighting of
    its SHA256 (the clock taken as right), or, without one, seen on arrival by C{unknown}.
    """
    sightings, recorded, clock = make()
    sightings.sighted(Sighting(payload(1, 0).sha256, int((T0 - 0.25) * 1000), "subscription"))
    sightings.received(payload(1, T0))
    sightings.received(payload(2, T0))
    (first, _), (second, _) = recorded.submitted
    assert (first.seen, first.via) == (T0 - 0.25, "subscription")
    assert (second.seen, second.via, second.seen_at) == (None, "unknown", T0)
    assert sightings.pending == {}
    assert not clock.getDelayedCalls()


def test_the_sightings_waiting_are_bounded_the_oldest_forgotten() -> None:
    """
    At most L{MAX_PENDING_SIGHTINGS} sightings wait; one more forgets the oldest, and a
    sighting of a SHA256 already waiting replaces it as the newest.
    """
    sightings, recorded, _ = make()
    for n in range(MAX_PENDING_SIGHTINGS):
        sightings.sighted(Sighting(payload(n, 0).sha256, int(T0 * 1000) + n, "poll"))
    sightings.sighted(Sighting(payload(0, 0).sha256, int(T0 * 1000) + 99, "subscription"))
    sightings.sighted(Sighting(payload(99, 0).sha256, int(T0 * 1000), "poll"))
    assert len(sightings.pending) == MAX_PENDING_SIGHTINGS
    assert payload(1, 0).sha256 not in sightings.pending
    sightings.received(payload(0, T0 + 1))
    sightings.received(payload(1, T0 + 1))
    (zero, _), (one, _) = recorded.submitted
    assert (zero.via, zero.seen) == ("subscription", T0 + 0.099)
    assert (one.via, one.seen) == ("unknown", None)


def test_payloads_wait_for_the_first_pong_then_go_corrected_for_the_clock() -> None:
    """
    Once pinging starts, a ping goes out at once and L{FIRST_PINGS} in all
    L{FIRST_PING_INTERVAL} apart, then one per interval; payloads wait until the first pong,
    then go in order, their sightings moved by the client's offset (7 s ahead here: a block
    it saw at T0 + 6.97 on its clock was seen at T0 - 0.03 on the server's); later payloads
    go at once.
    """
    sightings, recorded, clock = make()
    sightings.start_pinging(10.0)
    assert recorded.pings == [(1, T0)]
    sightings.sighted(Sighting(payload(1, 0).sha256, int((T0 + 7 - 0.03) * 1000), "ipc"))
    sightings.received(payload(1, T0 + 0.05))
    sightings.received(payload(2, T0 + 0.05))
    assert recorded.submitted == []
    clock.advance(0.1)
    assert sightings.pong(1, int((T0 + 0.05 + 7) * 1000))
    assert [t for _, t in recorded.submitted] == [T0 + 0.1, T0 + 0.1]
    (first, _), (second, _) = recorded.submitted
    assert first.seen == pytest.approx(T0 - 0.03) and first.via == "ipc"
    assert second.seen is None
    sightings.received(payload(3, T0 + 0.2))
    assert len(recorded.submitted) == 3
    clock.pump([FIRST_PING_INTERVAL - 0.1] + [FIRST_PING_INTERVAL] * (FIRST_PINGS - 2) + [10.0])
    gaps = [round(b - a, 3) for (_, a), (_, b) in pairwise(recorded.pings)]
    assert gaps == [FIRST_PING_INTERVAL] * (FIRST_PINGS - 1) + [10.0]
    sightings.stop()
    assert not clock.getDelayedCalls()


def test_without_a_pong_payloads_go_after_the_clock_wait_as_they_came() -> None:
    """
    A client that never answers: its payloads go on after L{CLOCK_WAIT}, their sightings
    taken on its clock as it is, not before.
    """
    sightings, recorded, clock = make()
    sightings.start_pinging(10.0)
    sightings.sighted(Sighting(payload(1, 0).sha256, int(T0 * 1000), "poll"))
    sightings.received(payload(1, T0))
    clock.advance(CLOCK_WAIT - 0.01)
    assert recorded.submitted == []
    clock.advance(0.01)
    ((received, at),) = recorded.submitted
    assert (received.seen, at) == (T0, T0 + CLOCK_WAIT)
    sightings.stop()
    assert not clock.getDelayedCalls()


def test_pongs_late_ones_and_ones_of_no_ping() -> None:
    """
    A pong of a ping forgotten (more than L{MAX_OUTSTANDING} sent since) is taken as late,
    not bad; a pong of an id never sent is refused.
    """
    sightings, recorded, clock = make()
    sightings.start_pinging(1.0)
    clock.pump([FIRST_PING_INTERVAL] * (FIRST_PINGS - 1) + [1.0] * MAX_OUTSTANDING)
    sent = [ping_id for ping_id, _ in recorded.pings]
    assert len(sent) > MAX_OUTSTANDING
    now_ms = int(clock.seconds() * 1000)
    assert all(sightings.pong(ping_id, now_ms) for ping_id in sent)
    assert len(sightings.clock.samples) == MAX_OUTSTANDING
    assert not sightings.pong(sent[-1] + 1, now_ms)
    assert not sightings.pong(0, now_ms)
    sightings.stop()
    assert not clock.getDelayedCalls()


def test_stopping_takes_on_what_waited_and_pings_no_more() -> None:
    """
    When the connection ends before the first pong, what it sent still goes on (it is stored
    even from a client gone), and no ping is sent after; stopping the pings alone (a drop)
    leaves the payloads waiting for their deadline.
    """
    sightings, recorded, clock = make()
    sightings.start_pinging(10.0)
    sightings.received(payload(1, T0))
    sightings.stop_pinging()
    clock.advance(FIRST_PING_INTERVAL)
    assert recorded.pings == [(1, T0)] and recorded.submitted == []
    sightings.stop()
    assert [r.sha256 for r, _ in recorded.submitted] == [payload(1, 0).sha256]
    assert not clock.getDelayedCalls()
