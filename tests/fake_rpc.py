"""
A JSON-RPC node of the test's making, on free loopback ports: L{ChainNode} serves a chain of
raw headers (as real nodes of other chains send them) over HTTP (twisted.web), WebSocket (the
websockets library) and IPC (an asyncio Unix socket), with C{newHeads} subscriptions over the
last two, answers the status methods, and can lack methods or close HTTP connections the way
some real nodes do.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Mapping
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.helpers import the_reactor

METHOD_NOT_FOUND = {"code": -32601, "message": "Method not found"}


class ChainNode:
    """
    A node holding C{headers} (raw JSON objects, in order: the last is the head) of chain
    C{chain_id}; C{safe} and C{finalized} name the headers those tags answer (L{None}: no
    such block).  Each method in L{missing} is answered with JSON-RPC's "Method not found".
    With L{drop_every} at N, every Nth HTTP request is read and its connection closed without
    an answer (as a node closing a kept-alive connection under a request does); with L{down},
    every one (an outage).  With L{close_reused}, a connection that sends a second request is
    closed so too (web3 v8 asks for a new connection each request, so this one never happens
    to it).  Each method in L{silent} is read over WebSocket and IPC and never answered.
    L{calls} counts the requests of each method, over either transport.
    """

    def __init__(self, chain_id: int, headers: list[dict[str, Any]]) -> None:
        self.chain_id = chain_id
        self.headers = list(headers)
        self.safe: dict[str, Any] | None = self.headers[0]
        self.finalized: dict[str, Any] | None = self.headers[0]
        self.missing: set[str] = set()
        self.silent: set[str] = set()
        self.close_reused = False
        self.drop_every = 0
        self.down = False
        self.http_requests = 0
        self.calls: dict[str, int] = {}
        self.closed_connections = 0
        self.http_url = ""
        self.ws_url = ""
        self.ipc_path = ""
        self._ipc: asyncio.AbstractServer | None = None
        self._port: IListeningPort | None = None
        self._ws: Any = None
        self._subscribers: dict[Any, str] = {}
        self._channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self._sending: set[asyncio.Future[None]] = set()

    # -- the answers

    def answer(self, method: str, params: list[Any]) -> dict[str, Any]:
        """
        The response (C{result} or C{error}) to one request.
        """
        self.calls[method] = self.calls.get(method, 0) + 1
        if method in self.missing:
            return {"error": METHOD_NOT_FOUND}
        head = self.headers[-1]
        if method == "eth_chainId":
            return {"result": hex(self.chain_id)}
        if method == "eth_blockNumber":
            return {"result": head["number"]}
        if method == "eth_getBlockByNumber":
            which = params[0]
            tagged = {"latest": head, "pending": head, "safe": self.safe,
                      "finalized": self.finalized}  # fmt: skip
            if which in tagged:
                return {"result": tagged[which]}
            found = [h for h in self.headers if int(h["number"], 16) == int(which, 16)]
            return {"result": found[0] if found else None}
        if method == "eth_getBlockByHash":
            found = [h for h in self.headers if h["hash"].lower() == params[0].lower()]
            return {"result": found[0] if found else None}
        fixed = {"web3_clientVersion": "ChainNode/v1.0", "net_peerCount": "0x3",
                 "eth_syncing": False, "eth_gasPrice": "0x3b9aca00",
                 "txpool_status": {"pending": "0x1", "queued": "0x0"}}  # fmt: skip
        if method in fixed:
            return {"result": fixed[method]}
        return {"error": METHOD_NOT_FOUND}

    def push(self, header: dict[str, Any]) -> None:
        """
        A new head: add it to the chain and notify every C{newHeads} subscription.
        """
        self.headers.append(header)
        for socket, subscription in list(self._subscribers.items()):
            message = {"jsonrpc": "2.0", "method": "eth_subscription",
                       "params": {"subscription": subscription, "result": header}}  # fmt: skip
            sending = asyncio.ensure_future(socket.send(json.dumps(message)))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)

    @property
    def subscribed(self) -> int:
        """How many WebSocket connections have a C{newHeads} subscription."""
        return len(self._subscribers)

    # -- the servers

    async def start(self, ipc_path: str = "") -> None:
        """
        Listen on free loopback ports for HTTP and WebSocket, and at C{ipc_path} if given.
        """
        from websockets.asyncio.server import serve

        endpoint = TCP4ServerEndpoint(IReactorTCP(the_reactor()), 0, interface="127.0.0.1")
        self._port = await endpoint.listen(Site(_HTTP(self)))
        address = self._port.getHost()
        assert isinstance(address, IPv4Address)
        self.http_url = f"http://127.0.0.1:{address.port}"
        self._ws = await Deferred.fromFuture(
            asyncio.ensure_future(serve(self._serve_ws, "127.0.0.1", 0))
        )
        port = next(iter(self._ws.sockets)).getsockname()[1]
        self.ws_url = f"ws://127.0.0.1:{port}"
        if ipc_path:
            listening = asyncio.start_unix_server(self._serve_ipc, ipc_path)
            self._ipc = await Deferred.fromFuture(asyncio.ensure_future(listening))
            self.ipc_path = ipc_path

    async def stop(self) -> None:
        if self._port is not None:
            await maybeDeferred(self._port.stopListening)
        for server in (self._ws, self._ipc):
            if server is not None:
                server.close()
                closing = asyncio.ensure_future(asyncio.wait_for(server.wait_closed(), 5))
                await Deferred.fromFuture(closing)

    async def _reply(self, socket: Any, call: dict[str, Any]) -> None:
        reply = self.answer(call["method"], call.get("params") or [])
        method = call["method"]
        if method in self.silent:
            return
        if method == "eth_subscribe" and method not in self.missing:
            reply = {"result": f"0x{len(self._subscribers) + 1:x}"}
            self._subscribers[socket] = reply["result"]
        await socket.send(json.dumps({"jsonrpc": "2.0", "id": call["id"], **reply}))

    async def _serve_ws(self, socket: Any) -> None:
        try:
            async for message in socket:
                await self._reply(socket, json.loads(message))
        finally:
            self._subscribers.pop(socket, None)

    async def _serve_ipc(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        socket = _IPCSocket(writer)
        decoder = json.JSONDecoder()
        buffer = ""
        try:
            while chunk := await reader.read(65536):
                buffer = (buffer + chunk.decode()).lstrip()
                while buffer:
                    try:
                        call, end = decoder.raw_decode(buffer)
                    except ValueError:
                        break  # the rest of the request is still to come
                    buffer = buffer[end:].lstrip()
                    await self._reply(socket, call)
        finally:
            self._subscribers.pop(socket, None)
            writer.close()

    def _serve_http(self, request: Request) -> bytes | int:
        channel = request.channel
        self.http_requests += 1
        dropped = self.drop_every and self.http_requests % self.drop_every == 0
        if self.down or dropped or (self.close_reused and channel in self._channels):
            self.closed_connections += 1
            request.channel.transport.loseConnection()  # type: ignore[union-attr]
            return NOT_DONE_YET
        self._channels.add(channel)
        call = json.loads(request.content.read())  # type: ignore[union-attr]
        reply = self.answer(call["method"], call.get("params") or [])
        request.setHeader("content-type", "application/json")
        return json.dumps({"jsonrpc": "2.0", "id": call["id"], **reply}).encode()


class _IPCSocket:
    """An IPC connection, sending text as a WebSocket does."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def send(self, text: str) -> None:
        self.writer.write(text.encode() + b"\n")  # one message a line, as geth writes them
        await self.writer.drain()


class _HTTP(Resource):
    isLeaf = True

    def __init__(self, node: ChainNode) -> None:
        super().__init__()
        self.node = node

    def render_POST(self, request: Request) -> bytes | int:
        return self.node._serve_http(request)


def header_of(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a fixture's header, to change without touching the fixture."""
    return json.loads(json.dumps(data))
