"""
The seams of ethtwisted: where blocks come from (L{INode}), where they go (L{IBlockStore},
L{ICounterStore}) and how the stats API reads them back (L{ICounterReader}, L{IBlockReader}).
Each has one module of implementations; tests and the benchmarks use the same interfaces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

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


class IBlockStore(Interface):
    """
    Durable storage: each distinct payload once, plus what each client reported.
    """

    max_payload_bytes: int = Attribute("The largest payload this store keeps whole.")

    def start() -> Deferred[None]:
        """
        Connect and create the tables that are missing; fail if the database cannot be reached.
        """

    def store(batch: Sequence[Received | StatusReport]) -> Deferred[int]:
        """
        Commit C{batch} in one transaction: each payload once, each payload's sighting (one
        per client and payload, the first kept), each client's status and the changes it
        shows; fire with how many payloads were new.  Fail with
        an error that L{ethtwisted.storage.is_rejection} recognises when the batch holds a value
        the store cannot take (nothing of it is then committed), with any other when the store
        is unavailable.
        """

    def close() -> Deferred[None]:
        """
        Release connections.
        """


class ICounterStore(Interface):
    """
    Counters kept beside the durable store (Redis): when each payload was first seen
    (C{eth:hashes}) and how many messages each client address sent (C{eth:ip_addresses}).
    """

    def record(batch: Sequence[Received], group: str) -> Deferred[None]:
        """
        Count C{batch}, named C{group}; fail (rather than wait forever) while the store is
        unreachable.  Recording a group again (its first reply was lost) counts nothing more.
        """

    def ping() -> Deferred[None]:
        """
        Fire once the store answers; fail if it does not.
        """

    def close() -> Deferred[None]:
        """
        Disconnect.
        """


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
    The best (highest) block seen on one chain; C{chain_id} is L{None} for blocks known only by
    number (the older HTML page).
    """

    chain_id: int | None
    number: int
    block_hash: str | None
    first_seen: float


class ICounterReader(Interface):
    """
    The counters read back, as the older stats service showed them: the latest first
    sightings and the messages per client address.  Every store answers them (SQL and Redis
    alike, with the same answers for the same traffic).
    """

    def ping() -> Deferred[None]:
        """
        Fire once the store answers; fail (rather than hang) when it does not.
        """

    def latest_hashes(limit: int) -> Deferred[list[tuple[str, float]]]:
        """
        The C{limit} most recently first-seen payloads: (SHA256, unix time first seen), newest
        first, ties broken by descending SHA256.
        """

    def address_counts(limit: int) -> Deferred[list[tuple[str, int]]]:
        """
        Messages sent per client IP address: the C{limit} busiest, ties broken by address.
        """


class IBlockReader(Interface):
    """
    Reading back the durable store (SQL) for the stats API.  Every list is bounded by its
    C{limit}.
    """

    ledger: ILedger = Attribute("Sightings, node statuses and events over the same store.")

    def payload(sha256: str) -> Deferred[str | None]:
        """
        The stored payload with this SHA256, or L{None}.
        """

    def blocks(limit: int, before: str | None = None) -> Deferred[list[BlockRecord] | None]:
        """
        Payloads newest first (by first sighting, then descending SHA256); with C{before}, only
        those after the payload with that SHA256 in this order.  L{None} if C{before} is not a
        stored payload.
        """

    def block(sha256: str) -> Deferred[BlockRecord | None]:
        """
        One payload's record, or L{None}.
        """

    def clients(limit: int) -> Deferred[list[ClientRecord]]:
        """
        The clients most recently heard from first.
        """

    def heads(limit: int) -> Deferred[list[Head]]:
        """
        The best head of each chain that clients currently report, by chain id: its highest
        block; of several at that height, the one first seen last, then the highest hash.
        """

    def arrivals(since: float, bucket: int) -> Deferred[list[tuple[float, int]]]:
        """
        How many payloads were first seen since C{since}, per C{bucket} seconds: (start of the
        bucket, count), oldest first, empty buckets left out.
        """


@dataclass(frozen=True)
class ChainBlock:
    """
    One stored block of a chain, as the fleet saw it: C{canonical} when it is an ancestor of
    the best head by the stored parent links, else orphaned; C{finalized} when it is canonical
    and at or below the finalized number a node reported.
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
    """The highest stored number of the chain."""
    finalized: int | None
    blocks: int
    canonical: int
    gaps: list[tuple[int, int]]
    forks: list[list[ChainBlock]]
    reorgs: list[Reorg]

    @property
    def missing(self) -> int:
        """Heights in the range, up to the head, with no block stored."""
        return sum(high - low + 1 for low, high in self.gaps)


class IChainReader(Interface):
    """
    The chains as the fleet saw them, from the blocks stored and their parent links.  Which
    block is canonical is decided on each read: the best head (as L{IBlockReader.heads} picks
    it) and its ancestors by parent hash; where a link is missing (a gap), the walk goes on
    from the block of the next stored height that was first seen last.  The finalized number
    of each chain is given by the caller (what the nodes report).
    """

    def chain(
        chain_id: int, low: int, high: int, finalized: int | None
    ) -> Deferred[ChainRange | None]:
        """
        The range C{low}..C{high} of one chain (at most L{MAX_CHAIN_RANGE} heights), or L{None}
        if no block of that chain is stored.
        """

    def chains(limit: int, finalized: Mapping[int, int]) -> Deferred[list[ChainRange]]:
        """
        Each chain that clients report (the first C{limit} by chain id), over its last
        L{CHAIN_WINDOW} heights up to its head.
        """


MAX_CHAIN_RANGE = 100_000
"""The most heights one chain read covers."""
CHAIN_WINDOW = 10_000
"""The heights below the head that L{IChainReader.chains} summarises."""


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


class IEventSink(Interface):
    """
    Where the fleet view's events go (webhooks, and what else listens).
    """

    def publish(event: StateEvent) -> None:
        """
        Take C{event}, in order per client; never fail and never block the caller.
        """


class INode(Interface):
    """
    An Ethereum node, reached over JSON-RPC.  Every call fails rather than hangs when the node
    does not answer.
    """

    description: str = Attribute("Where the node is, for logs (never a secret).")

    def block_number() -> Deferred[int]:
        """
        The number of the node's head block (C{eth_blockNumber}).
        """

    def head() -> Deferred[Block]:
        """
        The node's head block (C{eth_getBlockByNumber("latest")}).
        """

    def block_by_number(number: int) -> Deferred[Block | None]:
        """
        The canonical block at C{number}, or L{None} if the node has none there.
        """

    def block_by_hash(block_hash: str) -> Deferred[Block | None]:
        """
        The block with this hash, or L{None} if the node does not know it.
        """

    def finalized_number() -> Deferred[int | None]:
        """
        The number of the node's finalized block, or L{None} if it reports none.
        """

    def close() -> Deferred[None]:
        """
        Close the connection to the node.
        """


class IHeadSubscription(Interface):
    """
    A subscription to a node's new heads, live until L{close} or until the node ends it.
    """

    description: str = Attribute("The node subscribed to, for logs (never a secret).")
    ended: Deferred[None] = Attribute(
        "Fires with None once closed; fails with NodeError when the node ends the subscription "
        "(it hung up) or sends a header that is unusable."
    )

    def close() -> Deferred[None]:
        """
        End the subscription and close its connection.
        """


class IHeadSource(Interface):
    """
    A node that can push its new heads (IPC and WebSocket can, HTTP cannot).
    """

    def subscribe_heads(
        deliver: Callable[[Block], object],
    ) -> Deferred[IHeadSubscription | None]:
        """
        Subscribe to the new heads of the node in use: C{deliver} is called with each header
        the node pushes, checked like any answer, in the order it sends them, possibly before
        this fires.  Fires with the subscription, or L{None} when the node cannot push; fails
        with L{ethtwisted.node.NodeError} when it does not subscribe.
        """


class INodeRequests(Interface):
    """
    A node that takes any JSON-RPC request (for what it says about itself: its version, peers,
    sync state).
    """

    description: str = Attribute("The node in use, for logs (never a secret).")

    def rpc(method: str, params: Sequence[object]) -> Deferred[object]:
        """
        The node's JSON-RPC response to one request of C{method} with C{params}, as it came
        (a mapping with a C{result} or an C{error}, unchecked: the caller checks it).  Fails
        with L{ethtwisted.node.NodeError} when the node does not answer.
        """


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
    received: float
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


class ILedger(Interface):
    """
    Who saw which payload when, and what each client's node says about itself: written by
    L{IBlockStore.store} in the same transaction as the payloads, read back here for the stats
    API.  Every list is bounded by its C{limit}.
    """

    def node_statuses(clients: Sequence[str]) -> Deferred[dict[str, NodeRecord]]:
        """
        The latest status of each of C{clients} that has reported one.
        """

    def propagation(client: str, limit: int) -> Deferred[list[float]]:
        """
        For the C{limit} blocks C{client} saw last (payloads that are blocks), newest first:
        how many ms it saw each after the first sighting of that payload in the fleet.
        """

    def sightings(sha256: str, limit: int) -> Deferred[list[SightingRecord]]:
        """
        The sightings of one payload, earliest first (then by client).
        """

    def events(client: str, limit: int) -> Deferred[list[EventRecord]]:
        """
        The C{limit} latest changes of C{client}'s state, newest first.
        """

    def missing(
        client: str, chain_id: int, low: int, high: int, limit: int
    ) -> Deferred[list[int]]:
        """
        The heights C{low} to C{high} of chain C{chain_id} that hold a stored block of which
        C{client} reported none, lowest first.
        """

    def prune_sightings(before: float, limit: int) -> Deferred[int]:
        """
        Delete at most C{limit} sightings received before C{before}; fire with how many.
        """
