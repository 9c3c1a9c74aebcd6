"""
The node's answers, checked where they enter: the raw JSON-RPC result becomes a L{Block}, a
number a block can hold, or a L{NodeError} saying what was unusable.  These are the node's
fault, so they are node trouble like an unreachable node, never a bug of ours.

A block is read from the four fields it needs (number, hash, parent hash, timestamp), each
checked strictly; whatever else a header carries (extraData of any length, a mixHash or nonce
of any shape, fields of its own such as Arbitrum's sendRoot) is neither read nor refused.
That is what lets one client follow every EVM chain's headers: clique, IBFT, Parlia, Bor,
OP Stack, Arbitrum.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ethtwisted.node.errors import NodeError
from ethtwisted.protocol import MAX_BLOCK_INT, Block

_QUANTITY = re.compile(r"0x(0|[1-9a-f][0-9a-f]{0,15})")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_HEX = re.compile(r"0x[0-9a-f]+")


def shown(value: object) -> str:
    """
    A node's value in a message: itself when short, else what it is.
    """
    if type(value) is int and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit number"
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__} of {len(text)} characters"


def error_text(error: object) -> str:
    """
    The message of a JSON-RPC error object, bounded, for people.
    """
    message = error.get("message") if isinstance(error, Mapping) else None
    if isinstance(message, str):
        return message[:200]
    return shown(error)


def quantity(value: object, what: str = "quantity") -> int:
    """
    A JSON-RPC quantity (C{"0x1a"}: lowercase hex, no leading zeros) that fits a signed 64-bit
    integer; else L{NodeError} naming C{what}.
    """
    if isinstance(value, str) and _QUANTITY.fullmatch(value):
        number = int(value, 16)
        if number <= MAX_BLOCK_INT:
            return number
    big = isinstance(value, str) and len(value) <= 1000 and bool(_HEX.fullmatch(value))
    if big and int(str(value), 16) > MAX_BLOCK_INT:
        value = int(str(value), 16)  # said as the number it is: "a 100-bit number"
    raise NodeError(f"node answered an unusable {what}: {shown(value)}")


def block_hash(value: object, what: str = "hash") -> str:
    """
    A 32-byte hash as 0x-prefixed lowercase hex; else L{NodeError} naming C{what}.
    """
    if isinstance(value, str) and _HASH.fullmatch(value):
        return value.lower()
    raise NodeError(f"node answered an unusable block {what}: {shown(value)}")


def as_block(chain_id: int, data: object) -> Block:
    """
    The block in the node's answer (a JSON object, quantities and hashes as hex strings), read
    from the fields we keep; L{NodeError} if one is missing or unusable.
    """
    if not isinstance(data, Mapping):
        raise NodeError(f"node answered an unusable block: {shown(data)}")
    try:
        number, hash_, parent = data["number"], data["hash"], data["parentHash"]
        timestamp = data["timestamp"]
    except KeyError as e:
        raise NodeError(f"block without {e.args[0]}") from None
    return Block(
        chain_id=chain_id,
        number=quantity(number, "block number"),
        hash=block_hash(hash_),
        parent_hash=block_hash(parent, "parent hash"),
        timestamp=quantity(timestamp, "block timestamp"),
    )


def tagged_number(data: object, tag: str) -> int | None:
    """
    The number of the block a tag (C{"finalized"}, C{"safe"}) names, from the node's answer;
    L{None} when the node has no such block (a null answer).
    """
    if data is None:
        return None
    if not isinstance(data, Mapping) or "number" not in data:
        raise NodeError(f"{tag} block without a number")
    return quantity(data["number"], f"{tag} block number")
