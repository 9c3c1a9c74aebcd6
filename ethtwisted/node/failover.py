"""
Several nodes behind one L{INode}, preferred in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ethtwisted.logs import Logger
from ethtwisted.node.errors import DEFAULT_RETRY_AFTER, LOG_NAMESPACE, NodeError
from ethtwisted.node.interfaces import IHeadSource, IHeadSubscription, INode, INodeRequests
from ethtwisted.protocol import Block

log = Logger(namespace=LOG_NAMESPACE)

_T = TypeVar("_T")


@implementer(INode, IHeadSource, INodeRequests)
class FailoverNode:
    """
    Several nodes behind one L{INode}: calls go to the first that answers.  When the node in use
    fails, the others are tried in order and the first that answers takes over; every
    C{retry_after} seconds the nodes given before it are tried again.  Each switch is logged
    once.  A call fails (with L{NodeError}) only when no node answers it.  A subscription is
    made on the node in use (its C{description} says which).
    """

    def __init__(
        self,
        nodes: Sequence[INode],
        reactor: IReactorTime,
        retry_after: float = DEFAULT_RETRY_AFTER,
    ) -> None:
        if not nodes:
            raise ValueError("no nodes to fail over between")
        self.nodes = list(nodes)
        self._reactor = reactor
        self._retry_after = retry_after
        self._current = 0
        self._retry_at = 0.0

    @property
    def description(self) -> str:
        """
        The node in use.
        """
        return self.nodes[self._current].description

    def block_number(self) -> Deferred[int]:
        return self._call(lambda node: node.block_number())

    def head(self) -> Deferred[Block]:
        return self._call(lambda node: node.head())

    def block_by_number(self, number: int) -> Deferred[Block | None]:
        return self._call(lambda node: node.block_by_number(number))

    def block_by_hash(self, block_hash: str) -> Deferred[Block | None]:
        return self._call(lambda node: node.block_by_hash(block_hash))

    def finalized_number(self) -> Deferred[int | None]:
        return self._call(lambda node: node.finalized_number())

    def rpc(self, method: str, params: Sequence[object] = ()) -> Deferred[object]:
        def call(node: INode) -> Deferred[object]:
            requests = INodeRequests(node, None)
            if requests is None:
                return fail(NodeError(f"{node.description} takes no raw requests"))
            return requests.rpc(method, params)

        return self._call(call)

    def subscribe_heads(
        self, deliver: Callable[[Block], object]
    ) -> Deferred[IHeadSubscription | None]:
        node = self.nodes[self._current]
        if not IHeadSource.providedBy(node):
            return succeed(None)
        return node.subscribe_heads(deliver)

    def close(self) -> Deferred[None]:
        closed = gatherResults([node.close() for node in self.nodes], consumeErrors=True)
        return closed.addCallback(lambda _: None)

    def _call(self, call: Callable[[INode], Deferred[_T]]) -> Deferred[_T]:
        return Deferred.fromCoroutine(self._failover(call))

    async def _failover(self, call: Callable[[INode], Deferred[_T]]) -> _T:
        start = self._current
        count = len(self.nodes)
        now = self._reactor.seconds()
        if start and now >= self._retry_at:
            # Time to see whether a preferred node is back.
            order = list(range(count))
            self._retry_at = now + self._retry_after
        else:
            order = [(start + i) % count for i in range(count)]
        failures: dict[int, str] = {}
        for index in order:
            try:
                result = await call(self.nodes[index])
            except NodeError as e:
                failures[index] = str(e)
                continue
            self._switch(start, index, failures.get(start))
            return result
        raise NodeError(
            "no node answers: "
            + "; ".join(f"{self.nodes[i].description}: {failures[i]}" for i in order)
        )

    def _switch(self, start: int, index: int, reason: str | None) -> None:
        if index == start or self._current != start:
            return
        self._current = index
        old, new = self.nodes[start].description, self.nodes[index].description
        if reason is not None:
            log.warn(
                "node {old} unreachable: {reason}; now using {new}",
                old=old,
                reason=reason,
                new=new,
            )
        else:
            log.info("node {new} answers again; now using it instead of {old}", old=old, new=new)
        if index:
            self._retry_at = self._reactor.seconds() + self._retry_after
