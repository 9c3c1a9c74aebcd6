"""
What goes wrong on the way to a node through web3, and how to say it: which exceptions are the
node's trouble (L{NODE_TROUBLE}), which of web3's own are an answer it cannot decode
(L{answer}), and a short reason for people (L{node_reason}).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import ClientConnectorError, ClientError, ClientOSError, ServerDisconnectedError
from web3.exceptions import BadResponseFormat, Web3Exception, Web3RPCError
from websockets.exceptions import WebSocketException

from ethtwisted.logs import describe
from ethtwisted.node.errors import NodeError

_T = TypeVar("_T")

# Transport, timeout and JSON-RPC trouble: what web3 and the libraries under it raise when the
# node is down, hangs up, does not answer in time, or answers an error or something that is not
# JSON-RPC.  All of it means "this node does not serve us now".
NODE_TROUBLE = (Web3Exception, OSError, EOFError, TimeoutError, ClientError, WebSocketException)


def is_node_trouble(exc: BaseException) -> bool:
    """
    Whether C{exc} means the node does not serve us now: one of L{NODE_TROUBLE}, or the bare
    C{RuntimeError("Connection closed.")} that aiohttp's stream reader raises when the HTTP
    connection closes under a read (aiohttp/streams.py, C{StreamReader._wait}).
    """
    if isinstance(exc, NODE_TROUBLE):
        return True
    return type(exc) is RuntimeError and str(exc) == "Connection closed."


def closed_by_node(exc: BaseException) -> bool:
    """
    Whether C{exc} says the node closed the HTTP connection under a request, before answering:
    aiohttp's C{ServerDisconnectedError}, a reset or broken pipe, or its bare
    C{RuntimeError("Connection closed.")}.  The request may never have reached the node.
    """
    if isinstance(exc, ServerDisconnectedError | ConnectionResetError | BrokenPipeError):
        return True
    if isinstance(exc, ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return True
    return type(exc) is RuntimeError and str(exc) == "Connection closed."


# What web3 raises from inside its own decoding and formatting when an answer is not what it
# expects (JSON it cannot parse or nested too deep, a field of the wrong type or missing).  Only
# around web3's calls (L{answer}) is this the node's fault; raised by our code, it is a bug.
UNDECODABLE = (ValueError, TypeError, KeyError, AttributeError, RecursionError)


def node_reason(exc: BaseException) -> str:
    """
    A short text for people saying why a call failed.
    """
    while exc.__cause__ is not None and isinstance(exc, Web3Exception | WebSocketException):
        exc = exc.__cause__
    if isinstance(exc, Web3RPCError):
        error = (exc.rpc_response or {}).get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return shorten(f"node error: {error['message']}")
        return shorten(f"node error: {exc.message}")
    if isinstance(exc, ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, OSError) and not isinstance(exc, ClientError):
        if exc.errno is not None and exc.errno > 0:
            return os.strerror(exc.errno)  # not asyncio's "Connect call failed (...)"
        if exc.strerror:
            return exc.strerror
    text = describe(exc)
    if isinstance(exc, ValueError | TypeError | KeyError | AttributeError | BadResponseFormat):
        text = f"unexpected answer: {text}"
    return shorten(text)


def shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def answer(call: Awaitable[_T]) -> _T:
    """
    What web3 makes of the node's answer to C{call}; L{NodeError} when web3 cannot make sense
    of it.
    """
    try:
        return await call
    except NODE_TROUBLE:
        raise
    except UNDECODABLE as e:
        raise NodeError(node_reason(e)) from e
