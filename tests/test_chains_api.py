"""
C{/api/v1/chains...} and the reorg histogram of C{/metrics}, in memory (StubTreq) over the
memory store; the analysis itself is held to the same answers on every backend by
tests/test_storage_contract.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock

from ethtwisted.frames import MAX_WIRE_INT, Status
from ethtwisted.interfaces import MAX_CHAIN_RANGE
from ethtwisted.protocol import MAX_BLOCK_INT, block_json, payload_hash
from ethtwisted.records import StatusReport
from ethtwisted.storage import FINALIZED_REPORT_AGE
from ethtwisted.storage.memory_store import MemoryStore
from ethtwisted.web.reads import Reads
from ethtwisted.web.site import StatsRoot
from tests.blocks import T0, block, received, store_reorged_chain
from tests.web import Client, metric

TOKEN = "chain-token"


async def filled(
    finalized: Mapping[int, int] | None = None, clock: IReactorTime = reactor
) -> tuple[MemoryStore, Client]:
    """
    The reorged chain in a memory store, with a client's node on each chain of C{finalized}
    reporting that finalized number now (on C{clock}); the stats site over it.
    """
    store = MemoryStore()
    await store.start()
    await store_reorged_chain(store)
    for chain_id, number in (finalized or {}).items():
        await report(store, clock, f"node-{chain_id}", chain_id, number)
    registry = CollectorRegistry()
    reads = Reads(clock, store, store, registry=registry)
    return store, Client(StatsRoot(reads, TOKEN))


async def report(
    store: MemoryStore, clock: IReactorTime, client: str, chain_id: int, finalized: int
) -> None:
    """
    C{client}'s node says, now on C{clock}, that C{finalized} is its chain's finalized block.
    """
    status = Status("anvil/1", chain_id, 1, False, finalized=finalized)
    await store.store([StatusReport(client, clock.seconds(), status)])


@pytest_twisted.ensureDeferred
async def test_chains_summary() -> None:
    """
    /api/v1/chains gives, per chain clients report, its head, the finalized number the nodes
    report, and over the window below the head: blocks, canonical and orphaned, gap runs and
    missing heights, forks, reorgs and the deepest.
    """
    _, client = await filled({1: 9})
    body = (await client.get("/api/v1/chains", TOKEN)).json()
    assert body["window"] == 10_000
    assert body["chains"] == [
        {
            "chain_id": 1,
            "head": 12,
            "finalized": 9,
            "from": 0,
            "to": 12,
            "blocks": 13,
            "canonical": 10,
            "orphaned": 3,
            "gaps": 2,
            "missing": 3,
            "forks": 3,
            "reorgs": 2,
            "deepest_reorg": 2,
        },
        {
            "chain_id": 5,
            "head": 700,
            "finalized": None,
            "from": 0,
            "to": 700,
            "blocks": 1,
            "canonical": 1,
            "orphaned": 0,
            "gaps": 1,
            "missing": 700,
            "forks": 0,
            "reorgs": 0,
            "deepest_reorg": 0,
        },
    ]


@pytest_twisted.ensureDeferred
async def test_gaps_and_forks_of_a_range() -> None:
    """
    /gaps lists the runs of heights with no block ([] when none); /forks the heights with
    several blocks (which is canonical, finalized, who reported it first) and the reorgs
    with their depth, at most C{limit} heights with C{next} to go on from.
    """
    _, client = await filled({1: 9})
    gaps = (await client.get("/api/v1/chains/1/gaps?from=0&to=40", TOKEN)).json()
    assert gaps == {"chain_id": 1, "from": 0, "to": 40, "head": 12, "gaps": [[0, 0], [4, 5]]}
    none = (await client.get("/api/v1/chains/1/gaps?from=6&to=12", TOKEN)).json()
    assert none["gaps"] == []

    forks = (await client.get("/api/v1/chains/1/forks?from=1&to=12", TOKEN)).json()
    assert [f["number"] for f in forks["forks"]] == [3, 9, 10]
    nine = forks["forks"][1]["blocks"]
    assert nine == [
        {
            "hash": block(1, 9).hash,
            "parent_hash": block(1, 8).hash,
            "sha256": payload_hash(block_json(block(1, 9))),
            "client": "a",
            "first_seen": T0 + 20,
            "canonical": True,
            "finalized": True,
            "timestamp": block(1, 9).timestamp,
        },
        {
            "hash": block(1, 9, fork=1).hash,
            "parent_hash": block(1, 8).hash,
            "sha256": payload_hash(block_json(block(1, 9, fork=1))),
            "client": "b",
            "first_seen": T0 + 9,
            "canonical": False,
            "finalized": False,
            "timestamp": block(1, 9).timestamp,
        },
    ]
    assert forks["reorgs"] == [
        {"number": 3, "depth": 1, "orphaned": block(1, 3, fork=2).hash,
         "canonical": block(1, 3).hash},
        {"number": 9, "depth": 2, "orphaned": block(1, 10, fork=1).hash,
         "canonical": block(1, 9).hash},
    ]  # fmt: skip
    assert (forks["finalized"], forks["next"]) == (9, None)

    page = (await client.get("/api/v1/chains/1/forks?from=1&to=12&limit=1", TOKEN)).json()
    assert [f["number"] for f in page["forks"]] == [3]
    assert page["next"] == 9 and [r["number"] for r in page["reorgs"]] == [3]


@pytest_twisted.ensureDeferred
async def test_every_block_of_a_few_heights() -> None:
    """
    /api/v1/chains/<id>/blocks lists every block of a range of heights, by height then hash,
    each with its number, whether it is canonical, who reported it first and its timestamp;
    with the range's head, gaps and reorgs, as the fork read gives them.
    """
    _, client = await filled({1: 9})
    body = (await client.get("/api/v1/chains/1/blocks?from=2&to=13", TOKEN)).json()
    assert (body["chain_id"], body["from"], body["to"], body["head"]) == (1, 2, 13, 12)
    assert (body["finalized"], body["gaps"]) == (9, [[4, 5]])
    listed = [(b["number"], b["hash"], b["canonical"], b["client"]) for b in body["blocks"]]
    assert listed[:3] == [
        (2, block(1, 2).hash, True, "a"),
        (3, block(1, 3).hash, True, "a"),
        (3, block(1, 3, fork=2).hash, False, "b"),
    ]
    assert [n for n, *_ in listed] == [2, 3, 3, 6, 7, 8, 9, 9, 10, 10, 11, 12]
    assert all(b["timestamp"] == block(1, b["number"]).timestamp for b in body["blocks"])
    forks = (await client.get("/api/v1/chains/1/forks?from=2&to=13", TOKEN)).json()
    assert body["reorgs"] == forks["reorgs"]
    fork_blocks = [{"number": f["number"], **b} for f in forks["forks"] for b in f["blocks"]]
    assert [b for b in body["blocks"] if b["number"] in (3, 9, 10)] == fork_blocks


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/chains/1/gaps", 400),
        ("/api/v1/chains/1/gaps?from=5", 400),
        ("/api/v1/chains/1/gaps?from=6&to=5", 400),
        ("/api/v1/chains/1/gaps?from=-1&to=5", 400),
        ("/api/v1/chains/1/gaps?from=0x1&to=5", 400),
        ("/api/v1/chains/1/gaps?from=1&to=99999999999999999999", 400),
        ("/api/v1/chains/1/gaps?from=0&to=9223372036854775808", 400),
        (f"/api/v1/chains/1/gaps?from=0&to={MAX_CHAIN_RANGE}", 400),
        (f"/api/v1/chains/1/forks?from=1&to={MAX_CHAIN_RANGE}", 200),
        ("/api/v1/chains/1/forks?from=0&to=5&limit=0", 400),
        ("/api/v1/chains/1/blocks?from=0&to=255", 200),
        ("/api/v1/chains/1/blocks?from=0&to=256", 400),
        ("/api/v1/chains/77/blocks?from=0&to=5", 404),
        ("/api/v1/chains/x/gaps?from=0&to=5", 400),
        ("/api/v1/chains/77/gaps?from=0&to=5", 404),
        ("/api/v1/chains/1/other?from=0&to=5", 404),
        ("/api/v1/chains/1", 404),
        ("/api/v1/chains/1/gaps/more?from=0&to=5", 404),
    ],
)
@pytest_twisted.ensureDeferred
async def test_ranges_are_bounded_and_validated(path: str, status: int) -> None:
    """
    A range needs from and to, non-negative integers of a signed 64-bit column, from not above
    to, at most MAX_CHAIN_RANGE heights; a bad one is a 400, an unknown chain a 404, and the
    answer is JSON either way.
    """
    _, client = await filled()
    reply = await client.get(path, TOKEN)
    assert reply.status == status, reply.text
    reply.json()


@pytest_twisted.ensureDeferred
async def test_finalized_is_the_fleets_not_one_nodes() -> None:
    """
    A chain's finalized number, in /api/v1/chains and /forks, comes from a quorum of the nodes
    that reported in the last minute: one far ahead of two others marks no block above theirs
    finalized; as their reports age out or move, the summary asked again is decided again with
    the new number (never the one it kept); a node that alone reports lately is taken at its
    word.
    """
    clock = Clock()
    clock.advance(T0 + 100)
    store, client = await filled(clock=clock)
    for name, number in [("honest-1", 9), ("honest-2", 9), ("liar", 10**12)]:
        await report(store, clock, name, 1, number)

    async def finalized() -> tuple[int | None, dict[int, bool]]:
        (summary,) = [
            c
            for c in (await client.get("/api/v1/chains", TOKEN)).json()["chains"]
            if c["chain_id"] == 1
        ]
        forks = (await client.get("/api/v1/chains/1/forks?from=1&to=12", TOKEN)).json()
        assert forks["finalized"] == summary["finalized"]
        marked = {
            f["number"]: b["finalized"]
            for f in forks["forks"]
            for b in f["blocks"]
            if b["canonical"]
        }
        return summary["finalized"], marked

    assert await finalized() == (9, {3: True, 9: True, 10: False})
    assert await finalized() == (9, {3: True, 9: True, 10: False})

    clock.advance(FINALIZED_REPORT_AGE + 1)  # honest-2 is no longer heard from
    await report(store, clock, "honest-1", 1, 10)
    await report(store, clock, "liar", 1, 10**12)
    assert await finalized() == (10, {3: True, 9: True, 10: True})

    clock.advance(FINALIZED_REPORT_AGE + 1)
    await report(store, clock, "honest-1", 1, 3)
    await report(store, clock, "liar", 1, 10**12)
    assert await finalized() == (3, {3: True, 9: False, 10: False})

    clock.advance(FINALIZED_REPORT_AGE + 1)
    await report(store, clock, "liar", 1, 10**12)
    assert await finalized() == (10**12, {3: True, 9: True, 10: True})
    assert not clock.getDelayedCalls()


TOP = MAX_BLOCK_INT
"""The largest chain id and height: the wire's block payloads and status frames take no more."""


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/api/v1/chains/{TOP}/gaps?from={TOP - 2}&to={TOP}", 200),
        (f"/api/v1/chains/{TOP}/forks?from={TOP - 2}&to={TOP}", 200),
        (f"/api/v1/clients/low/missing?chain_id={TOP}&from={TOP - 2}&to={TOP}", 200),
        (f"/api/v1/clients/low/missing?chain_id={TOP}", 200),
        (f"/api/v1/chains/{TOP}/blocks?from={TOP - 2}&to={TOP}", 200),
        (f"/api/v1/clients?chain_id={TOP}", 200),
        (f"/api/v1/chains/{TOP + 1}/gaps?from=0&to=5", 400),
        (f"/api/v1/chains/{TOP}/gaps?from={TOP - 2}&to={TOP + 1}", 400),
        (f"/api/v1/chains/{TOP}/gaps?from={TOP + 1}&to={TOP + 1}", 400),
        (f"/api/v1/chains/{TOP + 1}/forks?from=0&to=5", 400),
        (f"/api/v1/chains/{TOP}/forks?from={TOP - 2}&to={TOP + 1}", 400),
        (f"/api/v1/chains/{TOP}/forks?from={TOP + 1}&to={TOP + 1}", 400),
        (f"/api/v1/clients/low/missing?chain_id={TOP + 1}", 400),
        (f"/api/v1/clients/low/missing?chain_id={TOP}&from={TOP + 1}", 400),
        (f"/api/v1/clients/low/missing?chain_id={TOP}&to={TOP + 1}", 400),
        (f"/api/v1/clients/low/missing?chain_id=0{TOP}", 400),
        (f"/api/v1/chains/{TOP + 1}/blocks?from=0&to=5", 400),
        (f"/api/v1/chains/{TOP}/blocks?from={TOP - 2}&to={TOP + 1}", 400),
        (f"/api/v1/clients?chain_id={TOP + 1}", 400),
    ],
)
@pytest_twisted.ensureDeferred
async def test_chain_ids_and_heights_up_to_the_largest_on_every_endpoint(
    path: str, status: int
) -> None:
    """
    Every endpoint that takes a chain id or a height (/chains/<id>/gaps, /forks and /blocks,
    /clients?chain_id= and /clients/<name>/missing) takes them by one rule, up to the largest
    the wire takes
    (2**63 - 1): a chain at that id with blocks at the largest heights is answered, one past
    it (or a 20th digit) is a 400 saying the rule.
    """
    assert TOP == MAX_WIRE_INT == 2**63 - 1
    store, client = await filled()
    await store.store(
        [
            received(block_json(replace(block(TOP, TOP - 1), timestamp=1)), "low", T0 + 1),
            received(block_json(replace(block(TOP, TOP), timestamp=1)), "high", T0 + 2),
        ]
    )
    reply = await client.get(path, TOKEN)
    assert reply.status == status, reply.text
    body = reply.json()
    if status == 400:
        assert body["error"].endswith(f"must be an integer from 0 to {TOP}"), body
    elif "/gaps" in path:
        assert (body["chain_id"], body["head"], body["gaps"]) == (TOP, TOP, [[TOP - 2, TOP - 2]])
    elif "/forks" in path:
        assert (body["chain_id"], body["head"], body["forks"]) == (TOP, TOP, [])
    elif "/blocks" in path:
        assert [(b["number"], b["client"]) for b in body["blocks"]] == [
            (TOP - 1, "low"),
            (TOP, "high"),
        ]
    elif "/missing" in path:
        assert (body["chain_id"], body["missing"]) == (TOP, [TOP])
    else:
        assert [(c["client"], c["chain_id"]) for c in body["clients"]] == [
            ("high", TOP),
            ("low", TOP),
        ]


@pytest_twisted.ensureDeferred
async def test_ten_digit_chain_ids_everywhere() -> None:
    """
    A chain id of 10 digits and more (L2s, L3s, app chains) is taken as the chain's wherever a
    chain id is: /chains lists it, /gaps, /forks and /blocks read it, /clients lists the
    clients on it, and .../missing finds the heights a client of it missed.
    """
    chain_id = 2_000_000_000_123
    store, client = await filled()
    await store.store(
        [
            received(block_json(block(chain_id, 1)), "low", T0 + 1),
            received(block_json(block(chain_id, 2)), "high", T0 + 2),
        ]
    )
    chains = (await client.get("/api/v1/chains", TOKEN)).json()["chains"]
    assert chain_id in [c["chain_id"] for c in chains]
    gaps = (await client.get(f"/api/v1/chains/{chain_id}/gaps?from=0&to=5", TOKEN)).json()
    assert gaps["gaps"] == [[0, 0]]
    forks = (await client.get(f"/api/v1/chains/{chain_id}/forks?from=0&to=5", TOKEN)).json()
    assert (forks["head"], forks["forks"]) == (2, [])
    listed = (await client.get(f"/api/v1/chains/{chain_id}/blocks?from=0&to=5", TOKEN)).json()
    assert [b["number"] for b in listed["blocks"]] == [1, 2]
    on_it = (await client.get(f"/api/v1/clients?chain_id={chain_id}", TOKEN)).json()
    assert [c["client"] for c in on_it["clients"]] == ["high", "low"]
    missing = f"/api/v1/clients/low/missing?chain_id={chain_id}"
    assert (await client.get(missing, TOKEN)).json()["missing"] == [2]


@pytest_twisted.ensureDeferred
async def test_chains_need_the_token() -> None:
    """
    The chains are part of the API: without the stats token, a 401.
    """
    _, client = await filled()
    assert (await client.get("/api/v1/chains")).status == 401
    assert (await client.get("/api/v1/chains/1/gaps?from=0&to=1")).status == 401


@pytest_twisted.ensureDeferred
async def test_reorg_depth_histogram_counts_new_reorgs() -> None:
    """
    /metrics observes each reorg the fleet saw once, by depth and chain: those already stored
    at the first scrape are the baseline, a later one is counted at its next scrape, and once.
    """
    store, client = await filled()
    first = (await client.get("/metrics", TOKEN)).text
    assert "ethtwisted_chain_reorg_depth_blocks_count{" not in first
    # Blocks 11' and 12', on a branch from 10, replaced by 11..13.
    await store.store(
        [
            received(block_json(block(1, 11, fork=3)), "b", T0 + 40),
            received(block_json(block(1, 12, fork=3, parent_fork=3)), "b", T0 + 41),
            received(block_json(block(1, 13)), "a", T0 + 42),
        ]
    )
    for _ in range(2):
        text = (await client.get("/metrics", TOKEN)).text
        assert metric(text, "ethtwisted_chain_reorg_depth_blocks_count", '{chain_id="1"}') == 1
        assert metric(text, "ethtwisted_chain_reorg_depth_blocks_sum", '{chain_id="1"}') == 2
        labels = '{chain_id="1",le="1.0"}'
        assert metric(text, "ethtwisted_chain_reorg_depth_blocks_bucket", labels) == 0
