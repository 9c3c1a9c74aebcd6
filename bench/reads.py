"""
How long the stats API's heavier reads take over a store of many blocks; prints one JSON object.

  python bench/reads.py [--store mysql|sqlite] [--blocks 100000] [--clients 50] [--repeat 5]
                        [--buffer-pool-mb 32]

Fills a fresh store (a private MariaDB server it starts, or an SQLite file) through
L{SQLStore.store}: one chain of C{--blocks} heights with a short orphaned branch every 997
heights and three missing heights every 10,000, each block reported by one of C{--clients}
clients and the last 1,000 by every client (their sightings, C{propagation}'s input).  Then it
serves the stats site on a loopback port, as eth-server does, and times over HTTP, C{--repeat}
times each (after one request not timed): C{/api/v1/chains}, C{/api/v1/chains/1/gaps} over the
last 100,000 heights, C{/api/v1/clients} and a C{/metrics} scrape; then C{/api/v1/chains} and
C{/metrics} again, each time after a new head was stored (C{..._after_a_block}: the chains
must be decided again).  Times are in milliseconds, median and minimum; every result carries
the load average when it ended (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import epollreactor  # noqa: E402

epollreactor.install()

import treq  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.defer import ensureDeferred, maybeDeferred  # noqa: E402
from twisted.internet.endpoints import TCP4ServerEndpoint  # noqa: E402
from twisted.web.server import Site  # noqa: E402

from ethtwisted.interfaces import MAX_CHAIN_RANGE  # noqa: E402
from ethtwisted.protocol import Block, block_json, parse_block, payload_hash  # noqa: E402
from ethtwisted.records import Received  # noqa: E402
from ethtwisted.storage.sql_pool import DatabaseURL, parse_db_url  # noqa: E402
from ethtwisted.storage.sql_store import SQLStore  # noqa: E402
from ethtwisted.web.reads import Reads  # noqa: E402
from ethtwisted.web.site import StatsRoot  # noqa: E402
from tests.services import MariaDB  # noqa: E402

TOKEN = secrets.token_urlsafe(16)
T0 = 1_700_000_000.0
BATCH = 2000
SEEN_BY_ALL = 1000


def chain_block(number: int, branch: int = 0, parent_branch: int = 0) -> Block:
    return Block(
        chain_id=1,
        number=number,
        hash=f"0x{number:056x}{branch:08x}",
        parent_hash=f"0x{number - 1:056x}{parent_branch:08x}",
        timestamp=1_600_000_000 + number,
    )


def blocks(heights: int) -> Iterator[tuple[Block, float]]:
    """
    The chain's blocks with the time each was first seen: heights 1 to C{heights}, three
    missing every 10,000; every 997 heights, a branch of 1 to 3 blocks seen before the blocks
    that replaced it.
    """
    for n in range(1, heights + 1):
        if n % 10_000 in (1, 2, 3) and n < heights - 10:
            continue
        if n % 997 == 0:
            for depth in range(n % 3 + 1):
                yield chain_block(n + depth, 1, 1 if depth else 0), T0 + 12 * (n + depth) - 1
        yield chain_block(n), T0 + 12 * n


def received(b: Block, client: str, at: float) -> Received:
    payload = block_json(b)
    return Received(payload_hash(payload), payload.decode(), "127.0.0.1", client, at,
                    parse_block(payload), at, "subscription")  # fmt: skip


async def fill(store: SQLStore, heights: int, clients: int) -> int:
    names = [f"node-{i:02d}" for i in range(clients)]
    batch: list[Received] = []
    stored = 0
    for b, at in blocks(heights):
        batch.append(received(b, names[b.number % clients], at))
        if b.number > heights - SEEN_BY_ALL:
            batch += [received(b, name, at + 0.01 * i) for i, name in enumerate(names)]
        if len(batch) >= BATCH:
            stored += await store.store(batch)
            batch = []
    if batch:
        stored += await store.store(batch)
    return stored


async def timed(
    url: str, repeat: int, before: Callable[[], Awaitable[object]] | None = None
) -> dict[str, float]:
    async def get() -> float:
        if before is not None:
            await before()
        start = time.perf_counter()
        headers: dict[bytes | str, bytes | str] = {"Authorization": f"Bearer {TOKEN}"}
        reply = await treq.get(url, headers=headers)
        await reply.content()
        if reply.code != 200:
            raise RuntimeError(f"{url}: HTTP {reply.code}")
        return (time.perf_counter() - start) * 1000

    await get()  # the first: caches warm, the metrics' baseline taken
    times = [await get() for _ in range(repeat)]
    return {"median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1)}


async def run(args: argparse.Namespace, url: DatabaseURL) -> dict[str, Any]:
    store = SQLStore(url, reactor)
    await store.start()
    start = time.monotonic()
    stored = await fill(store, args.blocks, args.clients)
    result: dict[str, Any] = {
        "store": args.store,
        "blocks": stored,
        "clients": args.clients,
        "fill_seconds": round(time.monotonic() - start, 1),
    }
    if args.store == "mysql":
        result["buffer_pool_mb"] = args.buffer_pool_mb
    reads = Reads(reactor, store, store)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(Site(StatsRoot(reads, TOKEN)))
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    base = f"http://127.0.0.1:{address.port}"
    high = args.blocks
    low = max(high - MAX_CHAIN_RANGE + 1, 0)
    paths = {
        "api_chains": "/api/v1/chains",
        "api_gaps_100k": f"/api/v1/chains/1/gaps?from={low}&to={high}",
        "api_clients": "/api/v1/clients",
        "metrics": "/metrics",
    }
    heights = count(high + 1)

    async def new_head() -> None:
        n = next(heights)
        await store.store([received(chain_block(n), "node-00", T0 + 12 * n)])

    try:
        for name, path in paths.items():
            result[name] = await timed(base + path, args.repeat)
        for name, path in [("api_chains", paths["api_chains"]), ("metrics", "/metrics")]:
            result[f"{name}_after_a_block"] = await timed(base + path, args.repeat, new_head)
    finally:
        await maybeDeferred(port.stopListening)
        await store.close()
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return result


@contextmanager
def database(kind: str, buffer_pool_mb: int) -> Iterator[DatabaseURL]:
    with tempfile.TemporaryDirectory(prefix="ethtwisted-bench-") as tmp:
        if kind == "sqlite":
            yield parse_db_url(f"sqlite:///{tmp}/eth.sqlite")
            return
        server = MariaDB(Path(tmp))
        server.setup()
        try:
            # The test suite's server keeps a small buffer pool; InnoDB resizes it while running.
            size = buffer_pool_mb * 2**20
            server.query("SET GLOBAL innodb_buffer_pool_size = %s", (size,))
            yield parse_db_url(server.url).with_password(server.password)
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["mysql", "sqlite"], default="mysql")
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--buffer-pool-mb",
        type=int,
        default=32,
        help="MariaDB's InnoDB buffer pool (default: the test suite's 32 MB)",
    )
    args = parser.parse_args()
    outcome: list[Any] = []
    with database(args.store, args.buffer_pool_mb) as url:
        d = ensureDeferred(run(args, url))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())
        reactor.run()
    if not outcome or not isinstance(outcome[0], dict):
        if outcome:
            outcome[0].raiseException()
        raise SystemExit("the benchmark did not finish")
    print(json.dumps(outcome[0]))


if __name__ == "__main__":
    main()
