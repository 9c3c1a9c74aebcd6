"""
What the payloads on the wire mean, shared by eth-client and eth-server, and how anything from
outside is parsed (the netstrings that carry frames are L{ethtwisted.framing}'s, the control
frames L{ethtwisted.frames}').

A frame whose first byte is ``0xFF`` is a control frame (hello, ack, refusal, welcome, status,
sighting, ping, pong) with a JSON object after that byte; anything else is a payload, opaque
UTF-8 text identified by the SHA256 of its bytes.  ``0xFF`` never occurs in UTF-8, so no payload
of an older client can be taken for a control frame.  ``docs/protocol.md`` describes the format
for people.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

CONTROL_MARK = b"\xff"

PayloadFormat = Literal["json", "html"]
PAYLOAD_FORMATS: tuple[PayloadFormat, ...] = ("json", "html")
SOURCES = ("subscription", "poll", "backfill")
"""How a client learns of a block: pushed by its node, its node's head when polled, or
fetched as the parent of another."""


class ProtocolError(Exception):
    """
    The peer sent something this protocol does not accept; the message says what.
    """


# -- parsing outside input --------------------------------------------------------------------

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted from outside (a node, a peer, a file)."""

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def json_depth_over(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """
    Whether the JSON text C{data} nests arrays and objects more than C{limit} deep (brackets
    inside strings do not count).  Cheap: most texts have fewer brackets than the limit.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if bracket in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads_bounded(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> Any:
    """
    Parse JSON that came from outside, or raise L{ProtocolError}.

    Nesting is bounded before parsing: web3 imports C{py_ecc}, which raises Python's recursion
    limit so far that C{json}'s C decoder overflows the C stack (the process dies with SIGSEGV)
    on input nested some 80,000 deep, before its own recursion guard trips.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if json_depth_over(raw, limit):
        raise ProtocolError(f"JSON nested more than {limit} deep")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        # ValueError covers malformed JSON, bad UTF-8 and integers of over 4,300 digits.
        raise ProtocolError(f"malformed JSON: {type(e).__name__}") from None


# -- payloads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """
    The part of a block a collector keeps: enough to identify it and to follow the chain.
    """

    chain_id: int
    number: int
    hash: str
    parent_hash: str
    timestamp: int


MAX_BLOCK_INT = 2**63 - 1
"""Largest chain id, block number or timestamp taken as a block's (SQL's signed BIGINT)."""
_BLOCK_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


def block_problem(block: Block) -> str | None:
    """
    Why C{block} cannot be a real block (as a short phrase), or L{None} when it can: its
    integers are non-negative and fit a signed 64-bit column, its hashes are 32 bytes of hex.
    Both sides use it: the client on what its node answers, the server on what a payload says.
    """
    for name in ("chain_id", "number", "timestamp"):
        value = getattr(block, name)
        if type(value) is not int:
            return f"{name} is not an integer"
        if not 0 <= value <= MAX_BLOCK_INT:
            return f"{name} is out of range"
    for name in ("hash", "parent_hash"):
        value = getattr(block, name)
        if not isinstance(value, str) or not _BLOCK_HASH.fullmatch(value):
            return f"{name} is not 32 bytes of 0x-prefixed hex"
    return None


_HTML_PAGE = """<!doctype html>
<html class="no-js" lang="">
    <head>
        <meta charset="utf-8">
        <meta http-equiv="x-ua-compatible" content="ie=edge">
        <title>Ethereum Current Block Number</title>
        <meta name="description" content="eth current block">
        <meta name="viewport" content="width=device-width, initial-scale=1">
    </head>
    <body>
        <h2>Current Ethereum Block Number</h2>
        <p>{number}</p>
    </body>
</html>"""

_HTML_PREFIX, _HTML_SUFFIX = _HTML_PAGE.split("{number}")


def block_json(block: Block) -> bytes:
    """
    The canonical block message: the same bytes for the same block, whichever client sends it.
    """
    return json.dumps(
        {
            "chain_id": block.chain_id,
            "number": block.number,
            "hash": block.hash.lower(),
            "parent_hash": block.parent_hash.lower(),
            "timestamp": block.timestamp,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode("ascii")


def block_html(number: int) -> bytes:
    """
    The older client's page for block C{number}, byte for byte.
    """
    return _HTML_PAGE.replace("{number}", str(number)).encode("utf-8")


def encode_payload(block: Block, payload_format: PayloadFormat) -> bytes:
    """
    The payload a client sends for C{block}.
    """
    if payload_format == "html":
        return block_html(block.number)
    return block_json(block)


def parse_block(payload: bytes) -> Block | int | None:
    """
    What a payload says about a block: a L{Block} for the canonical message, the block number
    for the older page, L{None} for anything else (payloads stay opaque to storage).

    Only the canonical message's exact bytes are a block (L{block_json}: lower-case hashes,
    sorted keys, no spaces, no other key): the same block in other JSON (an upper-case hash
    above all, which MySQL's collation would take for the lower-case one and SQLite would not)
    is stored as it is, and says nothing about the chain.
    """
    if payload.startswith(b"{"):
        try:
            obj = loads_bounded(payload)
            block = Block(
                chain_id=obj["chain_id"],
                number=obj["number"],
                hash=obj["hash"],
                parent_hash=obj["parent_hash"],
                timestamp=obj["timestamp"],
            )
        except (ProtocolError, KeyError, TypeError):
            return None
        if block_problem(block) or block_json(block) != payload:
            return None
        return block
    text = payload.decode("utf-8", "replace")
    if text.startswith(_HTML_PREFIX) and text.endswith(_HTML_SUFFIX):
        middle = text[len(_HTML_PREFIX) : len(text) - len(_HTML_SUFFIX)]
        if middle.isascii() and middle.isdigit() and len(middle) <= len(str(MAX_BLOCK_INT)):
            number = int(middle)
            if number <= MAX_BLOCK_INT:
                return number
    return None


def payload_hash(payload: bytes) -> str:
    """
    The identity of a payload: the SHA256 hex of its bytes.
    """
    return hashlib.sha256(payload).hexdigest()


def check_payload(data: bytes) -> str:
    """
    Return the payload as text, or raise L{ProtocolError} if it is empty or not UTF-8.
    """
    if not data:
        raise ProtocolError("empty message")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"message is not UTF-8 (byte {e.start})") from None
