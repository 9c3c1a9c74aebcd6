"""
A store with known data for the dashboard's pictures: 1,001 clients on two chains (one more
than a page of /api/v1/clients at its largest), a fork and its reorg, a gap, a slow block, a
slow client, clients behind, stalled, syncing and gone silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from twisted.internet import reactor

from ethtwisted.frames import Status, SyncProgress
from ethtwisted.protocol import Block, block_json, payload_hash
from ethtwisted.records import Received, StatusReport
from ethtwisted.states import Thresholds
from ethtwisted.storage.sql_pool import parse_db_url
from ethtwisted.storage.sql_store import SQLStore

MAIN = 1
"""The chain most clients follow, heights 1 to HEAD with a gap and a fork."""
EDGE = 5
"""A small chain of its own, heights 1 to 20."""
HEAD = 60
GAP = (41, 43)
FORK = 50
"""Blocks 50 and 51 of another branch, left for the chain through 50 and on."""
SLOW_BLOCK = 30
"""Its timestamp is 30 s after its parent's; every other block's 12 s."""
SEEN_FROM = 36
"""The heights every client of MAIN saw from."""
NODES = 985
BEHIND = [f"node-{i:04d}" for i in range(950, NODES)]
"""They stopped at block 52."""
LAGGING = [f"node-{i:04d}" for i in range(940, 950)]
"""They see each block 43 s after the fleet, so far only up to block 53."""
SILENT = [f"node-{i:04d}" for i in range(900, 920)]
"""Their connections ended a while ago."""
FORKED = [f"fork-{i}" for i in range(5)]
SLOW = "slow-client"
EDGES = [f"edge-{i}" for i in range(10)]
SYNCING = EDGES[-1]
"""Its node says it is syncing."""
VERSION = "Geth/v1.14.12-stable/linux-amd64/go1.23.4"
CLIENTS = [f"node-{i:04d}" for i in range(NODES)] + [SLOW, *FORKED, *EDGES]


def block(chain_id: int, number: int, fork: int = 0, parent_fork: int = 0) -> Block:
    timestamp = 1_700_000_000 + 12 * number + (18 if number >= SLOW_BLOCK else 0) + fork
    return Block(
        chain_id=chain_id,
        number=number,
        hash=f"0x{chain_id:016x}{number:040x}{fork:08x}",
        parent_hash=f"0x{chain_id:016x}{number - 1:040x}{parent_fork:08x}",
        timestamp=timestamp,
    )


def delay_ms(client: str, number: int) -> float:
    """How long after the fleet's first sighting C{client} saw block C{number}."""
    if client == SLOW:
        return 3000.0 + (number * 733) % 5000
    if client in LAGGING:
        return 43_000.0 + number
    index = int(client.rsplit("-", 1)[1])
    return float((index % 40) * 15 + (index * 7 + number * 13) % 50)


@dataclass
class KnownFleet:
    path: Path
    now: float


def _sighting(b: Block, client: str, first: float) -> Received:
    payload = block_json(b)
    seen = first + delay_ms(client, b.number) / 1000
    return Received(payload_hash(payload), payload.decode(), "127.0.0.1", client, seen + 0.002,
                    b, seen, "ipc")  # fmt: skip


async def known_fleet(path: Path) -> KnownFleet:
    """
    Fill a SQLite store at C{path}: the blocks of MAIN from SEEN_FROM on first seen 10 s
    apart, the head 8 s ago, those below long before (so that the last 10 minutes hold the
    same blocks for minutes); then decide the states as a server that holds every client but
    the silent ones.
    """
    now = reactor.seconds()
    store = SQLStore(parse_db_url(f"sqlite:///{path}"), reactor)
    await store.start()
    try:

        def first(number: int) -> float:
            if number < SEEN_FROM:
                return now - 3000 + 10 * number
            return now - 8 - 10 * (HEAD - number)

        heights = [n for n in range(1, HEAD + 1) if not GAP[0] <= n <= GAP[1]]
        batch = [_sighting(block(MAIN, n), "node-0000", first(n)) for n in heights]
        batch += [_sighting(block(EDGE, n), "edge-0", first(n + HEAD - 20)) for n in range(1, 21)]
        for n in [n for n in heights if n >= SEEN_FROM]:
            for client in [f"node-{i:04d}" for i in range(1, NODES)] + [SLOW]:
                if (client not in BEHIND or n <= 52) and (client not in LAGGING or n <= 53):
                    batch.append(_sighting(block(MAIN, n), client, first(n)))
            if n < FORK:
                batch += [_sighting(block(MAIN, n), c, first(n)) for c in FORKED]
        for n, parent in ((FORK, 0), (FORK + 1, 1)):
            orphan = block(MAIN, n, fork=1, parent_fork=parent)
            batch += [_sighting(orphan, c, first(n) - 0.5) for c in FORKED]
        for n in range(1, 21):
            batch += [_sighting(block(EDGE, n), c, first(n + HEAD - 20)) for c in EDGES[1:]]
        await store.store(batch)
        await store.store(
            [
                StatusReport(c, now - 2, Status(VERSION, EDGE if c in EDGES else MAIN, 25,
                                                SyncProgress(12, 20) if c == SYNCING else False))
                for c in CLIENTS
            ]
        )  # fmt: skip
        # The clients reported their blocks in order: each one's last is its head.
        connected = {c: now - 1 for c in CLIENTS}
        await store.fleet.decide("known-fleet", now - 200, connected, {}, Thresholds())
        gone = {c: now - 120 for c in SILENT}
        for c in SILENT:
            del connected[c]
        await store.fleet.decide("known-fleet", now, connected, gone, Thresholds())
    finally:
        await store.close()
    return KnownFleet(path, now)
