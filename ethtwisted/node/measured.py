"""
A node with each call timed, for eth-client's metrics: what it reports goes to callables, so
this package knows nothing of the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from ethtwisted.node.errors import NodeError
from ethtwisted.node.interfaces import IHeadSource, IHeadSubscription, INode, INodeRequests
from ethtwisted.protocol import Block

_T = TypeVar("_T")


@implementer(INode, IHeadSource, INodeRequests)
class MeasuredNode:
    """
    C{node}, answering as it does, and reporting each call: C{answered} with the seconds it
    took on C{clock} when the node answered, C{failed} when it did not (a cancelled call is
    neither), and C{head_seen} with the number of each head it answered or pushed.
    """

    def __init__(
        self,
        node: INode,
        clock: IReactorTime,
        answered: Callable[[float], object],
        failed: Callable[[], object],
        head_seen: Callable[[int], object],
    ) -> None:
        self.node = node
        self._clock = clock
        self._answered = answered
        self._failed = failed
        self._head_seen = head_seen

    @property
    def description(self) -> str:
        return self.node.description

    def block_number(self) -> Deferred[int]:
        return self._timed(self.node.block_number)

    def head(self) -> Deferred[Block]:
        def seen(block: Block) -> Block:
            self._head_seen(block.number)
            return block

        return self._timed(self.node.head).addCallback(seen)

    def block_by_number(self, number: int) -> Deferred[Block | None]:
        return self._timed(lambda: self.node.block_by_number(number))

    def block_by_hash(self, block_hash: str) -> Deferred[Block | None]:
        return self._timed(lambda: self.node.block_by_hash(block_hash))

    def finalized_number(self) -> Deferred[int | None]:
        return self._timed(self.node.finalized_number)

    def rpc(self, method: str, params: Sequence[object] = ()) -> Deferred[object]:
        node = INodeRequests(self.node, None)
        if node is None:
            return fail(NodeError(f"{self.description} takes no raw requests"))
        return self._timed(lambda: node.rpc(method, params))

    def subscribe_heads(
        self, deliver: Callable[[Block], object]
    ) -> Deferred[IHeadSubscription | None]:
        if not IHeadSource.providedBy(self.node):
            return succeed(None)

        def pushed(block: Block) -> None:
            self._head_seen(block.number)
            deliver(block)

        return self.node.subscribe_heads(pushed)

    def close(self) -> Deferred[None]:
        return self.node.close()

    def _timed(self, call: Callable[[], Deferred[_T]]) -> Deferred[_T]:
        start = self._clock.seconds()

        def answered(result: _T) -> _T:
            self._answered(self._clock.seconds() - start)
            return result

        def failed(failure: Failure) -> Failure:
            if not failure.check(CancelledError):
                self._failed()
            return failure

        return call().addCallbacks(answered, failed)
