"""
One web3 connection to a node (L{Connection}): raw JSON-RPC requests over it, and whether the
node hung up on it.

Every request goes out and comes back raw: the connection's C{AsyncWeb3} has no middleware
(web3's default validation middleware refuses every block whose extraData is longer than 32
bytes, which is every clique, IBFT, Parlia and Bor header, and over IPC and WebSocket it does
so even for a raw request), and L{Connection.result} uses none of web3's result formatters
(its block formatter refuses an extraData of over 32 bytes too, and a mixHash not of 32).  The
caller checks the raw result (L{ethtwisted.node.answers}).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from web3 import AsyncHTTPProvider, AsyncIPCProvider, AsyncWeb3, WebSocketProvider
from web3.exceptions import Web3RPCError
from web3.providers.persistent import PersistentConnectionProvider
from web3.types import RPCEndpoint

from ethtwisted.logs import describe
from ethtwisted.node.answers import error_text, shown
from ethtwisted.node.errors import NodeError, RefusalError

_T = TypeVar("_T")

Provider = AsyncIPCProvider | WebSocketProvider | AsyncHTTPProvider


class Connection:
    """
    One web3 connection to the node, and what was learnt over it.
    """

    def __init__(self, provider: Provider) -> None:
        # No middleware at all: see the module's docstring.
        self.w3: AsyncWeb3[Any] = AsyncWeb3(provider, middleware=[])
        self.chain_id: int | None = None

    @property
    def persistent(self) -> bool:
        return isinstance(self.w3.provider, PersistentConnectionProvider)

    @property
    def listener(self) -> asyncio.Task[None] | None:
        """
        The task in which web3 reads a persistent connection, which ends when the node hangs
        up; L{None} over HTTP, and once disconnected.
        """
        provider = self.w3.provider
        if not isinstance(provider, PersistentConnectionProvider):
            return None
        # web3 has no public way to tell that a persistent connection closed: its requests
        # wait for their timeout.  Its provider keeps the task reading the socket in this
        # private attribute, read here and nowhere else; test_node.py fails if web3 changes it.
        return provider._message_listener_task

    def gone(self) -> BaseException | bool:
        """
        Whether the node hung up on a persistent connection: the exception that ended the
        L{listener}, or C{True}, or C{False} while alive.
        """
        if not self.persistent:
            return False
        task = self.listener
        if task is None or task.cancelled():
            return True
        return task.done() and (task.exception() or True)

    async def run(self, fetch: Callable[[Connection], Awaitable[_T]]) -> _T:
        """
        C{fetch} over this connection; on a persistent one, fail with L{NodeError} as soon as
        the node hangs up (web3 would otherwise wait for an answer until its timeout).
        """
        listener = self.listener
        if listener is None:
            return await fetch(self)
        call = asyncio.ensure_future(fetch(self))
        try:
            await asyncio.wait((call, listener), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():
                call.cancel()
        if not call.done() or call.cancelled():
            raise NodeError("the node hung up")
        return call.result()

    async def request(self, method: str, params: Sequence[object]) -> object:
        """
        The node's raw JSON-RPC response to one request, unchecked; an answer web3 cannot even
        decode is L{NodeError}.
        """
        try:
            if self.persistent:
                # Through the manager, which notes the request: an error answering a request
                # it did not note would end web3's reading of the connection.  It raises the
                # errors.
                result = await self.w3.manager.socket_request(RPCEndpoint(method), list(params))
                response: object = {"result": result}
            else:
                response = await self.w3.provider.make_request(RPCEndpoint(method), list(params))
        except Web3RPCError as e:
            return e.rpc_response if e.rpc_response is not None else {"error": {"message": str(e)}}
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise NodeError(f"unexpected answer to {method}: {describe(e)}") from None
        return response

    async def result(self, method: str, params: Sequence[object]) -> object:
        """
        The raw result of one request; L{RefusalError} when the node answers with an error,
        L{NodeError} when the answer is not JSON-RPC.
        """
        response = await self.request(method, params)
        if not isinstance(response, Mapping):
            raise NodeError(f"unexpected answer to {method}: {shown(response)}")
        if "error" in response:
            error = response["error"]
            raise RefusalError(f"node error: {error_text(error)}", error)
        if "result" not in response:
            raise NodeError(f"unexpected answer to {method}: a response without a result")
        return response["result"]
