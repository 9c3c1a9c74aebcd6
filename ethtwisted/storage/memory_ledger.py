"""
The ledger in memory: L{MemoryLedger} answers as L{ethtwisted.storage.ledger}'s SQL ledger
does (sightings, node statuses, events, what a client missed, pruning), over the tables of a
store in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted.internet.defer import Deferred
from zope.interface import implementer

from ethtwisted.interfaces import ILedger
from ethtwisted.records import EventRecord, NodeRecord, SightingRecord
from ethtwisted.storage import fleet_finalized, retention
from ethtwisted.storage.memory_tables import Answering, SightingRow, Tables


class HoldsTables(Protocol):
    """What the ledger reads of its store: the tables, and whether it is down."""

    tables: Tables
    down: BaseException | None


@implementer(ILedger)
class MemoryLedger(Answering):
    """
    L{ILedger} over a L{MemoryStore}'s tables, answering as the SQL ledger does.
    """

    def __init__(self, store: HoldsTables) -> None:
        self.store = store

    @property
    def down(self) -> BaseException | None:  # type: ignore[override]
        return self.store.down

    @property
    def tables(self) -> Tables:
        return self.store.tables

    def node_statuses(self, clients: Sequence[str]) -> Deferred[dict[str, NodeRecord]]:
        statuses = self.tables.statuses
        return self._answer(lambda: {c: statuses[c] for c in clients if c in statuses})

    def finalized(self, limit: int, since: float) -> Deferred[dict[int, int]]:
        return self._answer(self._finalized, limit, since)

    def _finalized(self, limit: int, since: float) -> dict[int, int]:
        fresh = [r.status for r in self.tables.statuses.values() if r.updated >= since]
        return fleet_finalized([(s.chain_id, s.finalized) for s in fresh], limit)

    def propagation(self, clients: Sequence[str], limit: int) -> Deferred[dict[str, list[float]]]:
        return self._answer(self._propagation, clients, limit)

    def _propagation(self, clients: Sequence[str], limit: int) -> dict[str, list[float]]:
        first: dict[str, float] = {}
        mine: dict[str, list[SightingRow]] = {c: [] for c in clients}
        for s in self.tables.sightings.values():
            first[s.sha256] = min(first.get(s.sha256, s.seen_at), s.seen_at)
            if s.client in mine and s.number is not None:
                mine[s.client].append(s)
        for seen in mine.values():
            seen.sort(key=lambda s: (s.seen_at, s.sha256), reverse=True)
        return {
            c: [(s.seen_at - first[s.sha256]) * 1000 for s in seen[:limit]]
            for c, seen in mine.items()
        }

    def sightings(self, sha256: str, limit: int) -> Deferred[list[SightingRecord]]:
        return self._answer(self._sightings, sha256, limit)

    def _sightings(self, sha256: str, limit: int) -> list[SightingRecord]:
        rows = sorted((s for s in self.tables.sightings.values() if s.sha256 == sha256),
                      key=lambda s: (s.seen_at, s.client))[:limit]  # fmt: skip
        return [
            SightingRecord(s.client, s.seen_at, s.via, (s.seen_at - rows[0].seen_at) * 1000)
            for s in rows
        ]

    def events(self, client: str, limit: int) -> Deferred[list[EventRecord]]:
        mine = [e for e in reversed(self.tables.events) if e.client == client]
        return self._answer(lambda: mine[:limit])

    def missing(
        self, client: str, chain_id: int, low: int, high: int, limit: int
    ) -> Deferred[list[int]]:
        return self._answer(self._missing, client, chain_id, low, high, limit)

    def _missing(self, client: str, chain_id: int, low: int, high: int, limit: int) -> list[int]:
        t = self.tables
        heights: dict[int, bool] = {}
        for b in t.blocks.values():
            if b.chain_id == chain_id and b.number is not None and low <= b.number <= high:
                seen = (client, b.sha256) in t.sightings
                heights[b.number] = heights.get(b.number, False) or seen
        return sorted(n for n, seen in heights.items() if not seen)[:limit]

    def prune_blocks(
        self, before: float, after: retention.Cursor, limit: int
    ) -> Deferred[tuple[int, retention.Cursor]]:
        return self._answer(retention.memory_prune_blocks, self.store.tables, before, after, limit)

    def prune_sightings(self, before: float, limit: int) -> Deferred[int]:
        return self._answer(self._prune, before, limit)

    def _prune(self, before: float, limit: int) -> int:
        t = self.tables
        # The sightings of the payloads first seen on the days before that of C{before}, in
        # the order the payloads were stored.
        order = {sha256: n for n, sha256 in enumerate(t.payloads)}
        day = before // 86400
        old = [s for s in t.sightings.values() if t.blocks[s.sha256].first_seen // 86400 < day]
        old = sorted(old, key=lambda s: (order[s.sha256], s.client))[:limit]
        for s in old:
            del t.sightings[(s.client, s.sha256)]
        return len(old)
