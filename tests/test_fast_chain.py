"""
A fast chain: anvil mining four blocks a second by itself (C{--block-time 0.25}, Arbitrum's
pace), followed by the whole client over IPC into the real eth-server on SQLite.  How fast it
keeps up is measured by C{bench/fast_chain.py}; this checks what it keeps.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest_twisted

from ethtwisted.protocol import Block
from ethtwisted.records import Received
from tests.e2e import sqlite_file, start_client, stored_blocks, subscribed
from tests.helpers import Committed, Server, wait_for
from tests.services import AnvilFactory

BLOCK_TIME = 0.25
BLOCKS = 16
"""Blocks followed after the subscription is live: four seconds of the chain."""


@pytest_twisted.ensureDeferred
async def test_every_block_of_a_fast_chain_is_stored_once_in_order(
    anvil_factory: AnvilFactory, server: tuple[Server, Committed]
) -> None:
    """
    With a block every 0.25 s and the client at its default interval (its subscription
    delivering, its polls the watchdog), the server receives every block from the client's
    first on exactly once and in order, and SQL holds each with the node's hash.
    """
    srv, committed = server
    arrived: list[int] = []

    def record(batch: Sequence[Received], new: int) -> None:
        arrived.extend(r.block.number for r in batch if isinstance(r.block, Block))

    srv.collector.factory.ingest.commit_listeners.append(record)
    anvil = anvil_factory(block_time=BLOCK_TIME)
    client = start_client(anvil.ipc_path, srv.port, "--interval", "1")
    try:
        await subscribed(client)
        target = anvil.block_number() + BLOCKS
        await wait_for(lambda: bool(arrived) and arrived[-1] >= target, what=lambda: f"{arrived}")
        anvil.rpc("evm_setIntervalMining", 0)  # the chain stops where it is, to compare
        head = anvil.block_number()
        chain = {n: anvil.rpc("eth_getBlockByNumber", hex(n), False)["hash"]
                 for n in range(arrived[0], head + 1)}  # fmt: skip
        await committed.wait_for([chain[head]])  # sent in order: the others came before
    finally:
        await client.stopService()
    assert arrived == list(range(arrived[0], head + 1))
    assert stored_blocks(sqlite_file(srv)) == sorted(chain.items())
