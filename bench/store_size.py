"""
What a sighting and a block cost on disk in MariaDB; prints one JSON object.

  python bench/store_size.py [--blocks 2000] [--clients 500] [--buffer-pool-mb 256]

Fills a private MariaDB server through L{SQLStore.store}, as eth-server does: one chain of
C{--blocks} heights over today and tomorrow (UTC: a new store's first days), each block reported
by every one of C{--clients} clients within about a second (one commit per 100 reports, in the
order they would arrive), with sighting times.  Then ANALYZE TABLE, and the data and index bytes
of C{eth_sightings} and C{eth_blocks} from information_schema, per row; then one prune with
tomorrow's start as the cut, timed (today's sightings go: on MariaDB a partition dropped).
Every result carries the load average when it ended.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import reactor, threads  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402

from ethtwisted.protocol import Block, block_json, parse_block, payload_hash  # noqa: E402
from ethtwisted.records import Received  # noqa: E402
from ethtwisted.storage.sql_pool import parse_db_url  # noqa: E402
from ethtwisted.storage.sql_store import SQLStore  # noqa: E402
from tests.services import MariaDB  # noqa: E402

DAY = 86400
BATCH = 100


def reports(blocks: int, clients: int, start: float) -> list[Received]:
    """Every client's report of every block from C{start} over two days, as they arrive."""
    out, block_time = [], 2 * DAY / blocks
    for n in range(blocks):
        b = Block(1, n, f"0x{n:064x}", f"0x{max(n - 1, 0):064x}", 1_700_000_000 + n)
        payload = block_json(b)
        sha256 = payload_hash(payload)
        text = payload.decode()
        for c in range(clients):
            at = start + n * block_time + c / clients
            out.append(Received(sha256, text, "127.0.0.1", f"client-{c:05d}", at + 0.05,
                                parse_block(payload), at, "subscription"))  # fmt: skip
    return out


def sizes(server: MariaDB) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for table in ("eth_sightings", "eth_blocks"):
        server.query(f"ANALYZE TABLE {table}", database=server.database)
        count = f"SELECT COUNT(*) FROM {table}"  # noqa: S608
        ((rows,),) = server.query(count, database=server.database)
        ((data, index),) = server.query(
            "SELECT SUM(data_length), SUM(index_length) FROM information_schema.tables"
            " WHERE table_schema = %s AND table_name = %s",
            (server.database, table),
        )
        name = table.removeprefix("eth_")
        result[f"{name}_rows"] = int(rows)
        result[f"{name}_data_bytes"] = int(data)
        result[f"{name}_index_bytes"] = int(index)
        result[f"bytes_per_{name.rstrip('s')}"] = round((int(data) + int(index)) / max(rows, 1))
    return result


async def fill(store: SQLStore, batch: list[Received]) -> float:
    start = time.monotonic()
    for i in range(0, len(batch), BATCH):
        await store.store(batch[i : i + BATCH])
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--buffer-pool-mb", type=int, default=256)
    args = parser.parse_args()
    outcome: dict[str, Any] = {"blocks": args.blocks, "clients": args.clients,
                               "buffer_pool_mb": args.buffer_pool_mb}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ethtwisted-bench-") as tmp:
        server = MariaDB(Path(tmp))
        server.setup()
        try:
            server.query("SET GLOBAL innodb_buffer_pool_size = %s", (args.buffer_pool_mb << 20,))
            url = parse_db_url(server.url).with_password(server.password)

            async def go() -> None:
                store = SQLStore(url, reactor)
                await store.start()
                today = reactor.seconds() // DAY * DAY
                try:
                    batch = reports(args.blocks, args.clients, today)
                    seconds = await fill(store, batch)
                    outcome["fill_seconds"] = round(seconds, 1)
                    outcome.update(await threads.deferToThread(sizes, server))
                    start = time.monotonic()
                    pruned = await store.ledger.prune_sightings(today + DAY, 500)
                    outcome["prune_seconds"] = round(time.monotonic() - start, 3)
                    outcome["pruned_about"] = pruned
                finally:
                    await store.close()

            d = ensureDeferred(go())
            d.addErrback(lambda f: outcome.update(error=str(f.value)))
            d.addBoth(lambda _: reactor.stop())
            reactor.run()
        finally:
            server.stop()
    outcome["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()
