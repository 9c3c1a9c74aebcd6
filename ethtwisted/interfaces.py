"""
The seams of ethtwisted: where blocks come from (L{INode}), where they go (L{IBlockStore},
L{ICounterStore}) and how the stats API reads them back (L{ICounterReader}, L{IBlockReader}).
Each has one module of implementations; tests and the benchmarks use the same interfaces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

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


class IBlockStore(Interface):
    """
    Durable storage: each distinct payload once, plus what each client reported.
    """

    max_payload_bytes: int = Attribute("The largest payload this store keeps whole.")

    def start() -> Deferred[None]:
        """
        Connect and create the tables that are missing; fail if the database cannot be reached.
        """

    def store(batch: Sequence[Received]) -> Deferred[int]:
        """
        Commit C{batch} in one transaction; fire with how many payloads were new.  Fail with
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
