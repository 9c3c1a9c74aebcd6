"""
What every module of the node package shares: L{NodeError} and L{RefusalError}, the namespace
it logs under and its default timings.  Kept apart from the package's C{__init__}, which builds
nodes from these modules, so that none of them imports the package that imports them.
"""

from __future__ import annotations

LOG_NAMESPACE = "ethtwisted.node"
"""The namespace every module of the package logs under (what log lines show)."""

DEFAULT_TIMEOUT = 10.0
"""Seconds a node has to answer one call (connecting included)."""

DEFAULT_RETRY_AFTER = 30.0
"""Seconds a L{FailoverNode} waits before it tries a preferred node again."""


class NodeError(Exception):
    """
    The node is unreachable, did not answer in time, or answered something unusable; the
    message is a short reason for people.
    """


class RefusalError(NodeError):
    """
    The node answered a request with a JSON-RPC error (the connection itself is fine);
    C{error} is the error object as the node sent it.
    """

    def __init__(self, message: str, error: object) -> None:
        super().__init__(message)
        self.error = error
