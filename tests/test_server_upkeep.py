"""
The server's timers: old sightings pruned in small batches, and the summary line.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from ethtwisted.protocol import block_json
from ethtwisted.server import upkeep
from ethtwisted.server.upkeep import PRUNE_BATCH, SightingPruner, Summary
from ethtwisted.states import Thresholds
from ethtwisted.storage.memory_store import MemoryStore
from ethtwisted.storage.sql_store import SQLStore
from tests.test_storage_contract import block, received
from tests.test_web import sqlite_store

__all__ = ["sqlite_store"]  # the fixture, for pytest

DAY = 86400.0


def test_pruner_deletes_sightings_older_than_kept_in_batches_and_never_fails() -> None:
    """
    A run deletes the sightings received over C{keep_days} ago, L{PRUNE_BATCH} a transaction
    and at most L{upkeep.MAX_PRUNE_BATCHES} of them; a store that is down is said once, and
    the run still succeeds.
    """
    clock, store = Clock(), MemoryStore()
    clock.advance(100 * DAY)
    old = [received(block_json(block(1, n)), "a", DAY) for n in range(PRUNE_BATCH * 3)]
    fresh = received(block_json(block(1, 10**6)), "a", 99 * DAY)
    store.store([*old, fresh])
    calls = []
    real = store.ledger.prune_sightings
    store.ledger.prune_sightings = lambda b, n: calls.append(n) or real(b, n)  # type: ignore
    pruner = SightingPruner(store.ledger, clock, keep_days=30)
    pruner.run()
    assert calls == [PRUNE_BATCH] * 4
    assert list(store.tables.sightings) == [("a", fresh.sha256)]
    store.down = ConnectionError("down")
    with capturedLogs() as events:
        assert pruner.run().called
        assert pruner.run().called
    assert [e["log_format"] for e in events] == ["cannot prune old sightings: {reason}"]


@pytest_twisted.ensureDeferred
async def test_summary_names_heads_and_the_clients_not_current(sqlite_store: SQLStore) -> None:
    """
    The line says how many payloads were stored since the last one, the clients connected,
    each chain's head and which clients are not current, with their states in order.
    """
    store = sqlite_store
    summary = Summary(store, store.fleet, lambda: 2)
    batch = [received(block_json(block(1, n)), "fast", float(n)) for n in range(1, 10)]
    batch.append(received(block_json(block(1, 2)), "slow", 5.0))
    await store.store(batch)
    summary.committed(batch, 9)
    thresholds = Thresholds(behind_blocks=3, behind_seconds=1, stall_seconds=1, silent_seconds=60)
    await store.fleet.decide(
        "s", 100.0, {"fast": 100.0, "slow": 100.0, "gone": 30.0}, {}, thresholds
    )
    with capturedLogs() as events:
        await summary.run()
        await summary.run()
    lines = [e["log_format"].format(**e) for e in events]
    assert lines == [
        "stored 9 new payloads; 2 clients connected; heads: chain 1 at 9;"
        " not current: gone (silent), slow (behind, stalled)",
        "stored 0 new payloads; 2 clients connected; heads: chain 1 at 9;"
        " not current: gone (silent), slow (behind, stalled)",
    ]
    assert upkeep.log.namespace == "ethtwisted.server"
