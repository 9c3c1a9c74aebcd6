"""
The seams of ethtwisted: where blocks come from (L{INode}) and where they go (L{IBlockStore},
L{IStatsStore}).  Each has one module of implementations; tests and the benchmarks use the
same interfaces.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        Commit C{batch} in one transaction; fire with how many payloads were new.
        """

    def close() -> Deferred[None]:
        """
        Release connections.
        """


class IStatsStore(Interface):
    """
    Counters kept beside the durable store (Redis): first sightings and messages per client.
    """

    def record(batch: Sequence[Received]) -> Deferred[None]:
        """
        Count C{batch}; fail (rather than wait forever) while the store is unreachable.
        """

    def close() -> Deferred[None]:
        """
        Disconnect.
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
