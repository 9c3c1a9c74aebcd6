"""
The seams of the node side: an Ethereum node reached over JSON-RPC (L{INode}), the nodes that can
push their new heads (L{IHeadSource}, L{IHeadSubscription}) and those that take any request
(L{INodeRequests}).  Their implementations are the other modules of this package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from ethtwisted.protocol import Block


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
