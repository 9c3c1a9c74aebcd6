"""
A client's clock as the server sees it: its offset estimated from pings and pongs, as NTP does,
and the times a client claims corrected with it.
"""

from __future__ import annotations

from collections import deque

from ethtwisted.logs import Logger

log = Logger(namespace="ethtwisted.server")

SAMPLES = 8
"""Pong samples kept per connection; the estimate is the one of least delay among them."""
MAX_OUTSTANDING = 4
"""Pings awaiting their pong; sending one more forgets the oldest."""
FIRST_PINGS = 4
"""Pings sent right after the welcome, L{FIRST_PING_INTERVAL} apart; then one per
L{PING_INTERVAL}."""
FIRST_PING_INTERVAL = 0.5
PING_INTERVAL = 30.0
MAX_SIGHTING_AGE = 86400.0
"""How long before its arrival a sighting may say its block was seen (a spooled message
sent again after a day offline); an earlier claim is taken as this old."""


class ClockOffset:
    """
    The offset of one client's clock from the server's: pings sent at C{t0} (server clock),
    their pongs received at C{t3} carrying the client's clock C{client}; each pong gives the
    round trip C{t3 - t0} and the offset C{client - (t0 + t3) / 2}, the best estimate being the
    offset of the shortest round trip among the last L{SAMPLES}.
    """

    def __init__(self) -> None:
        self.outstanding: dict[int, float] = {}
        """Ping id → server time it was sent."""
        self.samples: deque[tuple[float, float]] = deque(maxlen=SAMPLES)
        """(round trip, offset), seconds, newest last."""
        self.next_id = 0

    def ping(self, now: float) -> int:
        """
        Note a ping sent at C{now}; return its id.
        """
        self.next_id += 1
        self.outstanding[self.next_id] = now
        while len(self.outstanding) > MAX_OUTSTANDING:
            del self.outstanding[min(self.outstanding)]
        return self.next_id

    def pong(self, ping_id: int, client_ms: int, now: float) -> bool:
        """
        Take the pong answering ping C{ping_id}, received at C{now}; False if no such ping is
        awaited (unknown, answered already, or forgotten).
        """
        t0 = self.outstanding.pop(ping_id, None)
        if t0 is None:
            return False
        delay = max(now - t0, 0.0)
        self.samples.append((delay, client_ms / 1000 - (t0 + now) / 2))
        return True

    def sent(self, ping_id: int) -> bool:
        """
        Whether a ping of id C{ping_id} was sent (awaited, answered or forgotten since).
        """
        return 0 < ping_id <= self.next_id

    @property
    def known(self) -> bool:
        return bool(self.samples)

    @property
    def offset(self) -> float:
        """
        Seconds the client's clock is ahead of the server's (0 until a pong came).
        """
        return min(self.samples)[1] if self.samples else 0.0

    @property
    def rtt(self) -> float | None:
        """
        The shortest round trip among the samples, in seconds.
        """
        return min(self.samples)[0] if self.samples else None

    def server_time(self, client_ms: int, received: float) -> float:
        """
        The server's time for C{client_ms} on the client's clock, for a sighting whose payload
        arrived at C{received}: never after that arrival, nor over L{MAX_SIGHTING_AGE} before.
        """
        seen = client_ms / 1000 - self.offset
        return min(max(seen, received - MAX_SIGHTING_AGE), received)
