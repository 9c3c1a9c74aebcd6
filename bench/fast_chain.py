"""
Following a fast chain: anvil mining a block every C{--block-time} seconds by itself (0.25 s,
Arbitrum's pace), followed by a real C{twistd eth-client} process over IPC, then over
WebSocket, delivering to an eth-server in this process over SQLite; prints one JSON object.

  python bench/fast_chain.py [--block-time 0.25] [--seconds 60] [--transports ipc,ws]

The moment the node pushed a block is taken from a bare reader of its own new-heads
subscription over IPC (a thread of this process, a blocking socket, no web3), which anvil
notifies when it notifies the client.  For each transport, over the C{--seconds} after the
client's first block learnt by subscription, in milliseconds (median, 90th and 99th percentile,
largest):

  - C{push}: from the bare reader receiving a block's header to the client having it: its
    sighting, its clock when web3 handed it the header, in whole milliseconds.  Both are the
    same machine's clock, so the server's correction of sightings for the client's clock (the
    offset it estimates from pings, C{clock_offset_ms}: the estimate's error) is undone;
  - C{to_server}: from the bare reader to the payload's arrival at the server;
  - C{to_sql}: from the bare reader to the commit of the payload's row in SQL;
  - C{in_server}: from the arrival to the commit.

C{blocks} says how many blocks the node made in that time, whether each was stored in SQL once
with the node's hash and in order of height (the rows' ids), whether the server received them
in order, each once, and how the client learnt of them.  C{cpu}: user+system CPU seconds per
wall-clock second over that time, of the client's process (from C{/proc}) and of this process
(the server, with the bare reader); the load averages are the machine's, before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency import (  # noqa: E402 -- after the checkout is importable
    Commits,
    running_anvil,
    start_client,
    start_server,
    stop_client,
    summary,
)
from tests.services import Anvil  # noqa: E402


class Pushes:
    """
    A bare reader of the node's new heads over IPC, in a thread: the wall time each header's
    notification arrived, by block number, with its hash.
    """

    def __init__(self, ipc_path: str) -> None:
        self.at: dict[int, tuple[str, float]] = {}
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(ipc_path)
        subscribe = {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
        self._sock.sendall(json.dumps(subscribe).encode())
        self._thread = threading.Thread(target=self._read, name="pushes", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffered = b""
        while chunk := self._sock.recv(1 << 20):
            now = time.time()
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")  # anvil ends each message with a newline
            for line in lines:
                message = json.loads(line)
                header = message.get("params", {}).get("result")
                if isinstance(header, dict):
                    self.at[int(header["number"], 16)] = (header["hash"], now)

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._sock.close()


def cpu_seconds(pid: int) -> float:
    """
    User+system CPU seconds process C{pid} has used, from C{/proc/PID/stat}.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stored_rows(db: Path) -> list[tuple[int, str]]:
    """
    The (number, hash) of each row of the SQLite file's older table, in the order of their ids.
    """
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT payload FROM ethereum_data ORDER BY id").fetchall()
    return [(b["number"], b["hash"]) for b in (json.loads(p) for (p,) in rows)]


def ms(values: Sequence[float]) -> dict[str, float | int] | None:
    return {k: v for k, v in summary(values).items() if k != "calls"} if values else None


async def follow(
    reactor: Any, anvil: Anvil, pushes: Pushes, transport: str, seconds: float, tmp: Path
) -> dict[str, Any]:
    """
    One transport's run (see the module's docstring).
    """
    from twisted.internet.task import deferLater

    commits = Commits()
    db = tmp / f"{transport}.sqlite"
    server, port = await start_server(reactor, db, commits)
    collector = server.getServiceNamed("collector")
    offset_at: dict[str, float] = {}

    def offsets_used(batch: Sequence[Any], new: int) -> None:
        for c in collector.factory.connections:
            for r in batch:
                # One connection: the client's.
                offset_at[r.sha256] = c.sightings.clock.offset

    collector.factory.ingest.commit_listeners.append(offsets_used)
    try:
        process = start_client(anvil, port, 1.0, tmp / f"client-{transport}.log", transport)
        try:
            deadline = time.monotonic() + 60
            while not any(r.via == "subscription" for r, _ in commits.stored):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"no block by subscription over {transport}")
                await deferLater(reactor, 0.05)
            load_before = os.getloadavg()
            start, client_start, own_start = (
                time.time(),
                cpu_seconds(process.pid),
                own_cpu_seconds(),
            )
            await deferLater(reactor, seconds)
            end, client_end, own_end = time.time(), cpu_seconds(process.pid), own_cpu_seconds()
            load_after = os.getloadavg()
            offsets = [
                c.sightings.clock.offset
                for c in collector.factory.connections
                if c.sightings.clock.known
            ]
            made = sorted(n for n, (_, at) in pushes.at.items() if start <= at < end)
            # Whatever was made in the window reaches SQL within seconds, or the check says so.
            await commits.wait(reactor, made[-1], 30).addErrback(lambda _: None)
        finally:
            stop_client(process)
    finally:
        await server.stopService()
    window = set(made)
    received = [(r, committed) for r, committed in commits.stored if r.block.number in window]
    arrived = [r.block.number for r, _ in received]
    stored = stored_rows(db)
    rows = Counter(stored)
    node = {n: pushes.at[n][0] for n in made}
    at_height: Counter[int] = Counter()
    for (number, _), count in rows.items():
        at_height[number] += count
    once = [n for n in made if rows[(n, node[n])] == 1 == at_height[n]]
    pushed_at = {n: pushes.at[n][1] for n in made}
    first: dict[int, tuple[Any, float]] = {}
    for r, committed in received:
        first.setdefault(r.block.number, (r, committed))
    return {
        "blocks": {
            "made": len(made),
            "per_second": round(len(made) / (end - start), 2),
            "consecutive": made == list(range(made[0], made[-1] + 1)),
            "stored_once": len(once),
            "not_stored_once": [n for n in made if n not in once][:10],
            "received_in_order_once": arrived == made,
            "stored_in_order": [n for n, _ in stored if n in window] == made,
            "received": len(arrived),
            "via": dict(Counter(r.via for r, _ in received)),
        },
        "push": ms([r.seen + offset_at[r.sha256] - pushed_at[n] for n, (r, _) in first.items()]),
        "to_server": ms([r.received - pushed_at[n] for n, (r, _) in first.items()]),
        "to_sql": ms([c - pushed_at[n] for n, (_, c) in first.items()]),
        "in_server": ms([c - r.received for r, c in first.values()]),
        "cpu": {
            "client": round((client_end - client_start) / (end - start), 4),
            "server": round((own_end - own_start) / (end - start), 4),
        },
        "clock_offset_ms": [round(offset * 1000, 3) for offset in offsets],
        "seconds": round(end - start, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }


async def run(reactor: Any, options: argparse.Namespace) -> None:
    result: dict[str, Any] = {"block_time": options.block_time, "db": "sqlite"}
    with (
        running_anvil(["--block-time", f"{options.block_time:g}"]) as anvil,
        tempfile.TemporaryDirectory(prefix="ethtwisted-fast-") as tmp,
    ):
        pushes = Pushes(anvil.ipc_path)
        try:
            for transport in options.transports.split(","):
                result[transport] = await follow(
                    reactor, anvil, pushes, transport, options.seconds, Path(tmp)
                )
        finally:
            pushes.close()
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-time", type=float, default=0.25, help="anvil's --block-time")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured, per transport")
    parser.add_argument("--transports", default="ipc,ws", help="comma-separated: ipc, ws")
    options = parser.parse_args(argv)

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
