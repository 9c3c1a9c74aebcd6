"""
The records that pass the seams of L{ethtwisted.interfaces}: what the server receives (L{Received},
L{StatusReport}), what the stores read back (blocks, clients, heads, chains, sightings, node
statuses, events) and the fleet view's state events.  Plain frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ethtwisted.frames import Status
from ethtwisted.protocol import Block


@dataclass(frozen=True)
class Received:
    """
    One payload as the server received it.
    """

    sha256: str
    payload: str
    address: str
    """The sending peer's IP address."""
    client: str
    """The name the client gave in its hello, or its address."""
    received: float
    """Unix time of arrival."""
    block: Block | int | None
    """What the payload says about a block (see L{ethtwisted.protocol.parse_block})."""
    seen: float | None = None
    """When the client saw the block, on the server's clock (its sighting, corrected for the
    client's clock offset); L{None} for a payload that came without one: seen on arrival."""
    via: str = "unknown"
    """How the client learnt of the block (L{ethtwisted.protocol.SIGHTING_SOURCES}), or
    C{unknown} for a payload without a sighting (older and one-shot clients)."""

    @property
    def seen_at(self) -> float:
        return self.received if self.seen is None else self.seen


@dataclass(frozen=True)
class StatusReport:
    """
    A client's status frame as the server received it: committed with the payloads, never
    acknowledged.
    """

    client: str
    received: float
    """Unix time of arrival."""
    status: Status


@dataclass(frozen=True)
class BlockRecord:
    """
    One distinct payload as the stats API shows it: when it was first seen, by whom, and what
    it says about a block (the block fields are L{None} for payloads that are not blocks, and
    all but C{number} for the older HTML page).
    """

    sha256: str
    first_seen: float
    client: str
    chain_id: int | None
    number: int | None
    block_hash: str | None
    parent_hash: str | None
    block_time: int | None


@dataclass(frozen=True)
class ClientRecord:
    """
    One client (its hello name, or its address) as the durable store remembers it.
    """

    client: str
    address: str
    messages: int
    first_seen: float
    last_seen: float
    chain_id: int | None
    last_block: int | None


@dataclass(frozen=True)
class Head:
    """
    The best head of one chain: the highest block a client is on now
    (L{ethtwisted.storage.heads}); C{chain_id} is L{None} for blocks known only by number (the
    older HTML page).
    """

    chain_id: int | None
    number: int
    block_hash: str | None
    first_seen: float


@dataclass(frozen=True)
class ChainBlock:
    """
    One stored block of a chain, as the fleet saw it: C{canonical} when it is an ancestor of
    the best head by the stored parent links, else orphaned; C{finalized} when it is canonical
    and at or below the chain's finalized number (L{ethtwisted.interfaces.ILedger.finalized}).
    """

    number: int
    block_hash: str
    parent_hash: str
    sha256: str
    client: str
    """The client that reported it first."""
    first_seen: float
    canonical: bool
    finalized: bool
    timestamp: int | None = None
    """The block's own time, as its payload says."""


@dataclass(frozen=True)
class Reorg:
    """
    A branch of orphaned blocks: the fleet followed it from C{number} (the first height it
    replaced) for C{depth} blocks, up to C{orphaned}, then the chain went on through
    C{canonical} (L{None} where the canonical block at C{number} is not stored).
    """

    number: int
    depth: int
    orphaned: str
    canonical: str | None


@dataclass(frozen=True)
class ChainRange:
    """
    What the store holds of one chain between C{low} and C{high}, both included.  C{gaps} are
    the runs of heights with no block stored, up to the head; C{forks} the heights with more
    than one block, each its blocks; C{reorgs} the orphaned branches starting in the range.
    """

    chain_id: int
    low: int
    high: int
    head: int
    """The number of the chain's best head (orphaned blocks may be stored above it)."""
    finalized: int | None
    blocks: int
    canonical: int
    gaps: list[tuple[int, int]]
    forks: list[list[ChainBlock]]
    reorgs: list[Reorg]
    listed: list[ChainBlock] = field(default_factory=list)
    """Every block of the range, by height then block hash, when the read asked for them."""

    @property
    def missing(self) -> int:
        """Heights in the range, up to the head, with no block stored."""
        return sum(high - low + 1 for low, high in self.gaps)


@dataclass(frozen=True)
class StateEvent:
    """
    A client entering or leaving a state (C{behind}, C{stalled}, C{silent}, C{syncing},
    C{fork}), as the fleet view decides it.
    """

    id: int
    client: str
    chain_id: int | None
    state: str
    event: str
    """C{entered} or C{left}."""
    head: int | None
    """The client's head when it happened."""
    best_head: int | None
    """The best head of its chain then."""
    since: float
    """Unix time the client entered the state."""
    at: float
    """Unix time of this event."""
    text: str
    """The event for people: one line."""


@dataclass(frozen=True)
class NodeRecord:
    """
    A client's latest status report as the durable store keeps it.
    """

    client: str
    updated: float
    """Unix time the server received it."""
    status: Status


@dataclass(frozen=True)
class SightingRecord:
    """
    One client's sighting of one payload: when (on the server's clock, corrected for the
    client's), how far behind the first sighting of that payload in the fleet, and how.
    """

    client: str
    seen_at: float
    via: str
    delay_ms: float


@dataclass(frozen=True)
class EventRecord:
    """
    One change in a client's state, dated; C{kind} says which (L{EVENT_KINDS}).
    """

    id: int
    client: str
    at: float
    kind: str
    detail: str


EVENT_KINDS = (
    "version_changed",
    "sync_started",
    "sync_finished",
    "peers_lost",
    "peers_back",
    "chain_changed",
)
"""The changes recorded in C{eth_events} from a client's status reports."""
