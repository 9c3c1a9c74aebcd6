"""
Ethereum nodes, as L{INode}s: C{uri} says what a C{--node} value may be, C{web3_node} talks to
one node through web3's asynchronous API over a raw C{connection}, and C{subscription}
subscribes to its new heads (the modules that import web3, with C{trouble}), C{answers} checks
what the node answers, C{lacking} remembers the methods it lacks, C{status} reads what it
says about itself, C{failover} puts several nodes behind one, and C{measured} reports each
call to the metrics.  L{open_node} builds the node behind the C{--node} values.

Importing this package or C{uri} does not import web3 (half a second, and the recursion limit
that C{web3_node} puts back): only building a node does.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime

from ethtwisted.node.errors import (
    DEFAULT_RETRY_AFTER,
    DEFAULT_TIMEOUT,
    LOG_NAMESPACE,
    NodeError,
    RefusalError,
)
from ethtwisted.node.interfaces import INode
from ethtwisted.node.uri import (
    DEFAULT_HTTP_URI,
    NodeURI,
    default_node_uris,
    parse_node_uri,
    redact_uri,
)

__all__ = [
    "DEFAULT_HTTP_URI",
    "DEFAULT_RETRY_AFTER",
    "DEFAULT_TIMEOUT",
    "LOG_NAMESPACE",
    "NodeError",
    "NodeURI",
    "RefusalError",
    "default_node_uris",
    "open_node",
    "parse_node_uri",
    "redact_uri",
]


def open_node(
    uris: Sequence[str],
    reactor: IReactorTime,
    timeout: float = DEFAULT_TIMEOUT,
    retry_after: float = DEFAULT_RETRY_AFTER,
) -> INode:
    """
    Check every URI (L{ValueError} for the first bad one) and return the node behind them: a
    L{Web3Node} for one, a L{FailoverNode} over several, preferred in the order given.
    """
    # Imported here, not above: the options that call parse_node_uri load without web3.
    from ethtwisted.node.failover import FailoverNode
    from ethtwisted.node.web3_node import Web3Node

    if not uris:
        raise ValueError("no node URI given")
    parsed = [parse_node_uri(uri) for uri in uris]
    nodes = [Web3Node(p, reactor, timeout=timeout) for p in parsed]
    if len(nodes) == 1:
        return nodes[0]
    return FailoverNode(nodes, reactor, retry_after=retry_after)
