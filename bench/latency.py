"""
Latency of ethtwisted's layers, against an anvil dev node this script starts on a free loopback
port; prints one JSON object.

  python bench/latency.py [--calls 1000] [--max-seconds 20]

C{node}: the round trip of C{block_number()} through L{ethtwisted.node.web3_node.Web3Node}, per
transport (IPC, WebSocket, HTTP), in milliseconds: median and 99th percentile over C{--calls}
calls, or fewer if C{--max-seconds} runs out first.  C{end_to_end}: see L{end_to_end_latency}
(C{--blocks}, C{--rss-blocks}, C{--e2e-max-seconds}; C{--blocks 0} skips it).

anvil is the test suite's (C{make node} installs it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import Anvil  # noqa: E402 -- after the checkout is importable


@contextmanager
def running_anvil(args: Sequence[str] = ()) -> Iterator[Anvil]:
    """
    An anvil of the test suite's kind (C{tests/services.py}), with C{args} added to its command
    line: a free loopback port for HTTP and WebSocket, and an IPC socket; stopped afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="ethtwisted-bench-") as tmp:
        anvil = Anvil(Path(tmp), args)
        anvil.start_on_free_port()
        try:
            yield anvil
        finally:
            anvil.stop()


def summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """
    Median, 90th and 99th percentile and the largest of C{seconds}, in milliseconds.
    """
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {
        "calls": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(rank(0.90) * 1000, 3),
        "p99_ms": round(rank(0.99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


async def node_latency(
    reactor: Any, anvil: Anvil, calls: int, max_seconds: float
) -> dict[str, dict[str, float | int]]:
    """
    The round trip of C{block_number()} through L{Web3Node}, per transport.
    """
    from ethtwisted.node.web3_node import Web3Node

    results = {}
    for transport, uri in (
        ("ipc", anvil.ipc_path),
        ("ws", anvil.ws_url),
        ("http", anvil.http_url),
    ):
        node = Web3Node(uri, reactor)
        try:
            for _ in range(10):  # connect, and warm up
                await node.block_number()
            times: list[float] = []
            deadline = time.perf_counter() + max_seconds
            while len(times) < calls and time.perf_counter() < deadline:
                start = time.perf_counter()
                await node.block_number()
                times.append(time.perf_counter() - start)
        finally:
            await node.close()
        results[transport] = summary(times)
    return results


RUNS = (
    ("ipc", 1.0, "auto"),
    ("ws", 1.0, "auto"),
    ("http", 1.0, "auto"),
    ("ipc", 0.05, "off"),
)
"""The end-to-end runs: at the defaults over each transport (IPC and WebSocket subscribe,
HTTP polls), and the poll-only path at the shortest interval."""

GOLDEN = (math.sqrt(5) - 1) / 2
"""Steps of the phase sequence: multiples of the golden ratio, modulo 1."""


class Commits:
    """
    When the server committed each block number (its ingest's observer, called after the SQL
    commit), on this process's C{perf_counter} clock; Deferreds waiting for a number.
    """

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        self.in_server: dict[int, float] = {}
        """Seconds from each block's arrival at the server to its commit."""
        self.waiting: dict[int, Any] = {}
        self.stored: list[tuple[Any, float]] = []
        """Every payload of a block the server committed, in the order it committed them, with
        the wall time of its commit."""

    def __call__(self, batch: Sequence[Any], new: int) -> None:
        from ethtwisted.protocol import Block

        now = time.perf_counter()
        wall = time.time()  # the server stamps arrivals with its reactor's clock: wall time
        for received in batch:
            block = received.block
            if isinstance(block, Block):
                self.stored.append((received, wall))
            if isinstance(block, Block) and block.number not in self.at:
                self.at[block.number] = now
                self.in_server[block.number] = max(wall - received.received, 0.0)
                waiting = self.waiting.pop(block.number, None)
                if waiting is not None:
                    waiting.callback(now)

    def wait(self, reactor: Any, number: int, timeout: float) -> Any:
        from twisted.internet.defer import Deferred, succeed

        if number in self.at:
            return succeed(self.at[number])
        d: Deferred[float] = Deferred()
        self.waiting[number] = d
        return d.addTimeout(timeout, reactor)


async def start_server(reactor: Any, db: Path, commits: Commits) -> tuple[Any, int]:
    """
    An eth-server in this process, on a free loopback port, over SQLite.
    """
    from twisted.application.service import MultiService
    from twisted.internet.address import IPv4Address

    from ethtwisted.server.collector import CollectorService
    from ethtwisted.server_tap import Options, makeService

    options = Options()
    options.environ = {}
    options.parseOptions(["--db", f"sqlite:///{db}", "--listen", "tcp:0:interface=127.0.0.1"])
    service = makeService(options, reactor)
    assert isinstance(service, MultiService)
    service.startService()
    collector = service.getServiceNamed("collector")
    assert isinstance(collector, CollectorService)
    await collector.ready
    collector.factory.ingest.commit_listeners.append(commits)
    address = collector.ports[0].getHost()
    assert isinstance(address, IPv4Address)
    return service, address.port


NODE_TRANSPORTS = ("ipc", "ws", "http")


def start_client(
    anvil: Anvil,
    port: int,
    interval: float,
    log: Path,
    transport: str = "ipc",
    subscribe: str = "auto",
) -> subprocess.Popen[bytes]:
    """
    C{twistd -n eth-client} as its own process, following anvil over C{transport}.
    """
    node = {"ipc": anvil.ipc_path, "ws": anvil.ws_url, "http": anvil.http_url}[transport]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ETH_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", f"--logfile={log}", "eth-client",
         "--node", node, "--server", f"tcp:host=127.0.0.1:port={port}",
         "--interval", str(interval), "--subscribe", subscribe, "--name", "bench"],
        env=environ,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def stop_client(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def warm_up(reactor: Any, anvil: Anvil, commits: Commits) -> int:
    """
    Wait until a client just started delivers: a block mined now is committed once it polls.
    """
    head = anvil.mine()
    await commits.wait(reactor, head, 60)
    return head


async def end_to_end_latency(
    reactor: Any,
    anvil: Anvil,
    blocks: int,
    max_seconds: float,
    rss_blocks: int = 10_000,
    runs: Sequence[tuple[str, float, str]] = RUNS,
) -> dict[str, Any] | None:
    """
    Through a real eth-client process and an eth-server in this process over SQLite:

      - C{<transport>_<subscribe>_<interval>}, one per entry of C{runs} (transport,
        C{--interval}, C{--subscribe}): the delay from C{evm_mine} returning to the block's
        row committed in SQL, in milliseconds, median, 90th and 99th percentile over C{blocks}
        blocks (fewer if C{max_seconds} runs out); and, apart, the part of it spent in the
        server (C{server_*}: from the payload's arrival to its group's commit), so that the
        rest is the node telling the client and the client sending.  Blocks are mined one at a
        time, each after a pause within one interval, so that they fall anywhere in the
        client's polling cycle: the pauses are the fractions of a low-discrepancy sequence,
        which covers the cycle evenly, so that 200 blocks estimate the median far closer than
        random pauses would (their median would wander by some interval/30);
      - C{client_rss}: the client's resident memory (and its peak) once it has delivered
        C{rss_blocks} blocks, mined in jumps of 100 (each within C{--max-backfill}).

    L{None} when C{blocks} is 0.
    """
    from twisted.internet.task import deferLater

    if blocks <= 0:
        return None
    result: dict[str, Any] = {"db": "sqlite", "load_average": list(os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="ethtwisted-e2e-") as tmp:
        commits = Commits()
        server, port = await start_server(reactor, Path(tmp) / "e2e.sqlite", commits)
        try:
            for transport, interval, subscribe in runs:
                name = f"{transport}_{subscribe}_{interval:g}"
                process = start_client(anvil, port, interval, Path(tmp) / f"client-{name}.log",
                                       transport, subscribe)  # fmt: skip
                try:
                    await warm_up(reactor, anvil, commits)
                    delays: list[float] = []
                    in_server: list[float] = []
                    deadline = time.perf_counter() + max_seconds
                    while len(delays) < blocks and time.perf_counter() < deadline:
                        phase = (len(delays) * GOLDEN) % 1.0
                        await deferLater(reactor, phase * interval)
                        number = anvil.block_number() + 1
                        anvil.rpc("evm_mine")
                        mined = time.perf_counter()
                        committed = await commits.wait(reactor, number, interval + 30)
                        delays.append(committed - mined)
                        in_server.append(commits.in_server[number])
                finally:
                    stop_client(process)
                result[name] = {
                    "blocks": len(delays),
                    **{k: v for k, v in summary(delays).items() if k != "calls"},
                    **{f"server_{k}": v for k, v in summary(in_server).items() if k != "calls"},
                    "load_average_after": list(os.getloadavg()),
                }
            process = start_client(anvil, port, 0.05, Path(tmp) / "client-rss.log", "ipc", "off")
            try:
                first = await warm_up(reactor, anvil, commits)
                at_start = rss_mb(process.pid)
                while anvil.block_number() - first < rss_blocks:
                    head = anvil.mine(min(100, rss_blocks - (anvil.block_number() - first)))
                    await commits.wait(reactor, head, 60)
                delivered = anvil.block_number() - first
                missing = [n for n in range(first, first + delivered + 1) if n not in commits.at]
                result["client_rss"] = {
                    "blocks": delivered,
                    "missing": len(missing),
                    "rss_mb_at_start": at_start,
                    "rss_mb": rss_mb(process.pid),
                    "peak_rss_mb": rss_mb(process.pid, "VmHWM"),
                }
            finally:
                stop_client(process)
        finally:
            await server.stopService()
    return result


async def run(reactor: Any, options: argparse.Namespace) -> None:
    with running_anvil() as anvil:
        result = {
            "node": await node_latency(reactor, anvil, options.calls, options.max_seconds),
            "end_to_end": await end_to_end_latency(
                reactor, anvil, options.blocks, options.e2e_max_seconds, options.rss_blocks
            ),
        }
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per measurement")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="cap per measurement")
    parser.add_argument("--blocks", type=int, default=200, help="blocks per end-to-end interval")
    parser.add_argument(
        "--e2e-max-seconds", type=float, default=600.0, help="cap per end-to-end interval"
    )
    parser.add_argument("--rss-blocks", type=int, default=10_000, help="blocks before RSS")
    options = parser.parse_args(argv)

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
