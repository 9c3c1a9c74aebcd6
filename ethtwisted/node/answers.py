"""
The node's answers, checked where they enter: what web3 decoded becomes a L{Block} or a number
a block can hold, or a L{NodeError} saying what was unusable.  These are the node's fault, so
they are node trouble like an unreachable node, never a bug of ours.
"""

from __future__ import annotations

from collections.abc import Mapping

from ethtwisted.node import NodeError
from ethtwisted.protocol import MAX_BLOCK_INT, Block, block_problem


def shown(value: object) -> str:
    """
    A node's value in a message: itself when short, else what it is.
    """
    if type(value) is int and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit number"
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__} of {len(text)} characters"


def as_int(what: str, value: object) -> int:
    """
    C{value} if it is an integer a block can hold (0 to a signed 64-bit's largest), else
    L{NodeError} naming C{what}.
    """
    if type(value) is not int or not 0 <= value <= MAX_BLOCK_INT:
        raise NodeError(f"node answered an unusable {what}: {shown(value)}")
    return value


def as_block(chain_id: int, data: object) -> Block:
    """
    The part of web3's block (a mapping, hashes as bytes) we keep; L{NodeError} if the node's
    answer does not fit.
    """
    if not isinstance(data, Mapping):
        raise NodeError(f"node answered an unusable block: {shown(data)}")
    try:
        number, block_hash = data["number"], data["hash"]
        parent_hash, timestamp = data["parentHash"], data["timestamp"]
    except KeyError as e:
        raise NodeError(f"block without {e.args[0]}") from None
    hashes = []
    for value in (block_hash, parent_hash):
        if not isinstance(value, bytes) or len(value) != 32:
            raise NodeError("block with a hash that is not 32 bytes")
        hashes.append("0x" + bytes(value).hex())
    block = Block(
        chain_id=chain_id,
        number=as_int("block number", number),
        hash=hashes[0],
        parent_hash=hashes[1],
        timestamp=as_int("block timestamp", timestamp),
    )
    problem = block_problem(block)
    if problem is not None:
        raise NodeError(f"node answered an unusable block: {problem}")
    return block


def as_finalized_number(data: object) -> int:
    """
    The number of web3's finalized block; L{NodeError} if the node's answer has none.
    """
    if not isinstance(data, Mapping) or "number" not in data:
        raise NodeError("finalized block without a number")
    return as_int("finalized block number", data["number"])
