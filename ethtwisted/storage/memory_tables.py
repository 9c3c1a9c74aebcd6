"""
What the stores in memory share: L{Tables}, what the SQL tables hold; L{SightingRow}, one
sighting as C{eth_sightings} keeps it; and L{Answering}, how every call of a store in memory
answers (at once, or failing while the store is C{down}).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

from ethtwisted.records import BlockRecord, ClientRecord, EventRecord, NodeRecord

T = TypeVar("T")


class Answering:
    """
    What every store in memory answers alike: each call fires at once, or fails while C{down}.
    """

    down: BaseException | None = None
    """While set, every call but C{close} fails with this exception."""

    def _answer(self, compute: Callable[..., T], *args: Any) -> Deferred[T]:
        if self.down is not None:
            return fail(self.down)
        try:
            return succeed(compute(*args))
        except Exception as e:
            return fail(e)

    def ping(self) -> Deferred[None]:
        return self._answer(lambda: None)

    def close(self) -> Deferred[None]:
        return succeed(None)


@dataclass(frozen=True)
class SightingRow:
    client: str
    sha256: str
    chain_id: int | None
    number: int | None
    seen_at: float
    """On the millisecond, as SQL keeps it."""
    via: str


@dataclass
class Tables:
    """
    What the SQL tables hold: C{created} once a writing store has started on them.
    """

    created: bool = False
    payloads: dict[str, str] = field(default_factory=dict)
    """C{ethereum_data}: SHA256 → payload."""
    blocks: dict[str, BlockRecord] = field(default_factory=dict)
    """C{eth_blocks}: SHA256 → its record."""
    clients: dict[str, ClientRecord] = field(default_factory=dict)
    """C{eth_clients}: client → its record."""
    sightings: dict[tuple[str, str], SightingRow] = field(default_factory=dict)
    """C{eth_sightings}: (client, SHA256) → its first sighting."""
    statuses: dict[str, NodeRecord] = field(default_factory=dict)
    """C{eth_node_status}: client → its latest status."""
    events: list[EventRecord] = field(default_factory=list)
    """C{eth_events}, oldest first."""


class ReadOnlyError(Exception):
    """
    A read-only store was asked to write.
    """
