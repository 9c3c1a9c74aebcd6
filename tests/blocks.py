"""
Blocks and payloads as the stores receive them: L{block} of a chain and branch, L{received}
for a payload, and L{store_reorged_chain}, a chain with a gap and a reorganisation.
"""

from __future__ import annotations

from ethtwisted.protocol import Block, block_html, block_json, parse_block, payload_hash
from ethtwisted.records import Received
from ethtwisted.storage.memory_store import MemoryStore
from ethtwisted.storage.sql_store import SQLStore

T0 = 1_700_000_000.0


BlockStore = SQLStore | MemoryStore


def block(chain_id: int, number: int, fork: int = 0, parent_fork: int = 0) -> Block:
    """
    Block C{number} of branch C{fork}, child of block C{number - 1} of branch C{parent_fork}.
    """
    return Block(
        chain_id=chain_id,
        number=number,
        hash=f"0x{chain_id:016x}{number:040x}{fork:08x}",
        parent_hash=f"0x{chain_id:016x}{number - 1:040x}{parent_fork:08x}",
        timestamp=1_600_000_000 + number,
    )


def received(
    payload: bytes,
    client: str,
    at: float,
    address: str = "127.0.0.1",
    seen: float | None = None,
    via: str = "unknown",
) -> Received:
    return Received(
        sha256=payload_hash(payload),
        payload=payload.decode("utf-8"),
        address=address,
        client=client,
        received=at,
        block=parse_block(payload),
        seen=seen,
        via=via,
    )


async def store_reorged_chain(store: BlockStore) -> None:
    """
    Chain 1: heights 1 to 12 with 4 and 5 missing; a branch of 9 and 10 replaced by the
    chain through 11 and 12; at 3, below the gap, two blocks, the one first seen last on the
    chain.  Chain 5: block 700 alone.  An older client's page (no chain).
    """
    batch = [received(block_json(block(1, n)), "a", T0 + n) for n in (1, 2, 6, 7, 8)]
    batch += [
        received(block_json(block(1, 3, fork=2)), "b", T0 + 3),
        received(block_json(block(1, 3)), "a", T0 + 3.5),
        received(block_json(block(1, 9, fork=1)), "b", T0 + 9),
        received(block_json(block(1, 10, fork=1, parent_fork=1)), "b", T0 + 10),
        received(block_json(block(5, 700)), "c", T0 + 20),
        received(block_html(99), "d", T0 + 21),
    ]
    await store.store(batch)
    await store.store([received(block_json(block(1, n)), "a", T0 + 11 + n) for n in (9, 10)])
    await store.store([received(block_json(block(1, n)), "a", T0 + 22 + n) for n in (11, 12)])
