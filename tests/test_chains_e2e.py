"""
The chain as the fleet saw it, end to end: a real anvil node reorganised with
C{evm_snapshot}/C{evm_revert}, a real eth-client following it, the real eth-server storing
into SQLite, and what C{/api/v1/chains...} and C{/metrics} then say over HTTP; and a range
stored with holes, listed in C{/gaps} run by run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.logger import capturedLogs

from tests.e2e import node_hashes, reorganised, start_client, subscribed
from tests.helpers import Server, start_server, the_reactor
from tests.services import Anvil
from tests.web import metric

WAIT = 10.0
"""Seconds any one event of these tests may take."""
CHAIN = 31337
NAME = "follower"
REORG = "ethtwisted_chain_reorg_depth_blocks"


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    started = await start_server(
        ["--db", f"sqlite:///{tmp_path / 'eth.sqlite'}", "--stats", "tcp:0:interface=127.0.0.1"]
    )
    yield started
    if started.service.running:
        await started.stop()


async def fetch(server: Server, path: str) -> Any:
    """The answer to C{GET path} on the stats API of C{server}, a 200."""
    response = await treq.get(server.stats_url + path).addTimeout(WAIT, the_reactor())
    assert response.code == 200, (path, await response.text())
    return response


async def get(server: Server, path: str) -> Any:
    """The JSON of C{GET path} on the stats API of C{server}."""
    return await (await fetch(server, path)).json()


async def metrics(server: Server) -> str:
    """The text of C{/metrics} on the stats API of C{server}."""
    return str(await (await fetch(server, "/metrics")).text())


def latest(anvil: Anvil) -> dict[str, Any]:
    block: dict[str, Any] = anvil.rpc("eth_getBlockByNumber", "latest", False)
    return block


@pytest.mark.parametrize(("old", "new"), [(3, 4), (3, 3), (3, 2)],
                         ids=["longer", "equal", "shorter"])  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_a_reorg_is_listed_as_the_fleet_saw_it(
    anvil: Anvil, server: Server, old: int, new: int
) -> None:
    """
    Blocks 1-5, then C{old} blocks on a branch from 5 that C{evm_revert} drops for C{new}
    others (longer, as long, shorter), all followed by the client through its subscription:
    /gaps finds no height missing; /forks lists the heights where both branches have a block,
    the node's block there canonical and the dropped one not, each reported by the client,
    and the dropped branch as one reorg of depth C{old}; /api/v1/chains has the node's head
    as the best head, every height up to it canonical once, that reorg and its depth; the
    reorg depth histogram of /metrics counts it once.
    """
    # The polls only watch: every block comes by subscription, as the node pushes it.
    client = start_client(anvil.ws_url, server.port, "--interval", "60", "--name", NAME)
    try:
        await server.committed.wait_for(node_hashes(anvil).values(), WAIT)
        await subscribed(client)
        assert f"{REORG}_count" not in await metrics(server)  # the baseline: no reorg yet
        dropped, kept = await reorganised(anvil, server.committed, 5, old, new, WAIT)
    finally:
        await client.stopService()
    head = 5 + new
    top = 5 + max(old, new)
    assert [kept[n] == dropped[n] for n in range(6)] == [True] * 6
    assert all(kept[n] != dropped[n] for n in range(6, 6 + min(old, new)))

    gaps = await get(server, f"/api/v1/chains/{CHAIN}/gaps?from=0&to={top + 10}")
    assert gaps["gaps"] == [], gaps

    forks = await get(server, f"/api/v1/chains/{CHAIN}/forks?from=0&to={top}")
    both = range(6, 6 + min(old, new))
    assert [f["number"] for f in forks["forks"]] == list(both), forks
    for fork, number in zip(forks["forks"], both, strict=True):
        blocks = {b["hash"]: (b["canonical"], b["client"]) for b in fork["blocks"]}
        assert blocks == {kept[number]: (True, NAME), dropped[number]: (False, NAME)}, fork
        for b in fork["blocks"]:
            seen = (await get(server, f"/api/v1/blocks/{b['sha256']}"))["sightings"]
            assert [s["client"] for s in seen] == [NAME], seen
    assert forks["reorgs"] == [
        {"number": 6, "depth": old, "orphaned": dropped[5 + old], "canonical": kept[6]}
    ]

    (chain,) = (await get(server, "/api/v1/chains"))["chains"]
    assert chain["chain_id"] == CHAIN
    assert chain["head"] == head, chain
    # The summary's window ends at the head: a dropped block above it counts in the depth.
    assert (chain["from"], chain["to"]) == (0, head), chain
    assert (chain["canonical"], chain["orphaned"]) == (head + 1, len(both)), chain
    assert (chain["gaps"], chain["missing"], chain["forks"]) == (0, 0, len(both)), chain
    assert (chain["reorgs"], chain["deepest_reorg"]) == (1, old), chain
    best = (await get(server, "/api/v1/head"))["heads"]
    assert [(h["chain_id"], h["number"], h["hash"]) for h in best] == [(CHAIN, head, kept[head])]

    for _ in range(2):  # counted once, however often scraped
        text = await metrics(server)
        labels = f'{{chain_id="{CHAIN}"}}'
        assert metric(text, f"{REORG}_count", labels) == 1
        assert metric(text, f"{REORG}_sum", labels) == old
        assert metric(text, f"{REORG}_bucket", f'{{chain_id="{CHAIN}",le="2.0"}}') == 0
        assert metric(text, f"{REORG}_bucket", f'{{chain_id="{CHAIN}",le="3.0"}}') == 1


@pytest_twisted.ensureDeferred
async def test_heights_a_client_skipped_are_listed_as_gaps(
    anvil: Anvil, server: Server, tmp_path: Path
) -> None:
    """
    A client with C{--max-backfill 2} and a spool, stopped twice while the node mined 6
    blocks, fills only the 2 below the head when it starts again and skips the rest: /gaps
    lists exactly the runs of heights it said it skipped, a range inside one run is that run
    and a range without one is []; /api/v1/chains counts them and walks across them.
    """
    args = ["--spool", str(tmp_path / "spool"), "--max-backfill", "2", "--name", NAME]
    client = start_client(anvil.http_url, server.port, *args)
    with capturedLogs() as events:
        try:
            await server.committed.wait_for(node_hashes(anvil).values(), WAIT)
            for _ in range(2):
                anvil.mine()
                await server.committed.wait_for(node_hashes(anvil).values(), WAIT)
            for _ in range(2):
                await client.stopService()
                anvil.mine(6)
                client = start_client(anvil.http_url, server.port, *args)
                hashes, head = node_hashes(anvil), anvil.block_number()
                await server.committed.wait_for([hashes[head - 1], hashes[head]], WAIT)
                anvil.mine()
                await server.committed.wait_for([latest(anvil)["hash"]], WAIT)
        finally:
            await client.stopService()
    skipped = [(e["first"], e["end"]) for e in events if "first" in e and "end" in e
               and "skipped" in e.get("log_format", "")]  # fmt: skip
    assert skipped == [(3, 6), (10, 13)], skipped
    head = anvil.block_number()
    assert head == 16
    stored = set(server.committed.hashes)
    hashes = node_hashes(anvil)
    assert [n for n in range(head + 1) if hashes[n] not in stored] == [3, 4, 5, 6, 10, 11, 12, 13]

    gaps = await get(server, f"/api/v1/chains/{CHAIN}/gaps?from=0&to={head + 5}")
    assert gaps["gaps"] == [[3, 6], [10, 13]], gaps
    inside = await get(server, f"/api/v1/chains/{CHAIN}/gaps?from=4&to=5")
    assert inside["gaps"] == [[4, 5]]
    between = await get(server, f"/api/v1/chains/{CHAIN}/gaps?from=7&to=9")
    assert between["gaps"] == []
    (chain,) = (await get(server, "/api/v1/chains"))["chains"]
    assert (chain["head"], chain["gaps"], chain["missing"]) == (head, 2, 8), chain
    assert (chain["canonical"], chain["orphaned"], chain["forks"]) == (head + 1 - 8, 0, 0), chain
    forks = await get(server, f"/api/v1/chains/{CHAIN}/forks?from=0&to={head}")
    assert (forks["forks"], forks["reorgs"]) == ([], [])
