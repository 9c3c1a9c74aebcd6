"""
Every EVM header shape: real headers of clique, IBFT, QBFT, Parlia, Bor, OP Stack and Arbitrum
chains (tests/fixtures/headers, each checked to be what it says), served by a fake JSON-RPC
node over HTTP and WebSocket, are read as the blocks they are: by call, by subscription, in
the node's status and by the follower; and what is not a header is still refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import rlp
from eth_hash.auto import keccak
from twisted.internet.task import Clock

from ethtwisted.client.follower import Follower
from ethtwisted.node import NodeError
from ethtwisted.node.answers import as_block
from ethtwisted.node.status import StatusReader
from ethtwisted.node.web3_node import Web3Node
from ethtwisted.protocol import Block
from tests.fake_rpc import ChainNode, header_of
from tests.fakes import Recorder
from tests.headers import CHAIN_IDS, FIXTURES, expected, fixture
from tests.helpers import closing, the_reactor, wait_for

# The chain id of each fixture's chain (the Quorum network's own is not known: any will do).
NAMES = sorted(CHAIN_IDS)


# -- the fixtures are real headers ------------------------------------------------------------

_FIELDS = ["parentHash", "sha3Uncles", "miner", "stateRoot", "transactionsRoot", "receiptsRoot",
           "logsBloom", "difficulty", "number", "gasLimit", "gasUsed", "timestamp", "extraData",
           "mixHash", "nonce"]  # fmt: skip
_LATER = ["baseFeePerGas", "withdrawalsRoot", "blobGasUsed", "excessBlobGas",
          "parentBeaconBlockRoot", "requestsHash"]  # fmt: skip
_QUANTITIES = {"difficulty", "number", "gasLimit", "gasUsed", "timestamp", "baseFeePerGas",
               "blobGasUsed", "excessBlobGas"}  # fmt: skip
ISTANBUL_DIGEST = "0x63746963616c2062797a616e74696e65206661756c7420746f6c6572616e6365"


def header_hash(data: dict[str, Any]) -> str:
    """
    The hash of a header, computed from its fields: keccak-256 of its RLP (the fields of later
    forks appended while present).  Parity's JSON has no mixHash or nonce but their RLP in
    sealFields.  Both BFT kinds hash the header with the committed seals in its extraData
    emptied: Quorum's IBFT (32 bytes of vanity, then the RLP of validators, seal and committed
    seals) and Besu's IBFT 2.0 and QBFT (the RLP of vanity, validators, vote, round and
    committed seals, last).
    """
    data = dict(data)
    if "mixHash" not in data:
        data["mixHash"], data["nonce"] = ("0x" + rlp.decode(bytes.fromhex(f[2:])).hex()
                                          for f in data["sealFields"])  # fmt: skip
    if data["mixHash"] == ISTANBUL_DIGEST:
        extra = bytes.fromhex(data["extraData"][2:])
        if extra[0] >= 0xF8:  # Besu: the whole extraData is one RLP list
            fields = rlp.decode(extra)
            data["extraData"] = "0x" + rlp.encode([*fields[:-1], []]).hex()
        else:
            validators, seal, _committed = rlp.decode(extra[32:])
            data["extraData"] = "0x" + (extra[:32] + rlp.encode([validators, seal, []])).hex()
    items: list[object] = []
    for name in _FIELDS + _LATER:
        if name not in _FIELDS and data.get(name) is None:
            break
        value = data[name]
        items.append(int(value, 16) if name in _QUANTITIES else bytes.fromhex(value[2:]))
    return "0x" + keccak(rlp.encode(items)).hex()


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_is_the_header_it_says(name: str) -> None:
    """
    Each fixture's fields hash to the hash it holds (so it is a real header, unedited), and
    its extraData is of the chain's kind: over 32 bytes for the sealed ones.
    """
    data = fixture(name)
    assert header_hash(data) == data["hash"]
    extra = len(bytes.fromhex(data["extraData"][2:]))
    if name.split("-")[0] in ("clique", "ibft", "qbft", "parlia", "bor"):
        assert extra > 32


def test_the_fixtures_readme_names_each_fixture() -> None:
    """
    The README beside the fixtures says where each came from: it names every file, and the
    tests cover every file.
    """
    files = sorted(p.name for p in FIXTURES.glob("*.json"))
    assert files == NAMES
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    assert [name for name in files if f"`{name}`" not in readme] == []


# -- read over HTTP and WebSocket -------------------------------------------------------------


@pytest_twisted.async_yield_fixture(params=NAMES)
async def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, ChainNode]]:
    """A fake node whose chain is one fixture, and the fixture's name."""
    name = request.param
    node = ChainNode(CHAIN_IDS[name], [fixture(name)])
    await node.start(str(tmp_path / "node.ipc"))
    yield name, node
    await node.stop()


TRANSPORTS = ["http", "ws", "ipc"]


def node_of(chain: ChainNode, transport: str) -> Web3Node:
    uri = {"http": chain.http_url, "ws": chain.ws_url, "ipc": chain.ipc_path}[transport]
    return Web3Node(uri, the_reactor(), timeout=5)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_each_header_is_read_as_its_block(
    served: tuple[str, ChainNode], transport: str
) -> None:
    """
    The head, the block by number and by hash, and the finalized number are the fixture's,
    whatever its extraData, mixHash, nonce or extra fields hold.
    """
    name, chain = served
    block = expected(name)
    async with closing(node_of(chain, transport)) as node:
        assert await node.head() == block
        assert await node.block_number() == block.number
        assert await node.block_by_number(block.number) == block
        assert await node.block_by_hash(block.hash) == block
        assert await node.block_by_number(block.number + 1) is None
        assert await node.finalized_number() == block.number


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_each_header_is_read_in_the_status(
    served: tuple[str, ChainNode], transport: str
) -> None:
    """
    The status read of such a node has its safe and finalized numbers and its base fee.
    """
    name, chain = served
    data = fixture(name)
    async with closing(node_of(chain, transport)) as node:
        status = await StatusReader(node, Clock()).read()
    assert status.chain_id == CHAIN_IDS[name]
    assert status.safe == status.finalized == int(data["number"], 16)
    fee = data.get("baseFeePerGas")
    assert status.base_fee == (None if fee is None else int(fee, 16))


@pytest.mark.parametrize("transport", ["ws", "ipc"])
@pytest_twisted.ensureDeferred
async def test_each_header_is_pushed_as_its_block(
    served: tuple[str, ChainNode], transport: str
) -> None:
    """
    Over WebSocket and IPC, a C{newHeads} notification carrying the fixture is delivered as its
    block (web3's notification formatter, which would refuse the long extraData, is not in the
    way).
    """
    name, chain = served
    node = node_of(chain, transport)
    delivered: list[Block] = []
    subscription = await node.subscribe_heads(delivered.append)
    try:
        assert subscription is not None
        chain.push(header_of(fixture(name)))
        await wait_for(lambda: bool(delivered), 5, what="the pushed header")
        assert delivered == [expected(name)]
        assert not subscription.ended.called
    finally:
        if subscription is not None:
            await subscription.close()
        await node.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_the_follower_takes_each_header(
    served: tuple[str, ChainNode], transport: str
) -> None:
    """
    The follower, on such a node, hands the fixture's block to its sink.
    """
    name, chain = served
    sink = Recorder()
    async with closing(node_of(chain, transport)) as node:
        await Follower(node, sink, clock=Clock()).follow()
    assert sink.blocks == [expected(name)]


# -- still refused ----------------------------------------------------------------------------

GOOD = {"number": "0x1", "hash": "0x" + "ab" * 32, "parentHash": "0x" + "cd" * 32,
        "timestamp": "0x5f49ca59"}  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"number": "0x01"},
        {"number": 1},
        {"number": "0x"},
        {"number": "1"},
        {"number": "0x8000000000000000"},
        {"number": "0x" + "f" * 5000},
        {"timestamp": "-0x1"},
        {"timestamp": None},
        {"hash": "0x" + "ab" * 31},
        {"hash": "0X" + "ab" * 32},
        {"hash": "ab" * 33},
        {"parentHash": None},
        {"parentHash": ["0x" + "cd" * 32]},
        {"hash": "0x" + "ab" * 32 + "\n"},
    ],
)
def test_what_is_not_a_header_is_refused(change: dict[str, Any]) -> None:
    """
    Only 0x-hex quantities that fit 64 signed bits, without leading zeros, and hashes of
    exactly 32 bytes of hex make a block: anything else in the four fields read is NodeError,
    with a bounded message.
    """
    with pytest.raises(NodeError) as info:
        as_block(1, {**GOOD, **change})
    assert len(str(info.value)) < 120 and "\n" not in str(info.value)


def test_a_header_is_read_from_its_four_fields_only() -> None:
    """
    The four fields make the block, in lowercase; nothing else is looked at (any other field
    may hold anything), and a header without one of them is refused.
    """
    odd: dict[str, object] = {
        "mixHash": None,
        "nonce": 7,
        "extraData": "0x" + "00" * 100_000,
        "sendRoot": {"a": []},
    }
    data = {**GOOD, "hash": "0x" + "AB" * 32, **odd}
    assert as_block(7, data) == Block(7, 1, "0x" + "ab" * 32, "0x" + "cd" * 32, 0x5F49CA59)
    for field in GOOD:
        with pytest.raises(NodeError, match=f"without {field}"):
            as_block(7, {k: v for k, v in GOOD.items() if k != field})
