"""
Old payloads pruned (C{--keep-blocks}) without taking away what a gap proof needs.

C{/api/v1/chains/<id>/gaps} answers C{[]} for a range as the proof that the fleet missed no
height there: it needs a block stored at every height it saw.  So, of the payloads first seen
before the cut, L{prunable} chooses only those no proof or chain read stands on: a payload that
is not a block of a chain (an opaque one, or the older page, which names no chain), and, at a
height of a chain, every block but the one first seen there (the one that proves the height),
never within L{CHAIN_WINDOW} heights of the highest one stored (the chain reads' window).  A
payload pruned goes with its sightings and its row in C{ethereum_data}.

The payloads are read in the order of their first sighting from a cursor the caller keeps,
a bounded number each time, so a run never reads again what the last one kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ethtwisted.interfaces import CHAIN_WINDOW
from ethtwisted.storage import chunks
from ethtwisted.storage.memory_tables import Tables
from ethtwisted.storage.partitions import IN_LIMIT

Cursor = tuple[float, str] | None
"""The first sighting and SHA256 of the last payload read; L{None}: from the first."""
Candidate = tuple[str, float, int | None, int | None]
"""A payload: its SHA256, first sighting, chain id and number."""


def prunable(
    candidates: Sequence[Candidate],
    at_heights: Iterable[tuple[int, int, float, str]],
    highest: dict[int, int],
) -> list[str]:
    """
    The SHA256s of C{candidates} that may go, given every block at their heights (chain id,
    number, first sighting, SHA256) and the highest number stored of each of their chains.
    """
    keeper: dict[tuple[int, int], tuple[float, str]] = {}
    for chain, height, seen, block in at_heights:
        key = (chain, height)
        keeper[key] = min(keeper.get(key, (seen, block)), (seen, block))
    chosen = []
    for sha256, first_seen, chain_id, number in candidates:
        # Not a block of a chain; or not what proves its height, and below the chain window.
        if (
            chain_id is None
            or number is None
            or (
                number <= highest[chain_id] - CHAIN_WINDOW
                and keeper[(chain_id, number)] != (first_seen, sha256)
            )
        ):
            chosen.append(sha256)
    return chosen


def sql_prune_blocks(
    txn: Any, p: str, before: float, after: Cursor, limit: int
) -> tuple[int, Cursor]:
    """
    Read at most C{limit} payloads first seen before C{before}, from C{after} on, and delete
    those L{prunable} chooses; how many went, and the cursor to go on from.
    """
    start = (
        "" if after is None else f" AND (first_seen > {p} OR (first_seen = {p} AND hash > {p}))"
    )
    args: tuple[Any, ...] = () if after is None else (after[0], after[0], after[1])
    txn.execute(
        "SELECT hash, first_seen, chain_id, number FROM eth_blocks"
        f" WHERE first_seen < {p}{start} ORDER BY first_seen, hash LIMIT {p}",
        (before, *args, limit),
    )
    candidates: list[Candidate] = [
        (h, float(t), None if c is None else int(c), None if n is None else int(n))
        for h, t, c, n in txn.fetchall()
    ]
    if not candidates:
        return 0, after
    heights: dict[int, set[int]] = {}
    for _, _, chain_id, number in candidates:
        if chain_id is not None and number is not None:
            heights.setdefault(chain_id, set()).add(number)
    highest: dict[int, int] = {}
    at_heights: list[tuple[int, int, float, str]] = []
    for chain_id, numbers in sorted(heights.items()):
        txn.execute(f"SELECT MAX(number) FROM eth_blocks WHERE chain_id = {p}", (chain_id,))
        highest[chain_id] = int(txn.fetchone()[0])
        listed = sorted(numbers)
        for chunk in chunks(listed, IN_LIMIT):
            txn.execute(
                "SELECT chain_id, number, first_seen, hash FROM eth_blocks"
                f" WHERE chain_id = {p} AND number IN ({', '.join([p] * len(chunk))})",
                (chain_id, *chunk),
            )
            at_heights += [(int(c), int(n), float(t), h) for c, n, t, h in txn.fetchall()]
    gone = sorted(prunable(candidates, at_heights, highest))
    for hashes in chunks(gone, IN_LIMIT):
        marks = ", ".join([p] * len(hashes))
        txn.execute(
            "DELETE FROM eth_sightings WHERE block_id IN"
            f" (SELECT id FROM eth_blocks WHERE hash IN ({marks}))",
            hashes,
        )
        txn.execute(f"DELETE FROM eth_blocks WHERE hash IN ({marks})", hashes)
        txn.execute(f"DELETE FROM ethereum_data WHERE hash IN ({marks})", hashes)
    last = candidates[-1]
    return len(gone), (last[1], last[0])


def memory_prune_blocks(
    tables: Tables, before: float, after: Cursor, limit: int
) -> tuple[int, Cursor]:
    """L{sql_prune_blocks} over a memory store's tables."""
    blocks = tables.blocks
    rows = sorted(
        (b.first_seen, b.sha256)
        for b in blocks.values()
        if b.first_seen < before and (after is None or (b.first_seen, b.sha256) > after)
    )[:limit]
    if not rows:
        return 0, after
    candidates = [(h, t, blocks[h].chain_id, blocks[h].number) for t, h in rows]
    heights = {(c, n) for _, _, c, n in candidates if c is not None and n is not None}
    chains = {c for c, _ in heights}
    at_heights = [
        (b.chain_id, b.number, b.first_seen, b.sha256)
        for b in blocks.values()
        if b.chain_id is not None and b.number is not None and (b.chain_id, b.number) in heights
    ]
    highest: dict[int, int] = {}
    for b in blocks.values():
        if b.chain_id in chains and b.number is not None:
            highest[b.chain_id] = max(highest.get(b.chain_id, b.number), b.number)
    gone = set(prunable(candidates, at_heights, highest))
    for sha256 in gone:
        del blocks[sha256], tables.payloads[sha256]
    for key in [k for k in tables.sightings if k[1] in gone]:
        del tables.sightings[key]
    return len(gone), rows[-1]
