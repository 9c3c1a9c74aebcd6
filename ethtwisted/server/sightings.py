"""
One connection's sightings matched to their payloads, at times on the server's clock
(L{Sightings}): each sighting waits for the payload of its SHA256 (the last
L{MAX_PENDING_SIGHTINGS} of them); once the client is welcomed with pings, it is pinged
(L{FIRST_PINGS} of them L{FIRST_PING_INTERVAL} apart, then one per ping interval) and its
payloads wait for the first pong (L{CLOCK_WAIT} at most), so that their sightings are
corrected for its clock (L{ClockOffset}).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ethtwisted.frames import Sighting
from ethtwisted.logs import Logger
from ethtwisted.records import Received
from ethtwisted.server.clock import FIRST_PING_INTERVAL, FIRST_PINGS, PING_INTERVAL, ClockOffset

log = Logger(namespace="ethtwisted.server")

MAX_PENDING_SIGHTINGS = 16
"""Sightings awaiting their payload on one connection; one more forgets the oldest."""
CLOCK_WAIT = 1.0
"""How long a connection's payloads wait for the first pong (so that their sightings are
corrected for the client's clock) before they go on with the clock taken as right."""


class Sightings:
    """
    The sightings of one connection and its client's clock: C{ping} sends a ping of the id
    it is given, C{submit} takes each payload on, with its sighting's time and source when
    one came before it.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        ping: Callable[[int], None],
        submit: Callable[[Received], None],
    ) -> None:
        self.reactor = reactor
        self.ping = ping
        self.submit = submit
        self.pending: OrderedDict[str, Sighting] = OrderedDict()
        """Sightings received, by SHA256, awaiting their payload."""
        self.clock = ClockOffset()
        self.ping_interval = PING_INTERVAL
        self.pinging: IDelayedCall | None = None
        self.pings_sent = 0
        self.awaiting_clock: list[tuple[Received, Sighting | None]] | None = None
        """Payloads waiting for the first pong (L{CLOCK_WAIT} at most), while one is awaited."""
        self.clock_deadline: IDelayedCall | None = None

    def sighted(self, sighting: Sighting) -> None:
        """
        C{sighting} came: it waits for its payload, the newest of those waiting.
        """
        self.pending.pop(sighting.sha256, None)
        self.pending[sighting.sha256] = sighting
        if len(self.pending) > MAX_PENDING_SIGHTINGS:
            self.pending.popitem(last=False)

    def start_pinging(self, ping_interval: float) -> None:
        """
        The client answers pings: ping it now and from now on, and hold its payloads until
        its first pong.
        """
        self.ping_interval = ping_interval
        self.awaiting_clock = []
        self.clock_deadline = self.reactor.callLater(CLOCK_WAIT, self._clock_ready)
        self._ping()

    def stop_pinging(self) -> None:
        """
        The connection is being dropped: ping it no more.
        """
        if self.pinging is not None and self.pinging.active():
            self.pinging.cancel()
        self.pinging = None

    def stop(self) -> None:
        """
        The connection has ended: ping no more, and take on the payloads that waited for the
        first pong (what was read is stored, even from a client gone before it answered).
        """
        self.stop_pinging()
        self._clock_ready()

    def _ping(self) -> None:
        self.pinging = None
        self.ping(self.clock.ping(self.reactor.seconds()))
        self.pings_sent += 1
        delay = self.ping_interval
        if self.pings_sent < FIRST_PINGS:
            delay = FIRST_PING_INTERVAL
        self.pinging = self.reactor.callLater(delay, self._ping)

    def pong(self, ping_id: int, client_ms: int) -> bool:
        """
        The pong of ping C{ping_id} came, saying C{client_ms}: take it, and the payloads held
        for the first go on.  False if no ping of that id was ever sent; a pong of a ping
        forgotten is late, not bad (a client that stopped for a while answers every ping it
        missed at once): it is only not taken.
        """
        taken = self.clock.pong(ping_id, client_ms, self.reactor.seconds())
        if not taken and not self.clock.sent(ping_id):
            return False
        self._clock_ready()
        return True

    def _clock_ready(self) -> None:
        """
        The first pong came (or L{CLOCK_WAIT} passed, or the connection ended): take on the
        payloads that waited for it.
        """
        if self.clock_deadline is not None and self.clock_deadline.active():
            self.clock_deadline.cancel()
        self.clock_deadline = None
        waiting, self.awaiting_clock = self.awaiting_clock, None
        for received, sighting in waiting or ():
            self._submit(received, sighting)

    def received(self, received: Received) -> None:
        """
        A payload came: with its sighting, if one waits for it, now or once the client's
        clock is known.
        """
        sighting = self.pending.pop(received.sha256, None)
        if self.awaiting_clock is not None:
            self.awaiting_clock.append((received, sighting))
        else:
            self._submit(received, sighting)

    def _submit(self, received: Received, sighting: Sighting | None) -> None:
        if sighting is not None:
            seen = self.clock.server_time(sighting.seen_ms, received.received)
            received = replace(received, seen=seen, via=sighting.via)
        self.submit(received)
