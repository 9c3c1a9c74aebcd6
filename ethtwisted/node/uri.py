"""
What a C{--node} value may be: an IPC path, or a WebSocket or HTTP URL; how it is shown without
its credentials; and which nodes to try when none is given.  Nothing here imports web3, so the
options of C{twistd eth-client} are checked without loading it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

DEFAULT_HTTP_URI = "http://127.0.0.1:8545"

Transport = Literal["ipc", "ws", "http"]

_SCHEMES: dict[str, Transport] = {
    "ipc": "ipc",
    "ws": "ws",
    "wss": "ws",
    "http": "http",
    "https": "http",
}

_HOST_PORT = re.compile(r"[\w.-]+:\d+")
# A path segment or query value this long and this shaped is an API key (Infura, Alchemy...).
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_-]{20,}")


@dataclass(frozen=True)
class NodeURI:
    """
    A validated C{--node} value.
    """

    transport: Transport
    target: str = field(repr=False)
    """The IPC path, or the URL given to web3 (which may hold credentials)."""
    description: str
    """The same with credentials redacted: safe for logs and error messages."""


def redact_uri(uri: str) -> str:
    """
    C{uri} without credentials: user and password, query values and path segments that look
    like API keys become C{***}.
    """
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<malformed URL>"
    if "://" not in uri or parts.scheme in ("", "ipc", "file"):
        return uri
    netloc = host or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"***@{netloc}"
    path = "/".join("***" if _TOKEN_LIKE.fullmatch(s) else s for s in parts.path.split("/"))
    query = "&".join(
        f"{item.split('=', 1)[0]}=***" if "=" in item else "***"
        for item in parts.query.split("&")
        if item
    )
    return urlunsplit(SplitResult(parts.scheme, netloc, path, query, ""))


def parse_node_uri(uri: str) -> NodeURI:
    """
    Validate one C{--node} value: a filesystem path or C{ipc://} URL (IPC), a C{ws://} or
    C{wss://} URL, or an C{http://} or C{https://} URL.  Raise L{ValueError} with a message for
    people (without credentials) when it is none of these.
    """
    text = uri.strip()
    if not text:
        raise ValueError("empty node URI")
    if "://" not in text:
        if _HOST_PORT.fullmatch(text):
            raise ValueError(
                f"node {text!r} has no scheme: write http://{text} or ws://{text}, "
                "or a path for IPC"
            )
        path = os.path.abspath(os.path.expanduser(text))
        return NodeURI("ipc", path, path)
    scheme = text.split("://", 1)[0].lower()
    shown = redact_uri(text)
    transport = _SCHEMES.get(scheme)
    if transport is None:
        raise ValueError(
            f"unsupported node URI scheme {scheme!r} in {shown}: use a path or ipc:// for IPC, "
            "ws:// or wss:// for WebSocket, http:// or https:// for HTTP"
        )
    if transport == "ipc":
        rest = text.split("://", 1)[1]
        if not rest:
            raise ValueError(f"node URI {text!r} names no IPC path")
        path = os.path.abspath(os.path.expanduser(rest))
        return NodeURI("ipc", path, path)
    if any(c.isspace() for c in text):
        raise ValueError(f"malformed node URL {shown!r}: it contains white space")
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError as e:
        raise ValueError(f"malformed node URL {shown!r}: {e}") from None
    if not host:
        raise ValueError(f"malformed node URL {shown!r}: no host")
    return NodeURI(transport, text, shown)


def default_node_uris(environ: Mapping[str, str], home: str | None = None) -> list[str]:
    """
    The nodes to try when none is given: the usual geth IPC sockets that exist (in C{home}'s
    and root's C{.ethereum}, and geth C{--dev}'s in C{$TMPDIR} or C{/tmp}), then the local
    HTTP port.
    """
    home = home if home is not None else environ.get("HOME", os.path.expanduser("~"))
    candidates = [
        os.path.join(home, ".ethereum", "geth.ipc"),
        "/root/.ethereum/geth.ipc",
        os.path.join(environ.get("TMPDIR") or "/tmp", "geth.ipc"),  # noqa: S108 -- geth --dev
    ]
    uris: list[str] = []
    for path in candidates:
        if path not in uris and os.path.exists(path):
            uris.append(path)
    uris.append(DEFAULT_HTTP_URI)
    return uris
