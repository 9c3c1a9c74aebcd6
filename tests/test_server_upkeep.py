"""
The server's timers: old sightings pruned in small batches, and the summary line.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from ethtwisted.protocol import block_json
from ethtwisted.server import upkeep
from ethtwisted.server.upkeep import PRUNE_BATCH, SightingPruner, Summary
from ethtwisted.storage.memory_store import MemoryStore
from tests.test_storage_contract import block, received

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


def test_summary_names_heads_and_the_clients_behind() -> None:
    """
    The line says how many payloads were stored since the last one, the clients connected,
    each chain's head and which clients' last block is behind it.
    """
    store = MemoryStore()
    summary = Summary(store, lambda: 2)
    batch = [received(block_json(block(1, n)), "fast", float(n)) for n in range(1, 4)]
    batch.append(received(block_json(block(1, 2)), "slow", 5.0))
    store.store(batch)
    summary.committed(batch, 3)
    with capturedLogs() as events:
        summary.run()
        summary.run()
    lines = [e["log_format"].format(**e) for e in events]
    assert lines == [
        "stored 3 new payloads; 2 clients connected; heads: chain 1 at 3; not current: slow at 2",
        "stored 0 new payloads; 2 clients connected; heads: chain 1 at 3; not current: slow at 2",
    ]
    assert upkeep.log.namespace == "ethtwisted.server"
