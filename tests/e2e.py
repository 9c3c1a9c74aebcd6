"""
End to end against anvil: the node's chain, a reorganisation of it, eth-client started in this
process (and its live subscription), what a server's SQLite file holds, and the reasons the
server logged when it dropped a connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from ethtwisted import client_tap
from ethtwisted.client import EthClient
from ethtwisted.client.subscriber import Subscriber
from tests.helpers import TIMEOUT, Committed, Server, wait_for
from tests.services import Anvil


def uri_of(anvil: Anvil, transport: str) -> str:
    return {"ipc": anvil.ipc_path, "ws": anvil.ws_url, "http": anvil.http_url}[transport]


def node_hashes(anvil: Anvil) -> dict[int, str]:
    """
    The node's canonical chain, block number to hash, from genesis to its head.
    """
    head = anvil.block_number()
    return {n: anvil.rpc("eth_getBlockByNumber", hex(n), False)["hash"] for n in range(head + 1)}


def stored_blocks(path: Path) -> list[tuple[int, str]]:
    """
    The (number, hash) of every block payload in the older table, one per row.
    """
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT payload FROM ethereum_data").fetchall()
    blocks = [json.loads(payload) for (payload,) in rows]
    return sorted((b["number"], b["hash"]) for b in blocks)


def start_client(node: str, port: int, *args: str) -> EthClient:
    options = client_tap.Options()
    options.environ = {}
    options.parseOptions(
        ["--node", node, "--server", f"tcp:host=127.0.0.1:port={port}", "--interval", "0.05",
         "--name", "e2e", *args]
    )  # fmt: skip
    service = client_tap.makeService(options, reactor)
    assert isinstance(service, EthClient)
    service.startService()
    return service


async def sleep(seconds: float) -> None:
    """Let C{seconds} pass (pacing what the test does, never waiting for an event)."""
    await deferLater(reactor, seconds)


def sqlite_file(server: Server) -> Path:
    """The SQLite file named by the C{--db} of C{server}."""
    return Path(server.args[server.args.index("--db") + 1].removeprefix("sqlite:///"))


def assert_chain_stored_once(server: Server, anvil: Anvil) -> None:
    """The SQLite file of C{server} holds the node's chain, each block once."""
    expected = sorted(node_hashes(anvil).items())
    assert stored_blocks(sqlite_file(server)) == expected


def sqlite_rows(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT hash, payload FROM ethereum_data"))


def drops(events: Sequence[dict[str, Any]]) -> list[str]:
    return [e["reason"] for e in events if "dropping connection" in e.get("log_format", "")]


def subscriber_of(client: EthClient) -> Subscriber:
    subscriber = client.poller.subscriber
    assert subscriber is not None, "the client does not subscribe"
    return subscriber


async def subscribed(client: EthClient) -> None:
    await wait_for(lambda: subscriber_of(client).active, 10, what="a live subscription")


async def reorganised(
    anvil: Anvil, committed: Committed, base: int, old: int, new: int, timeout: float = TIMEOUT
) -> tuple[dict[int, str], dict[int, str]]:
    """
    Mine C{base} blocks, take a snapshot, mine C{old} more and wait until they are committed,
    then drop those (C{evm_revert}) for C{new} others and wait for them: the node's chain
    before and after the reorganisation, block number to hash.
    """
    anvil.mine(base)
    snapshot = anvil.rpc("evm_snapshot")
    anvil.mine(old)
    before = node_hashes(anvil)
    await committed.wait_for(before.values(), timeout)
    anvil.revert(snapshot)
    anvil.mine(new)
    after = node_hashes(anvil)
    await committed.wait_for(after.values(), timeout)
    return before, after
