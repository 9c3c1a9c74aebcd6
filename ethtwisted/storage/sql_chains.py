"""
The chains' rows as the SQL store reads them (L{ChainRows<ethtwisted.storage.chains.ChainRows>},
for L{ethtwisted.storage.chains}' analysis): the best head of each chain, and a range's blocks,
their count and their gaps, each in one transaction, from the index C{eth_blocks_chain} alone
but for who reported the blocks at heights with several.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred

from ethtwisted.records import Head
from ethtwisted.storage import chunks
from ethtwisted.storage.chains import REPORTER_HEIGHTS, Row, Stored
from ethtwisted.storage.heads import sql_best_head


class SQLChainRows:
    """
    L{ChainRows} of the SQL store over C{pool}, whose statements take C{placeholder}: its
    heads, and each read in one transaction.
    """

    def __init__(self, pool: ConnectionPool, placeholder: str) -> None:
        self.pool = pool
        self.placeholder = placeholder

    def heads(self, limit: int) -> Deferred[list[Head]]:
        return self.pool.runInteraction(_sql_heads, self.placeholder, limit)

    def chain_rows(
        self, chain_id: int, low: int, high: int, margin: int, every: bool = False
    ) -> Deferred[Stored | None]:
        p = self.placeholder
        return self.pool.runInteraction(_sql_chain_rows, p, chain_id, low, high, margin, every)

    def chain_size(
        self, chain_id: int, low: int, high: int, margin: int
    ) -> Deferred[tuple[Head, int] | None]:
        p = self.placeholder
        return self.pool.runInteraction(_sql_chain_size, p, chain_id, low, high, margin)

    def chain_gaps(
        self, chain_id: int, low: int, high: int
    ) -> Deferred[tuple[int, list[tuple[int, int]]] | None]:
        p = self.placeholder
        return self.pool.runInteraction(_sql_chain_gaps, p, chain_id, low, high)


def _sql_heads(txn: Any, p: str, limit: int) -> list[Head]:
    # The chains come from the small clients table; each head is then a few index look-ups
    # (ethtwisted.storage.heads) rather than a scan of every block.
    txn.execute(
        "SELECT DISTINCT chain_id FROM eth_clients WHERE last_block IS NOT NULL"
        f" ORDER BY chain_id LIMIT {p}",
        (limit,),
    )
    heads = []
    for (chain_id,) in txn.fetchall():
        # A chain id of None: the heads of the older page, which names a number alone.
        head = sql_best_head(txn, p, None if chain_id is None else int(chain_id))
        if head is not None:
            heads.append(head)
    return heads


# The statements below read the index eth_blocks_chain alone, but for the reporters (and the
# best head's few look-ups, ethtwisted.storage.heads).


def _in_range(p: str) -> str:
    return f"chain_id = {p} AND number >= {p} AND number <= {p} AND block_hash IS NOT NULL"


def _sql_chain_rows(
    txn: Any, p: str, chain_id: int, low: int, high: int, margin: int, every: bool
) -> Stored | None:
    head = sql_best_head(txn, p, chain_id)
    if head is None:
        return None
    txn.execute(
        "SELECT number, block_hash, parent_hash, hash, first_seen FROM eth_blocks"
        f" WHERE {_in_range(p)}",
        (chain_id, low, high + margin),
    )
    rows = [Row(int(n), bh, ph, h, float(t)) for n, bh, ph, h, t in txn.fetchall()]
    here = Counter(r.number for r in rows if r.number <= high)
    forks = sorted(n for n, blocks in here.items() if every or blocks > 1)
    # Who reported each block first, for the heights with several (or every): only those rows.
    reporters: dict[str, tuple[str, int | None]] = {}
    for heights in chunks(forks, REPORTER_HEIGHTS):
        txn.execute(
            f"SELECT hash, client, block_time FROM eth_blocks WHERE chain_id = {p}"
            f" AND number IN ({', '.join([p] * len(heights))})",
            (chain_id, *heights),
        )
        reporters.update((h, (c, None if t is None else int(t))) for h, c, t in txn.fetchall())
    return Stored(head, rows, reporters)


def _sql_chain_size(
    txn: Any, p: str, chain_id: int, low: int, high: int, margin: int
) -> tuple[Head, int] | None:
    head = sql_best_head(txn, p, chain_id)
    if head is None:
        return None
    txn.execute(
        f"SELECT COUNT(*) FROM eth_blocks WHERE {_in_range(p)}", (chain_id, low, high + margin)
    )
    return head, int(txn.fetchone()[0])


def _sql_chain_gaps(
    txn: Any, p: str, chain_id: int, low: int, high: int
) -> tuple[int, list[tuple[int, int]]] | None:
    head = sql_best_head(txn, p, chain_id)
    if head is None:
        return None
    end = min(high, head.number)
    if end < low:
        return head.number, []
    # Each stored height with the one before and after it: only the lowest, the highest, and
    # those after a gap come back (never an arithmetic past a stored number: no overflow).
    txn.execute(
        "SELECT number, below FROM (SELECT number,"
        " LAG(number) OVER (ORDER BY number) AS below,"
        " LEAD(number) OVER (ORDER BY number) AS above"
        f" FROM eth_blocks WHERE {_in_range(p)}) AS steps"
        " WHERE below IS NULL OR above IS NULL OR number > below + 1"
        " ORDER BY number",
        (chain_id, low, end),
    )
    steps = [(int(n), None if b is None else int(b)) for n, b in txn.fetchall()]
    if not steps:
        return head.number, [(low, end)]
    gaps = [(low, steps[0][0] - 1)] if steps[0][0] > low else []
    gaps += [(b + 1, n - 1) for n, b in steps if b is not None and n > b + 1]
    if steps[-1][0] < end:
        gaps.append((steps[-1][0] + 1, end))
    return head.number, gaps
