"""
How long one decision of the fleet view takes (the transaction every eth-server runs once a
second, ethtwisted.storage.fleet), for a fleet of C clients.

Fills a fresh store (a private MariaDB it starts, or SQLite) with C clients on one chain of
--blocks blocks, every client reporting every block as a real client does (one payload per
block, one sighting per client), a tenth of them left behind, --fork of them (a tenth)
reporting blocks of their own at the last 10 heights, then times --decisions decisions, each
by the server that made the one before (from what changed, nothing here), or with --full each
by a server of its own (reading everything, as after a takeover), and prints one JSON line:

    python bench/fleet.py --store mysql --clients 50
    python bench/fleet.py --store mysql --clients 1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import reactor, task  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402

from ethtwisted.protocol import Block, block_json, payload_hash  # noqa: E402
from ethtwisted.records import Received  # noqa: E402
from ethtwisted.states import STATES, Thresholds  # noqa: E402
from ethtwisted.storage.fleet import SQLFleet  # noqa: E402
from ethtwisted.storage.sql_pool import DatabaseURL, parse_db_url  # noqa: E402
from ethtwisted.storage.sql_store import SQLStore  # noqa: E402
from tests.services import MariaDB  # noqa: E402

T0 = 1_700_000_000.0


def report(client: str, number: int, branch: str, at: float) -> Received:
    def hash_of(n: int) -> str:
        return "0x" + f"{branch}{n:x}".rjust(64, "0")

    block = Block(1, number, hash_of(number), hash_of(number - 1), int(at))
    payload = block_json(block)
    return Received(payload_hash(payload), payload.decode(), "127.0.0.1", client, at, block,
                    seen=at, via="subscription")  # fmt: skip


async def fill(store: SQLStore, clients: int, blocks: int, fork: float) -> list[str]:
    names = [f"node-{i:05d}" for i in range(clients)]
    for i, name in enumerate(names):
        head = blocks - 20 if i % 10 == 1 else blocks
        batch = [report(name, n, "a", T0 + n) for n in range(max(0, head - 200), head)]
        if int((i + 1) * fork) > int(i * fork):
            batch += [report(name, n, "f", T0 + n + 0.5) for n in range(head - 10, head)]
        for start in range(0, len(batch), 1000):
            await store.store(batch[start : start + 1000])
    return names


async def run(args: argparse.Namespace, url: DatabaseURL) -> None:
    store = SQLStore(url, reactor)
    await store.start()
    names = await fill(store, args.clients, args.blocks, args.fork)
    now = T0 + args.blocks + 100
    heard = {name: now for name in names}
    thresholds = Thresholds()
    await store.fleet.decide("bench", now, heard, {}, thresholds)  # the states enter once
    times = []
    for n in range(args.decisions):
        # With --full, each decision by a server of its own: it reads everything.
        fleet = SQLFleet(store.pool, url.dialect) if args.full else store.fleet
        started = time.perf_counter()
        await fleet.decide("bench", now + n, heard, {}, thresholds)
        times.append((time.perf_counter() - started) * 1000)
    states = await store.fleet.states()
    await store.close()
    counts = {s: sum(s in states[c] for c in states) for s in STATES}
    times.sort()
    result = {
        "store": args.store,
        "clients": args.clients,
        "blocks": args.blocks,
        "decisions": args.decisions,
        "fork": args.fork,
        "full": args.full,
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
        "states": counts,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "mysql"], default="mysql")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=50)
    parser.add_argument("--fork", type=float, default=0.1, help="the fraction on a fork")
    parser.add_argument(
        "--full", action="store_true", help="every decision reads everything, as a new server's"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ethtwisted-bench-") as tmp:
        work = Path(tmp)
        mariadb = None
        if args.store == "mysql":
            mariadb = MariaDB(work / "mariadb")
            mariadb.setup()
            url = parse_db_url(mariadb.url).with_password(mariadb.password)
        else:
            url = parse_db_url(f"sqlite:///{work / 'fleet.sqlite'}")
        try:
            task.react(lambda _: ensureDeferred(run(args, url)))
        finally:
            if mariadb is not None:
                mariadb.stop()


if __name__ == "__main__":
    main()
