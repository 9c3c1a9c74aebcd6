"""
What the connections of an eth-server share (L{ServerFactory}): the L{Ingest} they feed, the
tokens they check, who is told of what happens on them (L{ConnectionObserver}), and the bounds
on them together: how many are open, and how many bytes they hold.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory

from ethtwisted.logs import Logger
from ethtwisted.records import Received
from ethtwisted.server.clock import PING_INTERVAL
from ethtwisted.server.ingest import Ingest
from ethtwisted.server.protocol import MAX_IN_FLIGHT, ServerProtocol

log = Logger(namespace="ethtwisted.server")

DEFAULT_HELLO_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024


class ConnectionObserver(Protocol):
    """
    Told what happens on the connections of a L{ServerFactory} (metrics).
    """

    def received(self, received: Received) -> None:
        """A payload arrived."""

    def acknowledged(self, sha256: str) -> None:
        """An acknowledgement was sent."""

    def dropped(self, kind: str) -> None:
        """A connection is being dropped; C{kind} as in L{FrameProtocol.drop}."""


class ServerFactory(Factory):
    """
    Builds L{ServerProtocol}s sharing one L{Ingest}, and bounds what they hold together: at
    most C{max_connections} at a time (one more is closed at once), at most
    C{max_buffered_bytes} of partial messages and unread acks (past it, the connection
    holding the most is dropped); and each connection to C{max_in_flight} messages not yet
    acknowledged (past it, that connection alone waits for its acks).
    """

    noisy = False

    def __init__(
        self,
        ingest: Ingest,
        reactor: IReactorTime,
        max_message_bytes: int,
        idle_timeout: float,
        tokens: Sequence[str] | None = None,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        max_in_flight: int = MAX_IN_FLIGHT,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self.ingest = ingest
        self.reactor = reactor
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.tokens = list(tokens) if tokens is not None else None
        self.hello_timeout = hello_timeout
        self.max_connections = max_connections
        self.max_buffered_bytes = max_buffered_bytes
        self.max_in_flight = max_in_flight
        self.ping_interval = ping_interval
        """Seconds between the pings of a connection, after its first few: each pong is a
        frame, so a client that sends nothing else is still heard (L{ethtwisted.states})."""
        self.connections: set[ServerProtocol] = set()
        self.observers: list[ConnectionObserver] = []
        self.turned_away = 0
        """Connections closed at once since the last one was let in (the cap was reached)."""
        self.buffered_bytes = 0
        """What the connections hold together: partial messages and unread acks."""

    def token_valid(self, token: str | None) -> bool:
        if token is None or self.tokens is None:
            return False
        given = token.encode("utf-8")
        return any(hmac.compare_digest(given, t.encode("utf-8")) for t in self.tokens)

    def buildProtocol(self, addr: Any) -> ServerProtocol:  # type: ignore[override]
        return ServerProtocol(self)

    def admit(self, connection: ServerProtocol) -> bool:
        """
        Whether C{connection} may stay: fewer than C{max_connections} are open.  A burst of
        connections turned away is logged once, and once when one is let in again.
        """
        if len(self.connections) >= self.max_connections:
            for observer in self.observers:
                observer.dropped("too_many_connections")
            if not self.turned_away:
                log.warn("{n} connections open, the most allowed: closing new ones at once",
                         n=len(self.connections))  # fmt: skip
            self.turned_away += 1
            return False
        if self.turned_away:
            log.info("accepting connections again; closed {n} meanwhile", n=self.turned_away)
            self.turned_away = 0
        self.connections.add(connection)
        return True

    def gone(self, connection: ServerProtocol) -> None:
        self.connections.discard(connection)
        self.buffered_bytes -= connection.counted
        connection.counted = 0

    def account(self, connection: ServerProtocol) -> None:
        """
        Count what C{connection} holds now; past C{max_buffered_bytes} in all, drop the
        connection that holds the most (this one or another) until under it again.
        """
        if connection not in self.connections:
            return
        held = 0 if connection.dropped else connection.held
        self.buffered_bytes += held - connection.counted
        connection.counted = held
        while self.buffered_bytes > self.max_buffered_bytes:
            largest = max(self.connections, key=lambda c: c.counted)
            largest.drop(
                f"holding {largest.counted} bytes, the most, while connections hold"
                f" {self.buffered_bytes} in all, over the {self.max_buffered_bytes}-byte bound",
                "buffered_bytes",
            )
