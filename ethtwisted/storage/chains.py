"""
The chains as the fleet saw them (L{IChainReader}): which stored block is canonical or
orphaned, the gaps, the forks and the reorgs, decided on each read from the blocks stored in
C{eth_blocks} and their parent links, walking back from the best head
(L{ethtwisted.storage.heads}).

Deciding on read keeps the group commit as it was (no read, no update on the write path, and
several servers writing at once never have to agree on a flag), at the cost of one bounded
range read per request: at most L{MAX_CHAIN_RANGE} heights, and L{ANCESTRY_MARGIN} above them
to find the ancestry that reaches into the range.  The SQL store reads it from the index
C{eth_blocks_chain} alone (numbers, hashes, parent hashes, first sightings); who reported a
block is read only for the heights with several blocks, and the gaps of a range alone are
found in SQL (L{ethtwisted.storage.sql_chains}).  The SQL store and the memory store give the
same rows to the same analysis, L{analyse}.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from ethtwisted.interfaces import CHAIN_WINDOW, MAX_CHAIN_RANGE, IBlockReader, IChainReader
from ethtwisted.protocol import MAX_BLOCK_INT
from ethtwisted.records import ChainBlock, ChainRange, Head, Reorg

REPORTER_HEIGHTS = 500
"""The most heights one statement reads who reported the blocks at."""
ANCESTRY_MARGIN = 1024
"""Heights read above a range: the walk from a head further above starts at the top of the
margin from the block first seen last (a fork deeper than this across the range's end is
decided by that rule alone); orphaned branches are followed this far up for their depth."""


@dataclass(frozen=True)
class Row:
    """
    One stored block of a chain, as read for the analysis.
    """

    number: int
    block_hash: str
    parent_hash: str
    sha256: str
    first_seen: float


@dataclass(frozen=True)
class Stored:
    """
    What a store holds of a chain for a read of C{low}..C{high}: its best head, its blocks
    from C{low} to C{high + margin}, and who reported each block first and its timestamp
    (SHA256 to both) at least for the heights from C{low} to C{high} with several blocks, or
    all of them when the read asked for every block.
    """

    head: Head
    rows: list[Row]
    reporters: Mapping[str, tuple[str, int | None]]


class ChainRows(Protocol):
    """
    What a store gives the analysis.  Its blocks are never changed or deleted once stored.
    """

    def heads(self, limit: int) -> Deferred[list[Head]]: ...

    def chain_rows(
        self, chain_id: int, low: int, high: int, margin: int, every: bool = False
    ) -> Deferred[Stored | None]:
        """
        The chain's blocks for a read of C{low}..C{high} (who reported each, for C{every}
        height of it), or L{None} if it has no block.
        """

    def chain_size(
        self, chain_id: int, low: int, high: int, margin: int
    ) -> Deferred[tuple[Head, int] | None]:
        """
        The best head and the number of rows C{chain_rows} would give now, without reading them.
        """

    def chain_gaps(
        self, chain_id: int, low: int, high: int
    ) -> Deferred[tuple[int, list[tuple[int, int]]] | None]:
        """
        The best head's number and the gaps of L{IChainReader.gaps}, or L{None} if the chain
        has no block.
        """


def gaps_between(numbers: Iterable[int], low: int, end: int) -> list[tuple[int, int]]:
    """
    The runs of heights from C{low} to C{end} (both included) at which none of C{numbers} is.
    """
    gaps: list[tuple[int, int]] = []
    previous = low - 1
    for number in [*sorted({n for n in numbers if low <= n <= end}), end + 1]:
        if number > previous + 1:
            gaps.append((previous + 1, number - 1))
        previous = number
    return gaps


def _first_seen_last(rows: list[Row]) -> Row:
    # As the heads' rule: of several blocks at a height, the one first seen last, then the
    # highest hash.
    return max(rows, key=lambda r: (r.first_seen, r.block_hash))


def analyse(
    chain_id: int, low: int, high: int, stored: Stored, finalized: int | None, every: bool = False
) -> ChainRange:
    """
    The range C{low}..C{high} of a chain from what is C{stored} of it, whose rows cover
    C{low}..C{high + ANCESTRY_MARGIN}; with C{every}, each of its blocks C{listed}.
    """
    head, rows = stored.head, stored.rows
    by_height: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        by_height[r.number].append(r)
    canonical: dict[int, Row] = {}
    top = min(head.number, high + ANCESTRY_MARGIN)
    expected: str | None = head.block_hash if top == head.number else None
    for number in range(top, low - 1, -1):
        here = by_height.get(number)
        if not here:
            expected = None  # a gap: the link is lost
            continue
        if expected is None:
            chosen: Row | None = _first_seen_last(here)
        else:
            chosen = next((r for r in here if r.block_hash == expected), None)
        if chosen is None:
            expected = None  # the canonical block here is not stored, only others
            continue
        canonical[number] = chosen
        expected = chosen.parent_hash

    def record(r: Row) -> ChainBlock:
        is_canonical = canonical.get(r.number) is r
        is_final = is_canonical and finalized is not None and r.number <= finalized
        client, timestamp = stored.reporters[r.sha256]
        return ChainBlock(
            r.number, r.block_hash, r.parent_hash, r.sha256, client, r.first_seen,
            is_canonical, is_final, timestamp,
        )  # fmt: skip

    in_range = sorted(n for n in by_height if low <= n <= high)
    heights = [
        [record(r) for r in sorted(by_height[n], key=lambda r: r.block_hash)]
        for n in in_range
        if every or len(by_height[n]) > 1
    ]
    forks = [blocks for blocks in heights if len(blocks) > 1]
    return ChainRange(
        chain_id=chain_id,
        low=low,
        high=high,
        head=head.number,
        finalized=finalized,
        blocks=sum(len(by_height[n]) for n in in_range),
        canonical=sum(1 for n in in_range if n in canonical),
        # Heights above the best head are not gaps: only orphans can be there.
        gaps=gaps_between(in_range, low, min(high, head.number)),
        forks=forks,
        reorgs=_reorgs(rows, canonical, low, high),
        listed=[b for blocks in heights for b in blocks] if every else [],
    )


def _reorgs(rows: list[Row], canonical: Mapping[int, Row], low: int, high: int) -> list[Reorg]:
    """
    The orphaned branches whose first block is in C{low}..C{high}: each from the orphan whose
    parent is no orphan, up to its highest descendant.
    """
    kept = {id(r) for r in canonical.values()}
    orphans = sorted((r for r in rows if id(r) not in kept), key=lambda r: -r.number)
    hashes = {r.block_hash for r in orphans}
    tips: dict[str, Row] = {}
    children: dict[str, list[Row]] = defaultdict(list)
    for r in orphans:
        children[r.parent_hash].append(r)
    for r in orphans:  # highest first: a child's tip is known before its parent's
        tip = r
        for child in children.get(r.block_hash, ()):
            candidate = tips[child.block_hash]
            if (candidate.number, candidate.block_hash) > (tip.number, tip.block_hash):
                tip = candidate
        tips[r.block_hash] = tip
    reorgs = []
    for r in sorted(orphans, key=lambda r: (r.number, r.block_hash)):
        if r.parent_hash in hashes or not low <= r.number <= high:
            continue
        tip = tips[r.block_hash]
        replaced_by = canonical.get(r.number)
        reorgs.append(
            Reorg(
                r.number,
                tip.number - r.number + 1,
                tip.block_hash,
                replaced_by.block_hash if replaced_by is not None else None,
            )
        )
    return reorgs


def _check_range(low: int, high: int) -> None:
    if not 0 <= high - low < MAX_CHAIN_RANGE:
        raise ValueError(f"a chain range is 1 to {MAX_CHAIN_RANGE} heights")


def _margin(high: int) -> int:
    # Never past the largest height a block can have (a signed 64-bit column).
    return min(ANCESTRY_MARGIN, MAX_BLOCK_INT - high)


@implementer(IChainReader)
class ChainReader:
    """
    L{IChainReader} over a store's rows (L{ChainRows}: the SQL store or the memory store).
    It keeps each chain's last summary, and L{chains} gives it again while the chain's best
    head and the number of blocks its read covers are the same (blocks are never changed or
    deleted once stored, so they are the same blocks): a scrape or a request while no block
    came counts them and analyses nothing.
    """

    def __init__(self, store: ChainRows) -> None:
        self.store = store
        self._summaries: dict[int, tuple[tuple[Any, ...], ChainRange]] = {}

    def chain(
        self, chain_id: int, low: int, high: int, finalized: int | None
    ) -> Deferred[ChainRange | None]:
        return Deferred.fromCoroutine(self._chain(chain_id, low, high, finalized))

    async def _chain(
        self, chain_id: int, low: int, high: int, finalized: int | None, every: bool = False
    ) -> ChainRange | None:
        return (await self._read(chain_id, low, high, finalized, every))[1]

    def blocks(
        self, chain_id: int, low: int, high: int, finalized: int | None
    ) -> Deferred[ChainRange | None]:
        return Deferred.fromCoroutine(self._chain(chain_id, low, high, finalized, True))

    async def _read(
        self, chain_id: int, low: int, high: int, finalized: int | None, every: bool = False
    ) -> tuple[tuple[Head, int] | None, ChainRange | None]:
        """
        The range, and the best head and row count it was decided from (as C{chain_size} gives
        them).
        """
        _check_range(low, high)
        stored = await self.store.chain_rows(chain_id, low, high, _margin(high), every)
        if stored is None:
            return None, None
        size = (stored.head, len(stored.rows))
        return size, analyse(chain_id, low, high, stored, finalized, every)

    def gaps(
        self, chain_id: int, low: int, high: int
    ) -> Deferred[tuple[int, list[tuple[int, int]]] | None]:
        try:
            _check_range(low, high)
        except ValueError as e:
            return fail(e)
        return self.store.chain_gaps(chain_id, low, high)

    def chains(self, limit: int, finalized: Mapping[int, int]) -> Deferred[list[ChainRange]]:
        return Deferred.fromCoroutine(self._chains(limit, finalized))

    async def _chains(self, limit: int, finalized: Mapping[int, int]) -> list[ChainRange]:
        heads = await self.store.heads(limit + 1)  # one more: blocks known only by number
        summaries: list[ChainRange] = []
        kept: dict[int, tuple[tuple[Any, ...], ChainRange]] = {}
        for head in heads:
            if head.chain_id is None or len(summaries) == limit:
                continue
            chain_id, high = head.chain_id, head.number
            read = (max(high - CHAIN_WINDOW + 1, 0), high, finalized.get(chain_id))
            size = await self.store.chain_size(chain_id, read[0], high, _margin(high))
            last = self._summaries.get(chain_id)
            if last is not None and last[0] == (*read, size):
                summary: ChainRange | None = last[1]
            else:
                size, summary = await self._read(chain_id, *read)
            if summary is not None:
                summaries.append(summary)
                kept[chain_id] = ((*read, size), summary)
        self._summaries = kept
        return summaries


def chain_reader(store: IBlockReader) -> ChainReader:
    """
    The chains as C{store} holds them, from the rows its C{chain_source} gives.
    """
    return ChainReader(store.chain_source)
