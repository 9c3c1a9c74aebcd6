"""
Clients' reports of a chain for the fleet view: L{received} (block C{number} of a branch, as
C{client} saw it), the thresholds the tests decide with, and L{started} stores.
"""

from __future__ import annotations

from collections.abc import Callable

from ethtwisted.protocol import Block, block_json, payload_hash
from ethtwisted.records import Received
from ethtwisted.states import Thresholds
from ethtwisted.storage.sql_store import SQLStore

T = Thresholds(behind_blocks=3, behind_seconds=30, stall_seconds=60, silent_seconds=60,
               fork_seconds=30)  # fmt: skip


CHAIN = 1


def block_hash(number: int, branch: str = "a") -> str:
    return "0x" + f"{branch}{number:x}".rjust(64, "0")


def received(client: str, number: int, at: float, branch: str = "a") -> Received:
    """C{client}'s report of block C{number} of C{branch}, arriving (and seen) at C{at}."""
    parent = block_hash(number - 1, branch) if number else "0x" + "0" * 64
    block = Block(CHAIN, number, block_hash(number, branch), parent, int(at))
    payload = block_json(block)
    return Received(payload_hash(payload), payload.decode(), "127.0.0.1", client, at, block,
                    seen=at, via="subscription")  # fmt: skip


Opener = Callable[[], SQLStore]


async def started(open_store: Opener) -> SQLStore:
    store = open_store()
    await store.start()
    return store
