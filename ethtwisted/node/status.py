"""
What a node says about itself: L{StatusReader} asks an L{INodeRequests} node for its client
version, chain id, peers, sync state, gas price and base fee, safe and finalized blocks and
transaction pool, times the round trip, and checks every answer where it enters.  The node's
answers are raw JSON-RPC (L{INodeRequests.rpc}), which no web3 formatter has touched: a block of
any header shape reads as well as any other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from twisted.internet.interfaces import IReactorTime

from ethtwisted.frames import MAX_CLIENT_VERSION_LENGTH, Status, SyncProgress
from ethtwisted.logs import Logger
from ethtwisted.node.answers import error_text, quantity, shown
from ethtwisted.node.errors import LOG_NAMESPACE, NodeError
from ethtwisted.node.interfaces import INodeRequests
from ethtwisted.node.lacking import ASK_AGAIN_MOST, Lacking, says_missing

log = Logger(namespace=LOG_NAMESPACE)

# -- the answers, checked ----------------------------------------------------------------------


def client_version(value: object) -> str:
    if isinstance(value, str) and len(value) <= MAX_CLIENT_VERSION_LENGTH:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return value
    raise NodeError(f"not a client version: {shown(value)}")


def syncing(value: object) -> SyncProgress | Literal[False]:
    """
    C{eth_syncing}'s answer: C{False}, or the current and highest block of an object.
    """
    if value is False:
        return False
    if isinstance(value, Mapping):
        return SyncProgress(quantity(value.get("currentBlock")),
                            quantity(value.get("highestBlock")))  # fmt: skip
    raise NodeError(f"not a sync state: {shown(value)}")


def block_field(name: str) -> Callable[[object], int | None]:
    """
    A check of C{eth_getBlockByNumber}'s answer that takes the quantity C{name} from it:
    L{None} when there is no such block (or it has no such field: a base fee before London).
    """

    def check(value: object) -> int | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise NodeError(f"not a block: {shown(value)}")
        field = value.get(name)
        return None if field is None else quantity(field)

    return check


def pool_counts(value: object) -> tuple[int, int]:
    """
    C{txpool_status}'s pending and queued counts.
    """
    if isinstance(value, Mapping):
        return quantity(value.get("pending")), quantity(value.get("queued"))
    raise NodeError(f"not a pool status: {shown(value)}")


# -- the reader --------------------------------------------------------------------------------


class StatusReader:
    """
    Reads a node's L{Status}, one L{read} at a time.

    A method the node does not have is reported as L{None}, logged once at debug, and asked
    again a minute later, then after twice as long each time it is still missing, up to ten
    minutes (L{Lacking}); and at once when the node changes (another one of several
    C{--node}s is in use, or its client version changed).  A method the node answers with an
    error, or with something unusable, is L{None} too, said once (at debug for an error, as a
    warning for garbage) and again when it changes.  Only a node that does not answer at all
    fails a read.
    """

    def __init__(self, node: INodeRequests, clock: IReactorTime) -> None:
        self.node = node
        self.clock = clock
        self.lacking = Lacking(clock)
        """The methods the node in use does not have."""
        self._node: str | None = None
        self._version: str | None = None
        self._trouble: dict[str, str] = {}

    async def read(self) -> Status:
        """
        Ask the node; fails with L{NodeError} when the node does not answer.
        """
        if self.node.description != self._node:
            self._node = self.node.description
            self.lacking.clear()
            self._trouble.clear()
        start = self.clock.seconds()
        chain_id = await self._ask("eth_chainId", [], quantity)
        rtt_ms = max(0.0, (self.clock.seconds() - start) * 1000)
        version = await self._ask("web3_clientVersion", [], client_version)
        if version is not None and version != self._version:
            if self._version is not None:
                self.lacking.clear()
            self._version = version
        latest = block_field("baseFeePerGas")
        number = block_field("number")
        pool = await self._ask("txpool_status", [], pool_counts)
        return Status(
            client_version=version,
            chain_id=chain_id,
            peers=await self._ask("net_peerCount", [], quantity),
            syncing=await self._ask("eth_syncing", [], syncing),
            gas_price=await self._ask("eth_gasPrice", [], quantity),
            base_fee=await self._ask("eth_getBlockByNumber", ["latest", False], latest),
            safe=await self._ask("eth_getBlockByNumber", ["safe", False], number),
            finalized=await self._ask("eth_getBlockByNumber", ["finalized", False], number),
            pending=None if pool is None else pool[0],
            queued=None if pool is None else pool[1],
            rtt_ms=round(rtt_ms, 3),
        )

    async def _ask(self, method: str, params: list[object], check: Callable[[object], Any]) -> Any:
        what = method if not params else f"{method} {params[0]}"
        if self.lacking.skip(what):
            return None
        response = await self.node.rpc(method, params)
        if not isinstance(response, Mapping):
            return self._unusable(what, f"not a JSON-RPC response: {shown(response)}")
        if "error" in response:
            error = response["error"]
            if says_missing(error):
                delay = self.lacking.missing(what)
                if self.lacking.first(what):
                    log.debug("{node} has no {method} ({reason}): reported as null, asked again "
                              "in {delay:g} s, then less often (at most every {most:g} s), and at "
                              "once if the node changes", node=self.node.description,
                              method=what, reason=error_text(error), delay=delay,
                              most=ASK_AGAIN_MOST)  # fmt: skip
                return None
            return self._say(what, f"node error: {error_text(error)}", log.debug)
        if "result" not in response:
            return self._unusable(what, "a response without a result")
        try:
            value = check(response["result"])
        except NodeError as e:
            return self._unusable(what, str(e))
        if self.lacking.found(what):
            log.debug("{node} has {method} now", node=self.node.description, method=what)
        if self._trouble.pop(what, None) is not None:
            log.debug("{node} answers {what} again", node=self.node.description, what=what)
        return value

    def _unusable(self, what: str, reason: str) -> None:
        return self._say(what, f"unusable answer: {reason}", log.warn)

    def _say(self, what: str, reason: str, say: Callable[..., None]) -> None:
        if self._trouble.get(what) != reason:
            self._trouble[what] = reason
            say("{node} answered {what} with {reason}: reported as null",
                node=self.node.description, what=what, reason=reason)  # fmt: skip
        return None

    @property
    def missing(self) -> set[str]:
        """The methods (with their tag, for a block's) the node in use does not have."""
        return self.lacking.names
