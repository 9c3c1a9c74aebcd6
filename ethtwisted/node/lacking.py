"""
The methods a node lacks: L{says_missing} tells a JSON-RPC error that means "no such method"
(-32601, or the words some nodes use instead), and L{Lacking} remembers each method a node
answered so, to ask it again only after a delay that doubles from a minute to ten (the node may
be upgraded, or the method enabled, without anything else changing), not at every poll.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from twisted.application.internet import backoffPolicy
from twisted.internet.interfaces import IReactorTime

METHOD_NOT_FOUND = -32601
"""JSON-RPC's code for a method the node does not have (or does not serve here)."""
ASK_AGAIN_FIRST = 60.0
"""Seconds before a method the node lacks is asked again the first time."""
ASK_AGAIN_MOST = 600.0
"""The longest wait before a method the node lacks is asked again."""

_MISSING_MESSAGE = re.compile(
    r"method .*(not found|does not exist|not available|not supported|unsupported)|"
    r"(unknown|unsupported) method|"
    # anvil over IPC and WebSocket, for a method it does not have:
    r"did not match any variant of untagged enum",
    re.IGNORECASE,
)
_ask_again_after = backoffPolicy(
    initialDelay=ASK_AGAIN_FIRST, maxDelay=ASK_AGAIN_MOST, factor=2.0, jitter=lambda: 0.0
)


def says_missing(error: object) -> bool:
    """
    Whether a JSON-RPC error object says the method does not exist (or is not served).
    """
    if not isinstance(error, Mapping):
        return False
    message = error.get("message")
    return error.get("code") == METHOD_NOT_FOUND or (
        isinstance(message, str) and bool(_MISSING_MESSAGE.search(message[:200]))
    )


class Lacking:
    """
    The methods the node in use lacks, each with when to ask it again, on C{clock}.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._methods: dict[str, tuple[int, float]] = {}

    @property
    def names(self) -> set[str]:
        return set(self._methods)

    def skip(self, method: str) -> bool:
        """
        Whether not to ask C{method} now: the node lacked it, and it is not time to ask again.
        """
        entry = self._methods.get(method)
        return entry is not None and self.clock.seconds() < entry[1]

    def missing(self, method: str) -> float:
        """
        The node answered that it has no C{method}: the seconds until it is asked again (a
        minute the first time, then twice as long each time, up to ten).
        """
        attempt = self._methods[method][0] + 1 if method in self._methods else 0
        delay = _ask_again_after(attempt)
        self._methods[method] = (attempt, self.clock.seconds() + delay)
        return delay

    def first(self, method: str) -> bool:
        """Whether the node was found lacking C{method} just once so far."""
        return self._methods.get(method, (None,))[0] == 0

    def found(self, method: str) -> bool:
        """
        The node answered C{method}: forget it lacked it; whether it did.
        """
        return self._methods.pop(method, None) is not None

    def clear(self) -> None:
        """Another node, or a new version of it: every method is asked again."""
        self._methods.clear()
