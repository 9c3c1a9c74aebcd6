"""
A real peer-to-peer execution client: a clique (proof-of-authority) network of two EthereumJS
nodes, one sealing, the other syncing from it over devp2p, each followed by an eth-client (one
over WebSocket, one over HTTP) into the real eth-server, read back through its stats API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent

from ethtwisted.client import EthClient
from ethtwisted.protocol import Block, block_json, payload_hash
from tests.e2e import start_client
from tests.ethereumjs import CHAIN_ID, PERIOD, CliqueNetwork, EthereumJS
from tests.helpers import Server, start_server, wait_for

SEALED = 3
"""Blocks the sealer seals before it stops: more than C{--behind-blocks}, so that the follower
at block 0 is behind."""
SEAL_TIME = SEALED * PERIOD + 10.0
"""Seconds the sealer's client may take to store block C{SEALED}."""
THRESHOLDS = ["--behind-blocks", "2", "--behind-seconds", "1"]
"""Behind when 3 blocks back for 1 s; stalled and silent after the default 60 s, later than
this test ends, though the chain stops."""
CATCH_UP = 60.0
"""Seconds the follower may take to sync: its sync loop waits 5 s for a peer, and a request
of its that crosses another on the same peer waits 8 s for an answer that never comes."""


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """An eth-server on a SQLite file with its stats API, deciding states every second."""
    db = f"sqlite:///{tmp_path / 'eth.sqlite'}"
    started = await start_server(["--db", db, "--stats", "tcp:0:interface=127.0.0.1", *THRESHOLDS])
    yield started
    if started.service.running:
        await started.stop()


async def sighted(server: Server, block: Block) -> set[str]:
    """The clients with a sighting of C{block}, as its canonical message, in the stats API."""
    sha256 = payload_hash(block_json(block))
    response = await treq.get(f"{server.stats_url}/api/v1/blocks/{sha256}")
    if response.code == 404:
        return set()
    assert response.code == 200, sha256
    return {s["client"] for s in (await response.json())["sightings"]}


def follow(node: str, server: Server, name: str) -> EthClient:
    """An eth-client named C{name} following C{node}, reading its status twice a second."""
    return start_client(node, server.port, "--name", name, "--status-interval", "0.5")


async def get(server: Server, path: str) -> Any:
    response = await treq.get(f"{server.stats_url}{path}")
    assert response.code == 200, path
    return await response.json()


async def clients(server: Server) -> dict[str, dict[str, Any]]:
    """The entries of /api/v1/clients, by name."""
    return {c["client"]: c for c in (await get(server, "/api/v1/clients"))["clients"]}


def changes(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["state"], e["event"]) for e in events}


@pytest_twisted.ensureDeferred
async def test_a_clique_network_of_two_ethereumjs_nodes_is_followed_block_for_block(
    clique: CliqueNetwork, server: Server
) -> None:
    """
    The sealer's client (HTTP) stores each block as it is sealed; once the sealer stops
    sealing, a follower node starts and syncs the chain over devp2p, and its client
    (WebSocket) reports its real sync progress, is C{behind} and C{syncing} while it lags,
    and current once it caught up.  /api/v1/clients shows the version each node reports and
    one peer each; every block either node holds (from where the client began) is stored
    with its client's sighting, and nothing is refused.
    """
    watching: list[EthClient] = []
    progress: list[dict[str, int]] = []

    async def sealed() -> bool:
        entry = (await clients(server)).get("sealer")
        return entry is not None and (entry["last_block"] or 0) >= SEALED

    async def caught_up(head: int) -> bool:
        entries = await clients(server)
        if set(entries) != {"sealer", "follower"}:
            return False
        syncing = (entries["follower"]["node"] or {}).get("syncing")
        if isinstance(syncing, dict) and syncing not in progress:
            progress.append(syncing)
        return all(
            e["last_block"] == head
            and e["state"] == "current"
            and e["node"] is not None
            and (e["node"]["peers"], e["node"]["syncing"]) == (1, False)
            for e in entries.values()
        )

    with capturedLogs() as logged:
        try:
            sealer: EthereumJS = await deferToThread(clique.sealer)
            first = {"sealer": sealer.block_number(), "follower": 0}
            watching.append(follow(sealer.http_url, server, "sealer"))
            await wait_for(sealed, SEAL_TIME, what=f"the sealer's client at block {SEALED}")
            await deferToThread(sealer.stop_sealing)
            head = sealer.block_number()
            follower: EthereumJS = await deferToThread(clique.follower, sealer)
            watching.append(follow(follower.ws_url, server, "follower"))
            await wait_for(
                lambda: caught_up(head), CATCH_UP, 0.2, what="both clients current at the head"
            )

            entries = await clients(server)
            for name, node in (("sealer", sealer), ("follower", follower)):
                reported = entries[name]["node"]
                assert reported["client_version"] == node.rpc("web3_clientVersion")
                assert reported["client_version"].startswith("EthereumJS/0.10.5/")
                assert reported["chain_id"] == CHAIN_ID
                chain = await deferToThread(node.blocks)
                assert [b.number for b in chain] == list(range(head + 1))
                for block in chain[first[name] :]:
                    assert name in await sighted(server, block), (name, block)
            assert sealer.blocks() == follower.blocks()
            assert progress, "no sync progress reported"
            assert all(p["current"] <= p["highest"] == head for p in progress), progress
            assert any(p["current"] < head for p in progress), progress
            events = (await get(server, "/api/v1/events?client=follower"))["events"]
            assert changes(events) == {
                ("behind", "entered"), ("behind", "left"),
                ("syncing", "entered"), ("syncing", "left"),
            }  # fmt: skip
            assert not (await get(server, "/api/v1/events?client=sealer"))["events"]
        finally:
            for client in watching:
                await client.stopService()
    refused = [text for text in map(formatEvent, logged) if "extraData" in text]
    assert not refused, refused[:3]
