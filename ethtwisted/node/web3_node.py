"""
One Ethereum node reached through web3's asynchronous API, as an L{INode} and L{IHeadSource}.

L{Web3Node} talks to one node over IPC (C{AsyncIPCProvider}), WebSocket (C{WebSocketProvider})
or HTTP (C{AsyncHTTPProvider}).  web3's coroutines run as asyncio tasks on the loop under
Twisted's asyncio reactor, which must be the running reactor; every call is bounded by a
timeout on the injected reactor, and anything that goes wrong on the way to the node becomes
one L{NodeError} with a short reason.  A persistent connection that failed is dropped and the
next call opens a new one, so a restarted node is reached again; a request the node closed the
connection under, or whose persistent connection it hung up, is asked once more at once.
Every request and answer is raw JSON-RPC (C{connection}), each answer checked where it enters
(C{answers}).
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiohttp import ClientTimeout
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from web3 import AsyncHTTPProvider, AsyncIPCProvider, WebSocketProvider
from zope.interface import implementer

from ethtwisted.logs import Logger
from ethtwisted.node.answers import as_block, quantity, tagged_number
from ethtwisted.node.connection import Connection, Provider
from ethtwisted.node.errors import DEFAULT_TIMEOUT, LOG_NAMESPACE, NodeError, RefusalError
from ethtwisted.node.interfaces import IHeadSource, IHeadSubscription, INode, INodeRequests
from ethtwisted.node.subscription import PUSHING_TRANSPORTS, HeadSubscription
from ethtwisted.node.trouble import closed_by_node, is_node_trouble, node_reason
from ethtwisted.node.uri import NodeURI, parse_node_uri
from ethtwisted.protocol import Block

# Importing web3 imports py_ecc, which raises the recursion limit to 100,000: json's C decoder
# then overflows the C stack (SIGSEGV, no exception) on JSON nested some 80,000 deep, and web3
# parses every node answer with it before we see it.  At Python's default limit the decoder
# raises RecursionError instead, which is node trouble like any other garbage.  Every node
# is built here, and this module imports the others that import web3: the one place to put
# the limit back, once they are all loaded.
SAFE_RECURSION_LIMIT = 1000
sys.setrecursionlimit(min(sys.getrecursionlimit(), SAFE_RECURSION_LIMIT))

log = Logger(namespace=LOG_NAMESPACE)

_T = TypeVar("_T")

_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


@implementer(INode, IHeadSource, INodeRequests)
class Web3Node:
    """
    One Ethereum node through web3's asynchronous API, on Twisted's asyncio reactor.

    The connection opens on the first call; IPC and WebSocket keep theirs open and HTTP reuses
    its provider (web3 opens a socket for each request).  When a call fails (the node hung up,
    timed out or answered garbage) a persistent connection is closed and the next call opens a
    new one; either way the chain id is fetched again.
    """

    def __init__(
        self, uri: str | NodeURI, reactor: IReactorTime, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.uri = uri if isinstance(uri, NodeURI) else parse_node_uri(uri)
        self.description = self.uri.description
        self._reactor = reactor
        self._timeout = timeout
        self._connection: Connection | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Future[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Web3Node {self.description}>"

    # -- INode

    def block_number(self) -> Deferred[int]:
        async def fetch(connection: Connection) -> int:
            return quantity(await connection.result("eth_blockNumber", []), "block number")

        return self._call("eth_blockNumber", fetch)

    def head(self) -> Deferred[Block]:
        async def fetch(connection: Connection) -> Block:
            block = await self._block(connection, "eth_getBlockByNumber", "latest")
            if block is None:
                raise NodeError("no latest block")
            return block

        return self._call("latest block", fetch)

    def block_by_number(self, number: int) -> Deferred[Block | None]:
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            return fail(ValueError(f"not a block number: {number!r}"))

        async def fetch(connection: Connection) -> Block | None:
            return await self._block(connection, "eth_getBlockByNumber", hex(number))

        return self._call(f"block {number}", fetch)

    def block_by_hash(self, block_hash: str) -> Deferred[Block | None]:
        if not isinstance(block_hash, str) or not _HASH.fullmatch(block_hash):
            return fail(ValueError(f"not a block hash: {block_hash!r}"))

        async def fetch(connection: Connection) -> Block | None:
            return await self._block(connection, "eth_getBlockByHash", block_hash.lower())

        return self._call(f"block {block_hash.lower()}", fetch)

    def finalized_number(self) -> Deferred[int | None]:
        async def fetch(connection: Connection) -> int | None:
            try:
                data = await connection.result("eth_getBlockByNumber", ["finalized", False])
            except RefusalError as e:
                # Nodes without finality (before the merge, some dev chains) refuse the tag
                # or say there is no such block.
                log.debug("{node} reports no finalized block: {reason}", node=self.description,
                          reason=str(e))  # fmt: skip
                return None
            return tagged_number(data, "finalized")

        return self._call("finalized block", fetch)

    def subscribe_heads(
        self, deliver: Callable[[Block], object]
    ) -> Deferred[IHeadSubscription | None]:
        """
        A new-heads subscription on a connection of its own; L{None} over HTTP.  Fails with
        L{NodeError} when the node does not connect or subscribe within the timeout.
        """
        if self.uri.transport not in PUSHING_TRANSPORTS:
            return succeed(None)
        if self._closed:
            return fail(NodeError(f"{self.description} is closed"))
        subscription = HeadSubscription(
            Connection(self._provider()),
            self.description,
            self.uri.target,
            self._timeout,
            self._reactor,
            deliver,
            self._dispose,
        )
        return subscription.start()

    def rpc(self, method: str, params: Sequence[object] = ()) -> Deferred[object]:
        return self._call(method, lambda c: c.request(method, params))

    def close(self) -> Deferred[None]:
        self._closed = True
        self._drop()
        if not self._closing:
            return succeed(None)
        pending = asyncio.gather(*self._closing, return_exceptions=True)
        return Deferred.fromFuture(pending).addCallback(lambda _: None)

    # -- inside

    async def _block(self, connection: Connection, method: str, which: str) -> Block | None:
        """
        The block C{which} names (a tag, a number in hex, a hash), read raw with C{method};
        L{None} when the node has none.
        """
        if connection.chain_id is None:
            chain_id = await connection.result("eth_chainId", [])
            connection.chain_id = quantity(chain_id, "chain id")
        data = await connection.result(method, [which, False])
        return None if data is None else as_block(connection.chain_id, data)

    def _call(self, what: str, fetch: Callable[[Connection], Awaitable[_T]]) -> Deferred[_T]:
        """
        Run C{fetch} on a live connection as an asyncio task; the result fails with
        L{NodeError} when the node does, and after C{timeout} seconds at the latest, or with
        the exception itself for any other (a bug).
        """
        if self._closed:
            return fail(NodeError(f"{self.description} is closed"))
        task = asyncio.ensure_future(self._attempt(fetch))

        def cancel(_: Deferred[_T]) -> None:
            task.cancel()

        result: Deferred[_T] = Deferred(cancel)

        def timed_out() -> None:
            task.cancel()
            if not result.called:
                result.errback(NodeError(f"no answer to {what} within {self._timeout:g} s"))

        timer = self._reactor.callLater(self._timeout, timed_out)

        def finished(task: asyncio.Future[_T]) -> None:
            if timer.active():
                timer.cancel()
            if task.cancelled():
                if not result.called:
                    result.errback(NodeError(f"{what}: cancelled"))
                return
            exc = task.exception()
            if result.called:
                return
            if exc is None:
                result.callback(task.result())
            elif isinstance(exc, NodeError):
                result.errback(exc)
            elif is_node_trouble(exc):
                reason = node_reason(exc).replace(self.uri.target, self.description)
                result.errback(NodeError(reason))
            else:
                # A bug of ours: the caller logs it (log.failure), with this traceback.
                result.errback(Failure(exc))

        task.add_done_callback(finished)
        return result

    async def _attempt(self, fetch: Callable[[Connection], Awaitable[_T]]) -> _T:
        connection, fresh = await self._connected()
        try:
            return await self._on(connection, fetch)
        except Exception as e:
            if connection.persistent:
                if fresh or not connection.gone():
                    raise
                # The node hung up on a connection that used to work (it restarted, say).
                log.debug("{node} hung up; reconnecting", node=self.description)
            elif closed_by_node(e):
                # The node closed the HTTP connection under the request (some close idle
                # kept-alive connections as a request arrives on them).
                log.debug("{node} closed the connection under a request ({reason}); asking "
                          "once more on a new one", node=self.description,
                          reason=node_reason(e))  # fmt: skip
            else:
                raise
        # The request may never have reached the node, and every call here only reads: ask
        # once more, on a new connection (a new socket, over HTTP).  A second failure is the
        # node's trouble.
        connection, fresh = await self._connected()
        return await self._on(connection, fetch)

    async def _on(
        self, connection: Connection, fetch: Callable[[Connection], Awaitable[_T]]
    ) -> _T:
        try:
            return await connection.run(fetch)
        except RefusalError:
            # The node answered, with an error: the connection itself is fine.
            raise
        except BaseException:
            if connection.persistent:
                self._drop(connection)
            else:
                # web3 opens a new TCP connection for each HTTP request (and closes it): the
                # provider holds nothing to throw away, and closing its session would fail
                # the calls under way on it.  The chain id is asked again, as on a new one.
                connection.chain_id = None
            raise

    async def _connected(self) -> tuple[Connection, bool]:
        """
        The live connection, and whether it was opened just now.
        """
        async with self._lock:
            connection = self._connection
            if connection is not None:
                gone = connection.gone()
                if gone is False:
                    return connection, False
                reason = "closed" if gone is True else node_reason(gone)
                log.debug("{node} hung up ({reason}); reconnecting", node=self.description,
                          reason=reason)  # fmt: skip
                self._drop(connection)
            if self._closed:
                raise NodeError(f"{self.description} is closed")
            connection = Connection(self._provider())
            if connection.persistent:
                try:
                    await connection.w3.provider.connect()
                except BaseException:
                    self._dispose(connection)
                    raise
            self._connection = connection
            return connection, True

    def _provider(self) -> Provider:
        target = self.uri.target
        if self.uri.transport == "ipc":
            # One attempt to connect: retrying is ours to decide, not web3's (which sleeps).
            return AsyncIPCProvider(
                target, request_timeout=self._timeout, max_connection_retries=1
            )
        if self.uri.transport == "ws":
            return WebSocketProvider(
                target,
                websocket_kwargs={"open_timeout": self._timeout, "close_timeout": 1.0},
                request_timeout=self._timeout,
                max_connection_retries=1,
            )
        return AsyncHTTPProvider(
            target,
            request_kwargs={"timeout": ClientTimeout(total=self._timeout)},
            exception_retry_configuration=None,
        )

    def _drop(self, connection: Connection | None = None) -> None:
        """
        Forget the current connection (if it is C{connection}) and close it in the background.
        """
        current = self._connection
        if current is None or (connection is not None and connection is not current):
            return
        self._connection = None
        self._dispose(current)

    def _dispose(self, connection: Connection) -> asyncio.Future[None]:
        """
        Close C{connection} in the background (L{close} waits for it); the closing.
        """
        closing = asyncio.ensure_future(self._disconnect(connection))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        return closing

    async def _disconnect(self, connection: Connection) -> None:
        try:
            await asyncio.wait_for(connection.w3.provider.disconnect(), self._timeout)
        except (Exception, asyncio.CancelledError) as e:
            log.debug("closing the connection to {node}: {reason}", node=self.description,
                      reason=node_reason(e))  # fmt: skip
