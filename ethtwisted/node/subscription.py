"""
New heads pushed by a node, through web3's asynchronous API: a L{HeadSubscription} runs on a
connection of its own to an IPC or WebSocket node, given by L{Web3Node.subscribe_heads} (so
that dropping a subscription that went silent never disturbs the calls, and remaking it means
a fresh connection), sends
C{eth_subscribe("newHeads")} with C{AsyncWeb3.eth.subscribe} and reads the notifications from
C{AsyncWeb3.socket.process_subscriptions()}.

Every header is outside input, and comes as the node sent it (L{raw_subscribe}): it goes
through the checks every block answer goes through (L{ethtwisted.node.answers.as_block}), and
one that fails them ends its subscription.  web3 queues the notifications that arrive before
the reply to the subscribe request and yields them once the subscription is known, so none is
lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from web3._utils.rpc_abi import RPC
from web3.exceptions import Web3RPCError
from web3.method import Method, default_root_munger
from zope.interface import implementer

from ethtwisted.node.answers import as_block, error_text, quantity
from ethtwisted.node.connection import Connection
from ethtwisted.node.errors import NodeError, RefusalError
from ethtwisted.node.interfaces import IHeadSubscription
from ethtwisted.node.trouble import answer, is_node_trouble, node_reason
from ethtwisted.protocol import Block

_T = TypeVar("_T")

PUSHING_TRANSPORTS = ("ipc", "ws")
"""The transports over which a node pushes new heads."""


def _unchanged(value: _T) -> _T:
    return value


def raw_subscribe(connection: Connection) -> None:
    """
    Make C{connection}'s C{w3.eth.subscribe} leave the notifications as the node sent them.

    web3 formats each notification with the result formatters of the C{eth_subscribe} call
    that made its subscription: for C{newHeads}, its block formatter, which refuses an
    extraData longer than 32 bytes (every clique, IBFT, Parlia and Bor header), a mixHash
    that is not 32 bytes, and turns the hashes into bytes, or leaves a header alone when its
    fields look too unlike a block's.  Its subscription manager makes the call through
    C{w3.eth._subscribe}; this connection's is one without result formatters.  A test with
    clique headers over WebSocket (test_node_headers.py) fails if web3 stops calling it.
    """
    method: Method[Any] = Method(
        RPC.eth_subscribe,
        mungers=[default_root_munger],
        result_formatters=lambda method, module: _unchanged,
    )
    connection.w3.eth.attach_methods({"_subscribe": method})


@implementer(IHeadSubscription)
class HeadSubscription:
    """
    One C{newHeads} subscription on C{connection}, not yet connected, to the node shown as
    C{description} (whose C{target}, in web3's reasons, is replaced by it), calling C{deliver}
    with each header.  Connecting and subscribing have C{timeout} seconds on C{reactor}; the
    connection, once done with, goes to C{dispose}, which closes it and tells when it did.
    """

    def __init__(
        self,
        connection: Connection,
        description: str,
        target: str,
        timeout: float,
        reactor: IReactorTime,
        deliver: Callable[[Block], object],
        dispose: Callable[[Connection], asyncio.Future[None]],
    ) -> None:
        self.description = description
        self.ended: Deferred[None] = Deferred()
        self._target = target
        self._timeout = timeout
        self._reactor = reactor
        self._deliver = deliver
        self._dispose = dispose
        self._pending: Connection | None = connection
        self._connection: Connection | None = None
        self._reader: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<HeadSubscription {self.description}>"

    def start(self) -> Deferred[IHeadSubscription | None]:
        """
        Connect and subscribe: this subscription, or L{NodeError} when the node does not
        answer within the timeout or fails; cancelled, L{CancelledError} (Twisted's, as any
        Deferred's cancellation).
        """
        opening = Deferred.fromFuture(asyncio.ensure_future(self._open()))

        def timed_out(result: object, timeout: float) -> Failure:
            # Cancelling a Deferred made from a future cancels the future, and the Deferred
            # fails with asyncio's CancelledError, which addTimeout's own translation to its
            # TimeoutError would not take.
            return Failure(NodeError(f"no answer to eth_subscribe within {timeout:g} s"))

        opening.addTimeout(self._timeout, self._reactor, onTimeoutCancel=timed_out)

        def opened(chain_id: int) -> IHeadSubscription:
            connection = self._connection
            assert connection is not None
            self._reader = asyncio.ensure_future(connection.run(self._stream(chain_id)))
            self._reader.add_done_callback(self._finished)
            return self

        def failed(failure: Failure) -> Failure:
            self._close_connection()
            if failure.check(asyncio.CancelledError, CancelledError):
                return Failure(CancelledError())
            return self._as_node_error(failure)

        return opening.addCallbacks(opened, failed)

    def close(self) -> Deferred[None]:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        elif not self.ended.called:
            self.ended.callback(None)
        return self._close_connection()

    # -- inside

    async def _open(self) -> int:
        """
        Connect, learn the chain id, subscribe; the chain id.
        """
        connection, self._pending = self._pending, None
        assert connection is not None, "a subscription starts once"
        self._connection = connection
        await connection.w3.provider.connect()
        raw_subscribe(connection)

        async def subscribe(connection: Connection) -> int:
            chain_id = quantity(await connection.result("eth_chainId", []), "chain id")
            try:
                await answer(connection.w3.eth.subscribe("newHeads"))
            except Web3RPCError as e:
                # Kept whole: a node without eth_subscribe (-32601) is asked again only later.
                error = (e.rpc_response or {}).get("error", {"message": str(e)})
                raise RefusalError(f"node error: {error_text(error)}", error) from None
            return chain_id

        return await connection.run(subscribe)

    def _stream(self, chain_id: int) -> Callable[[Connection], Awaitable[None]]:
        async def read(connection: Connection) -> None:
            async for message in connection.w3.socket.process_subscriptions():
                header = message.get("result") if isinstance(message, Mapping) else None
                self._deliver(as_block(chain_id, header))
            raise NodeError("the node hung up")

        return read

    def _finished(self, reader: asyncio.Future[None]) -> None:
        if self.ended.called:
            return
        if reader.cancelled():
            self.ended.callback(None)
            return
        exc = reader.exception()
        self._close_connection()
        failure = self._as_node_error(Failure(exc if exc is not None else NodeError("ended")))
        self.ended.errback(failure)

    def _as_node_error(self, failure: Failure) -> Failure:
        """
        Node trouble as L{NodeError} with a short reason; anything else (a bug) as it is.
        """
        if failure.check(NodeError):
            return failure
        exc: Any = failure.value
        if is_node_trouble(exc):
            reason = node_reason(exc).replace(self._target, self.description)
            return Failure(NodeError(reason))
        return failure

    def _close_connection(self) -> Deferred[None]:
        connection, self._connection = self._connection, None
        if connection is None:
            return succeed(None)
        return Deferred.fromFuture(self._dispose(connection))
