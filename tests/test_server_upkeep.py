"""
The server's timers: old sightings and payloads pruned in small batches, and the summary line.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from ethtwisted.interfaces import CHAIN_WINDOW
from ethtwisted.protocol import block_json
from ethtwisted.server import upkeep
from ethtwisted.server.upkeep import PRUNE_BATCH, SightingPruner, Summary
from ethtwisted.states import Thresholds
from ethtwisted.storage.memory_store import MemoryStore
from ethtwisted.storage.sql_store import SQLStore
from tests.blocks import block, received

DAY = 86400.0


def test_pruner_deletes_sightings_older_than_kept_in_batches_and_never_fails() -> None:
    """
    A run deletes the sightings of payloads first seen over C{keep_days} ago (the memory
    store keeps no days: by DELETE), L{PRUNE_BATCH} a transaction
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


def test_pruner_with_keep_blocks_goes_on_from_where_it_got_to() -> None:
    """
    With C{keep_blocks}, a run then prunes the payloads first seen over that many days ago
    that no gap proof needs (here an orphaned block and an opaque payload), reading
    L{PRUNE_BATCH} a call; the next run goes on after the last payload read and finds
    nothing more; without it, no payload goes.
    """
    clock = Clock()
    clock.advance(100 * DAY)
    kept = [received(block_json(block(1, n)), "a", DAY + n) for n in range(1, PRUNE_BATCH + 6)]
    orphan = received(block_json(block(1, 3, fork=1)), "b", 2 * DAY)
    opaque = received(b"opaque", "c", 3 * DAY)
    top = received(block_json(block(1, CHAIN_WINDOW + 10)), "a", 99 * DAY)

    def prune(keep_blocks: int | None) -> tuple[MemoryStore, list[Any]]:
        store = MemoryStore()
        store.store([*kept[:-1], orphan, kept[-1], opaque, top])
        pruner = SightingPruner(store.ledger, clock, keep_days=90, keep_blocks=keep_blocks)
        calls: list[Any] = []
        real = store.ledger.prune_blocks
        store.ledger.prune_blocks = lambda b, c, n: calls.append(c) or real(b, c, n)  # type: ignore
        assert pruner.run().called
        assert len(calls) == (0 if keep_blocks is None else 3)
        pruner.run()
        return store, calls

    store, calls = prune(None)
    assert len(store.tables.payloads) == len(kept) + 3 and calls == []
    store, calls = prune(30)
    assert set(store.tables.payloads) == {r.sha256 for r in [*kept, top]}
    assert calls[-1:] == [(3 * DAY, opaque.sha256)] and len(calls) == 4


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
