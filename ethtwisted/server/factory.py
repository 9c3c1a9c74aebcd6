"""
What the connections of an eth-server share (L{ServerFactory}): the L{Ingest} they feed, the
tokens they check (L{ClientTokens}) and the names held by live connections, who is told of
what happens on them (L{ConnectionObserver}), and the bounds on them together: how many are
open, and how many bytes they hold.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory

from ethtwisted.frames import Hello, name_problem
from ethtwisted.logs import Logger
from ethtwisted.server.clock import PING_INTERVAL
from ethtwisted.server.flow import MAX_IN_FLIGHT
from ethtwisted.server.ingest import Ingest
from ethtwisted.server.protocol import ConnectionObserver, ServerProtocol

log = Logger(namespace="ethtwisted.server")

DEFAULT_HELLO_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ClientTokens:
    """
    Who may say hello as whom: the lines of C{--tokens-file}, each a token and, after a space,
    the name it binds.  A token bound to names may use only those; a token alone on its line
    may use any name no line binds.  Tokens are compared in constant time, and never said.
    """

    entries: tuple[tuple[bytes, str | None], ...]

    @classmethod
    def parse(cls, lines: Sequence[str]) -> ClientTokens:
        """
        The tokens of C{lines} (blank and comment lines already left out): C{TOKEN} or
        C{TOKEN NAME}, the name being the rest of the line after the first run of spaces.
        Raise L{ValueError} naming the entry by its position, never its token.
        """
        entries = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            token, *rest = line.split(None, 1)
            name = rest[0].strip() if rest else None
            if name is not None and (problem := name_problem(name)) is not None:
                raise ValueError(f"token {n}: the name {problem}")
            entries.append((token.encode("utf-8"), name))
        return cls(tuple(entries))

    @property
    def bound(self) -> frozenset[str]:
        """The names some token binds."""
        return frozenset(name for _, name in self.entries if name is not None)

    def problem(self, token: str | None, name: str) -> str | None:
        """
        Why C{token} may not say hello as C{name} (a phrase for the refusal), or L{None}.
        """
        if token is None:
            return "missing or invalid token"
        given = token.encode("utf-8")
        # Every entry is compared, so the time taken says nothing of which one matched.
        names = [entry for t, entry in self.entries if hmac.compare_digest(given, t)]
        if not names:
            return "missing or invalid token"
        if name in names or (None in names and name not in self.bound):
            return None
        return "this token may not use that name"


class ServerFactory(Factory):
    """
    Builds L{ServerProtocol}s sharing one L{Ingest}, and bounds what they hold together: at
    most C{max_connections} at a time (one more is closed at once), at most
    C{max_buffered_bytes} of partial messages and unread acks (past it, the connection
    holding the most is dropped); and each connection to C{max_in_flight} messages not yet
    acknowledged (past it, that connection alone waits for its acks).

    A name is held by one live connection at a time (L{claim}).
    """

    noisy = False

    def __init__(
        self,
        ingest: Ingest,
        reactor: IReactorTime,
        max_message_bytes: int,
        idle_timeout: float,
        tokens: ClientTokens | None = None,
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
        self.tokens = tokens
        self.hello_timeout = hello_timeout
        self.max_connections = max_connections
        self.max_buffered_bytes = max_buffered_bytes
        self.max_in_flight = max_in_flight
        self.ping_interval = ping_interval
        """Seconds between the pings of a connection, after its first few: each pong is a
        frame, so a client that sends nothing else is still heard (L{ethtwisted.states})."""
        self.connections: set[ServerProtocol] = set()
        self.named: dict[str, ServerProtocol] = {}
        """The connection holding each name said in a hello."""
        self.observers: list[ConnectionObserver] = []
        self.turned_away = 0
        """Connections closed at once since the last one was let in (the cap was reached)."""
        self.buffered_bytes = 0
        """What the connections hold together: partial messages and unread acks."""

    @property
    def tokens_required(self) -> bool:
        """Whether a client must say hello, with a token, before its payloads."""
        return self.tokens is not None

    def claim(self, connection: ServerProtocol, hello: Hello) -> tuple[str, bool] | None:
        """
        Let C{connection} be the client C{hello} names, or say why not: a reason for the
        refusal, and whether it is that the name is in use.  With tokens, the token must allow
        the name.  A name held by another live connection is refused, unless that one is the
        same client connected again (its old connection may look alive for a long while after
        a network loss): the same token, or without tokens the same address; then the new
        connection takes the name and the old one is closed.
        """
        if self.tokens is not None:
            problem = self.tokens.problem(hello.token, hello.name)
            if problem is not None:
                return problem, False
        holder = self.named.get(hello.name)
        if holder is not None and holder is not connection and not holder.dropped:
            if not self._same_client(holder, connection, hello):
                return "that name is in use by another connection", True
            holder.drop(f"client {hello.name!r} connected again, from {connection.peer}",
                        "replaced")  # fmt: skip
            if holder.transport is not None:
                holder.transport.abortConnection()  # the old peer is likely gone: no wait
        self.named[hello.name] = connection
        return None

    def _same_client(self, holder: ServerProtocol, connection: ServerProtocol,
                     hello: Hello) -> bool:  # fmt: skip
        if self.tokens is None:
            return holder.peer_host == connection.peer_host
        assert holder.hello is not None and holder.hello.token is not None
        assert hello.token is not None
        return hmac.compare_digest(holder.hello.token.encode(), hello.token.encode())

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
        if connection.hello is not None and self.named.get(connection.hello.name) is connection:
            del self.named[connection.hello.name]
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
