"""
The store in memory: L{MemoryStore} answers as L{SQLStore<ethtwisted.storage.sql_store.SQLStore>}
does, and its ledger (L{ethtwisted.storage.memory_ledger}) as the SQL ledger, for the same
traffic (tests/test_storage_contract.py holds them to it; the counters in memory are
L{ethtwisted.storage.memory_counters}, the tables they share L{ethtwisted.storage.memory_tables}).
Every call answers at once; while C{down} holds an exception, every call but C{close} fails with
it, as a store that cannot be reached does.  For unit tests, and for anything else that needs a
store without a server.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Sequence

from twisted.internet.defer import Deferred
from zope.interface import implementer

from ethtwisted.interfaces import IBlockReader, IBlockStore, ICounterReader
from ethtwisted.protocol import Block
from ethtwisted.records import (
    BlockRecord,
    ClientRecord,
    EventRecord,
    Head,
    NodeRecord,
    Received,
    StatusReport,
)
from ethtwisted.storage import (
    RejectedError,
    row_problem,
    status_events,
)
from ethtwisted.storage.chains import Row, Stored, gaps_between
from ethtwisted.storage.heads import OnBlock, best_at, best_of
from ethtwisted.storage.memory_ledger import MemoryLedger
from ethtwisted.storage.memory_tables import Answering, ReadOnlyError, SightingRow, Tables


@implementer(IBlockStore, ICounterReader, IBlockReader)
class MemoryStore(Answering):
    """
    L{IBlockStore} and its readers over L{Tables} in memory.  With C{read_only} it never
    writes, and L{start} fails unless a writing store has started on the same C{tables}.
    """

    max_payload_bytes = 2**30

    def __init__(self, tables: Tables | None = None, read_only: bool = False) -> None:
        self.tables = Tables() if tables is None else tables
        self.read_only = read_only
        self.ledger = MemoryLedger(self)
        self.chain_source = self
        """The chains' rows: this store reads them itself."""

    def start(self) -> Deferred[None]:
        return self._answer(self._start)

    def _start(self) -> None:
        if not self.read_only:
            self.tables.created = True
        elif not self.tables.created:
            raise LookupError("no such table: ethereum_data")

    def store(self, batch: Sequence[Received | StatusReport]) -> Deferred[int]:
        return self._answer(self._store_all, batch)

    def _store_all(self, batch: Sequence[Received | StatusReport]) -> int:
        if self.read_only:
            raise ReadOnlyError("the store is read-only")
        payloads = [r for r in batch if isinstance(r, Received)]
        new = self._store(payloads)
        t = self.tables
        for r in payloads:
            chain_id, number = _chain_and_number(r.block)
            t.sightings.setdefault(
                (r.client, r.sha256),
                SightingRow(r.client, r.sha256, chain_id, number, round(r.seen_at * 1000) / 1000,
                          r.via),
            )  # fmt: skip
        for report in batch:
            if isinstance(report, StatusReport):
                old = t.statuses.get(report.client)
                for kind, detail in status_events(old.status if old else None, report.status):
                    record = EventRecord(len(t.events) + 1, report.client, report.received,
                                         kind, detail)  # fmt: skip
                    t.events.append(record)
                t.statuses[report.client] = NodeRecord(
                    report.client, report.received, report.status
                )
        return new

    def _store(self, batch: Sequence[Received]) -> int:
        for r in batch:
            problem = row_problem(r, self.max_payload_bytes)
            if problem is not None:
                raise RejectedError(problem)
        t = self.tables
        new = 0
        for r in batch:
            if r.sha256 not in t.payloads:
                new += 1
                t.payloads[r.sha256] = r.payload
                t.blocks[r.sha256] = _record(r)
        # As the SQL upsert: a client's row takes its batch's last address and time, and its
        # last block report (the chain id only where one was given).
        rows: dict[str, ClientRecord] = {}
        for r in batch:
            chain_id, number = _chain_and_number(r.block)
            row = rows.get(r.client)
            if row is None:
                rows[r.client] = ClientRecord(
                    r.client, r.address, 1, r.received, r.received, chain_id, number
                )
            else:
                if number is None:
                    chain_id, number = row.chain_id, row.last_block
                rows[r.client] = ClientRecord(
                    r.client,
                    r.address,
                    row.messages + 1,
                    row.first_seen,
                    r.received,
                    chain_id,
                    number,
                )
        for name, row in rows.items():
            old = t.clients.get(name)
            if old is not None:
                row = ClientRecord(
                    name,
                    row.address,
                    old.messages + row.messages,
                    old.first_seen,
                    row.last_seen,
                    old.chain_id if row.chain_id is None else row.chain_id,
                    old.last_block if row.last_block is None else row.last_block,
                )
            t.clients[name] = row
        return new

    def _newest_first(self) -> list[BlockRecord]:
        blocks = self.tables.blocks.values()
        return sorted(blocks, key=lambda b: (b.first_seen, b.sha256), reverse=True)

    def latest_hashes(self, limit: int) -> Deferred[list[tuple[str, float]]]:
        newest = [(b.sha256, b.first_seen) for b in self._newest_first()]
        return self._answer(lambda: newest[:limit])

    def address_counts(self, limit: int) -> Deferred[list[tuple[str, int]]]:
        return self._answer(self._address_counts, limit)

    def _address_counts(self, limit: int) -> list[tuple[str, int]]:
        counts: Counter[str] = Counter()
        for c in self.tables.clients.values():
            counts[c.address] += c.messages
        return sorted(counts.items(), key=lambda r: (-r[1], r[0]))[:limit]

    def payload(self, sha256: str) -> Deferred[str | None]:
        return self._answer(self.tables.payloads.get, sha256)

    def blocks(self, limit: int, before: str | None = None) -> Deferred[list[BlockRecord] | None]:
        return self._answer(self._blocks, limit, before)

    def _blocks(self, limit: int, before: str | None) -> list[BlockRecord] | None:
        ordered = self._newest_first()
        if before is None:
            return ordered[:limit]
        cursor = self.tables.blocks.get(before)
        if cursor is None:
            return None
        start = ordered.index(cursor) + 1
        return ordered[start : start + limit]

    def block(self, sha256: str) -> Deferred[BlockRecord | None]:
        return self._answer(self.tables.blocks.get, sha256)

    def clients(
        self,
        limit: int,
        after: str | None = None,
        chain_id: int | None = None,
        names: Collection[str] | None = None,
    ) -> Deferred[list[ClientRecord]]:
        wanted = None if names is None else set(names)
        listed = [
            c
            for name, c in sorted(self.tables.clients.items())
            if (after is None or name > after)
            and (chain_id is None or c.chain_id == chain_id)
            and (wanted is None or name in wanted)
        ]
        return self._answer(lambda: listed[:limit])

    def heads(self, limit: int) -> Deferred[list[Head]]:
        return self._answer(self._heads, limit)

    def _heads(self, limit: int) -> list[Head]:
        reported = {c.chain_id for c in self.tables.clients.values() if c.last_block is not None}
        chains = sorted(reported, key=lambda chain: (chain is not None, chain or 0))[:limit]
        return [h for h in map(self._best_head, chains) if h is not None]

    def _best_head(self, chain_id: int | None) -> Head | None:
        # As ethtwisted.storage.heads.sql_best_head reads it.
        t = self.tables
        on = [c for c in t.clients.values() if c.chain_id == chain_id and c.last_block is not None]
        blocks = [b for b in t.blocks.values() if b.chain_id == chain_id and b.number is not None]
        if on:
            number = max(c.last_block for c in on if c.last_block is not None)
            at = {b.sha256: b for b in blocks if b.number == number}
            there = {c.client for c in on if c.last_block == number}
            seen = [
                OnBlock(s.client, s.seen_at, at[s.sha256].block_hash, at[s.sha256].first_seen)
                for s in t.sightings.values()
                if s.client in there and s.sha256 in at
            ]
            head = best_at(chain_id, number, seen)
            if head is not None:
                return head
        elif blocks:
            number = max(b.number for b in blocks if b.number is not None)
        else:
            return None
        stored = [(b.block_hash, b.first_seen) for b in blocks if b.number == number]
        return best_of(chain_id, number, stored)

    def first_seen(self) -> Deferred[float | None]:
        blocks = self.tables.blocks
        return self._answer(lambda: min((b.first_seen for b in blocks.values()), default=None))

    def arrivals(self, since: float, bucket: int) -> Deferred[list[tuple[float, int]]]:
        return self._answer(self._arrivals, since, bucket)

    def chain_rows(
        self, chain_id: int, low: int, high: int, margin: int, every: bool = False
    ) -> Deferred[Stored | None]:
        """
        L{ethtwisted.storage.chains.ChainRows.chain_rows}, as the SQL store reads them.
        """
        return self._answer(self._chain_rows, chain_id, low, high, margin)

    def _chain(
        self, chain_id: int, low: int, high: int
    ) -> list[tuple[Row, tuple[str, int | None]]]:
        """The chain's blocks from C{low} to C{high}, each with who reported it first, and when."""
        return [
            (Row(n, h, parent, b.sha256, b.first_seen), (b.client, b.block_time))
            for b in self.tables.blocks.values()
            if b.chain_id == chain_id and (n := b.number) is not None and low <= n <= high
            if (h := b.block_hash) is not None and (parent := b.parent_hash) is not None
        ]

    def _chain_rows(
        self, chain_id: int, low: int, high: int, margin: int, every: bool = False
    ) -> Stored | None:
        head = self._best_head(chain_id)
        if head is None:
            return None
        chain = self._chain(chain_id, low, high + margin)
        return Stored(head, [r for r, _ in chain], {r.sha256: client for r, client in chain})

    def chain_size(
        self, chain_id: int, low: int, high: int, margin: int
    ) -> Deferred[tuple[Head, int] | None]:
        return self._answer(self._chain_size, chain_id, low, high, margin)

    def _chain_size(
        self, chain_id: int, low: int, high: int, margin: int
    ) -> tuple[Head, int] | None:
        head = self._best_head(chain_id)
        if head is None:
            return None
        return head, len(self._chain(chain_id, low, high + margin))

    def chain_gaps(
        self, chain_id: int, low: int, high: int
    ) -> Deferred[tuple[int, list[tuple[int, int]]] | None]:
        return self._answer(self._chain_gaps, chain_id, low, high)

    def _chain_gaps(
        self, chain_id: int, low: int, high: int
    ) -> tuple[int, list[tuple[int, int]]] | None:
        head = self._best_head(chain_id)
        if head is None:
            return None
        end = min(high, head.number)
        chain = self._chain(chain_id, low, end)
        return head.number, gaps_between((r.number for r, _ in chain), low, end)

    def _arrivals(self, since: float, bucket: int) -> list[tuple[float, int]]:
        counts = Counter(
            float(math.floor(b.first_seen / bucket) * bucket)
            for b in self.tables.blocks.values()
            if b.first_seen >= since
        )
        return sorted(counts.items())


def _chain_and_number(block: Block | int | None) -> tuple[int | None, int | None]:
    if isinstance(block, Block):
        return block.chain_id, block.number
    return None, block


def _record(r: Received) -> BlockRecord:
    b = r.block
    if not isinstance(b, Block):
        return BlockRecord(r.sha256, r.received, r.client, None, b, None, None, None)
    return BlockRecord(
        r.sha256, r.received, r.client, b.chain_id, b.number, b.hash, b.parent_hash, b.timestamp
    )
