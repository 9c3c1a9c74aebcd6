"""
The best head of a chain, as L{IBlockReader.heads} gives it and the chains
(L{ethtwisted.storage.chains}) walk back from: the highest block a client is on now.

A client is on the block it reported last (C{eth_clients.last_block}; of its blocks at that
height, the one it saw last, from its sightings).  Taking the highest of those, rather than the
highest block ever stored, lets a fleet that left a branch for a shorter one (as proof of stake
allows) have the shorter one as its chain.  Of several blocks at the best height, the one first
seen last wins, then the highest hash.  Where no client is on the chain now, or no sighting is
left to tell which block it is on, the highest stored block goes by the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ethtwisted.records import Head


@dataclass(frozen=True)
class OnBlock:
    """
    A client at the best height that saw C{block_hash} there at C{seen_at}; the fleet first
    saw that block at C{first_seen}.
    """

    client: str
    seen_at: float
    block_hash: str | None
    first_seen: float

    @property
    def block(self) -> tuple[str | None, float]:
        return (self.block_hash, self.first_seen)


def _key(block: tuple[str | None, float]) -> tuple[bool, float, str]:
    # A block known by its hash first, then the one first seen last, then the highest hash.
    block_hash, first_seen = block
    return (block_hash is not None, first_seen, block_hash or "")


def best_of(
    chain_id: int | None, number: int, blocks: Iterable[tuple[str | None, float]]
) -> Head | None:
    """
    The best of C{blocks} (each its hash and when the fleet first saw it), all at height
    C{number}; L{None} for none.
    """
    best = max(blocks, key=_key, default=None)
    return None if best is None else Head(chain_id, number, *best)


def best_at(chain_id: int | None, number: int, seen: Iterable[OnBlock]) -> Head | None:
    """
    The best of the blocks at height C{number} that clients are on: each client's is the one
    it saw last of C{seen}; L{None} for none.
    """
    on: dict[str, OnBlock] = {}
    for b in seen:
        old = on.get(b.client)
        if old is None or (b.seen_at, _key(b.block)) > (old.seen_at, _key(old.block)):
            on[b.client] = b
    return best_of(chain_id, number, (b.block for b in on.values()))


def sql_best_head(txn: Any, p: str, chain_id: int | None) -> Head | None:
    """
    The best head of a chain, read in the transaction C{txn} (C{p} is the dialect's
    placeholder); L{None} if no block of it is stored.
    """
    where = "chain_id IS NULL" if chain_id is None else f"chain_id = {p}"
    args: tuple[Any, ...] = () if chain_id is None else (chain_id,)
    txn.execute(f"SELECT MAX(last_block) FROM eth_clients WHERE {where}", args)
    row = txn.fetchone()
    if row is not None and row[0] is not None:
        number = int(row[0])
        # The few blocks at that height (by the chain index), and the sightings
        # of each by the clients there now.
        txn.execute(
            "SELECT i.client, s.seen_at_ms, b.block_hash, b.first_seen"
            " FROM eth_blocks b JOIN eth_sightings s ON s.block_id = b.id"
            " JOIN eth_client_ids i ON i.id = s.client_id"
            " JOIN eth_clients c ON c.client = i.client"
            f" WHERE b.{where} AND b.number = {p} AND c.{where} AND c.last_block = {p}",
            (*args, number, *args, number),
        )
        seen = [OnBlock(c, int(at) / 1000, h, float(first)) for c, at, h, first in txn.fetchall()]
        head = best_at(chain_id, number, seen)
        if head is not None:
            return head
    else:
        txn.execute(f"SELECT MAX(number) FROM eth_blocks WHERE {where}", args)
        row = txn.fetchone()
        if row is None or row[0] is None:
            return None
        number = int(row[0])
    txn.execute(
        f"SELECT block_hash, first_seen FROM eth_blocks WHERE {where} AND number = {p}",
        (*args, number),
    )
    return best_of(chain_id, number, [(h, float(first)) for h, first in txn.fetchall()])
