"""
Latency of ethtwisted's layers, against an anvil dev node this script starts on a free loopback
port; prints one JSON object.

  python bench/latency.py [--calls 1000] [--max-seconds 20]

C{node}: the round trip of C{block_number()} through L{ethtwisted.node.Web3Node}, per transport
(IPC, WebSocket, HTTP), in milliseconds: median and 99th percentile over C{--calls} calls, or
fewer if C{--max-seconds} runs out first.  C{end_to_end}: see L{end_to_end_latency}.

anvil is the test suite's (C{make node} installs it).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Anvil  # noqa: E402 -- after the checkout is importable


@contextmanager
def running_anvil() -> Iterator[Anvil]:
    """
    An anvil of the test suite's kind (C{tests/conftest.py}): a free loopback port for HTTP and
    WebSocket, and an IPC socket; stopped afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="ethtwisted-bench-") as tmp:
        anvil = Anvil(Path(tmp))
        anvil.start_on_free_port()
        try:
            yield anvil
        finally:
            anvil.stop()


def summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """
    Median and 99th percentile of C{seconds}, in milliseconds.
    """
    ordered = sorted(seconds)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {
        "calls": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
    }


async def node_latency(
    reactor: Any, anvil: Anvil, calls: int, max_seconds: float
) -> dict[str, dict[str, float | int]]:
    """
    The round trip of C{block_number()} through L{Web3Node}, per transport.
    """
    from ethtwisted.node import Web3Node

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
            times = []
            deadline = time.perf_counter() + max_seconds
            while len(times) < calls and time.perf_counter() < deadline:
                start = time.perf_counter()
                await node.block_number()
                times.append(time.perf_counter() - start)
        finally:
            await node.close()
        results[transport] = summary(times)
    return results


async def end_to_end_latency(
    reactor: Any, anvil: Anvil, calls: int, max_seconds: float
) -> dict[str, Any] | None:
    """
    From C{evm_mine} on the node to the block's row committed in SQL, through eth-client and
    eth-server: not measured yet (L{None}).
    """
    return None


async def run(reactor: Any, options: argparse.Namespace) -> None:
    with running_anvil() as anvil:
        result = {
            "node": await node_latency(reactor, anvil, options.calls, options.max_seconds),
            "end_to_end": await end_to_end_latency(
                reactor, anvil, options.calls, options.max_seconds
            ),
        }
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per measurement")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="cap per measurement")
    options = parser.parse_args(argv)

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
