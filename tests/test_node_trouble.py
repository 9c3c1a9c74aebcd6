"""
Which exceptions mean that a node does not serve us, and which are a bug of ours.
"""

from __future__ import annotations

import pytest
from aiohttp import ClientConnectionError

from ethtwisted.node.trouble import is_node_trouble


@pytest.mark.parametrize(
    ("exc", "trouble"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (ClientConnectionError("closed"), True),
        (TimeoutError(), True),
        (RuntimeError("Connection closed."), True),  # aiohttp's reader, connection closed
        (RuntimeError("something else"), False),
        (KeyError("hash"), False),
        (TypeError("bad"), False),
    ],
)
def test_transport_trouble_is_the_nodes_and_other_errors_are_ours(
    exc: BaseException, trouble: bool
) -> None:
    """
    Transport, timeout and connection errors (aiohttp's bare RuntimeError for a connection
    closed under a read among them) are node trouble; any other RuntimeError, KeyError or
    TypeError is a bug of ours.
    """
    assert is_node_trouble(exc) is trouble
