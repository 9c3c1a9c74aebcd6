"""
The counters in memory: L{MemoryCounters} answers as
L{RedisCounters<ethtwisted.storage.redis_store.RedisCounters>} does, for the same traffic
(tests/test_storage_contract.py holds them to it), at once or failing while C{down} holds an
exception, as the stores of L{ethtwisted.storage.memory_store} do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from twisted.internet.defer import Deferred
from zope.interface import implementer

from ethtwisted.interfaces import ICounterReader, ICounterStore
from ethtwisted.records import Received
from ethtwisted.storage.memory_tables import Answering


@implementer(ICounterStore, ICounterReader)
class MemoryCounters(Answering):
    """
    L{ICounterStore} and its L{ICounterReader} in memory: first sightings and messages per address.
    """

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        """SHA256 → unix time first seen (C{eth:hashes})."""
        self.messages: Counter[str] = Counter()
        """Client IP address → messages sent (C{eth:ip_addresses})."""
        self.groups: set[str] = set()
        """The names of the groups counted (C{eth:group:<id>}), each counted once."""

    def record(self, batch: Sequence[Received], group: str) -> Deferred[None]:
        return self._answer(self._record, batch, group)

    def _record(self, batch: Sequence[Received], group: str) -> None:
        if group in self.groups:
            return
        self.groups.add(group)
        for r in batch:
            self.first_seen.setdefault(r.sha256, r.received)
            self.messages[r.address] += 1

    def latest_hashes(self, limit: int) -> Deferred[list[tuple[str, float]]]:
        newest = sorted(self.first_seen.items(), key=lambda r: (r[1], r[0]), reverse=True)
        return self._answer(lambda: newest[:limit])

    def address_counts(self, limit: int) -> Deferred[list[tuple[str, int]]]:
        busiest = sorted(self.messages.items(), key=lambda r: (-r[1], r[0]))
        return self._answer(lambda: busiest[:limit])
