"""
The real headers of other chains in tests/fixtures/headers, as JSON (L{fixture}) and as the
blocks they are (L{expected}).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ethtwisted.protocol import Block

FIXTURES = Path(__file__).parent / "fixtures" / "headers"


CHAIN_IDS = {
    "clique-goerli-3422.json": 5,
    "ibft-quorum-1.json": 1337,
    "parlia-bsc-1.json": 56,
    "bor-polygon-436.json": 137,
    "opstack-optimism-151534212.json": 10,
    "nitro-arbitrum-58989000.json": 42161,
    "qbft-besu-0.json": 1337,
}


def fixture(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def expected(name: str) -> Block:
    """The block a fixture is, read by hand."""
    data = fixture(name)
    return Block(CHAIN_IDS[name], int(data["number"], 16), data["hash"].lower(),
                 data["parentHash"].lower(), int(data["timestamp"], 16))  # fmt: skip
