"""
eth-client against hostile input: a server sending anything at all, a node answering junk
(a real HTTP JSON-RPC server on loopback whose answers Hypothesis draws), a spool written by an
older version or by nobody in particular, and deep JSON that used to crash the process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ethtwisted.client.delivery import ClientProtocol, Delivery
from ethtwisted.client.follower import Checkpoint, Follower
from ethtwisted.client.outbox import Outbox, queue_blocks
from ethtwisted.client.poller import Poller
from ethtwisted.client.spool import Spool
from ethtwisted.frames import Ack, Hello, Refusal, decode_control, encode_control
from ethtwisted.node import NodeError
from ethtwisted.node.web3_node import Web3Node
from ethtwisted.protocol import (
    CONTROL_MARK,
    Block,
    ProtocolError,
    block_json,
    parse_block,
    payload_hash,
)
from tests.fakes import FakeNode as ChainNode
from tests.fakes import one_server
from tests.helpers import TIMEOUT, Logs, closing, wait_for, wired
from tests.twistd import twistd_client
from tests.wire import netstring

reactor: Any = global_reactor

GOOD_HASH = "0x" + "ab" * 32
GOOD_BLOCK = {
    "number": "0x10",
    "hash": GOOD_HASH,
    "parentHash": "0x" + "cd" * 32,
    "timestamp": "0x6500",
}


# -- a node that answers what the test says ---------------------------------------------------


@dataclass
class Script:
    """
    What the fake node answers to each JSON-RPC method (C{default} for the others): a JSON
    value as the result, or a whole reply by kind (see L{reply_bytes}).
    """

    answers: dict[str, tuple[str, Any]] = field(default_factory=dict)
    default: tuple[str, Any] = ("result", None)
    calls: list[str] = field(default_factory=list)


def reply_bytes(kind: str, value: Any, call_id: Any) -> bytes:
    """
    The body of one answer: C{result} or C{error} with C{value}, C{deep} (a result nested
    C{value} deep), C{raw} (C{value} as the body, not JSON-RPC at all).
    """
    head = json.dumps({"jsonrpc": "2.0", "id": call_id})[:-1].encode()
    if kind == "raw":
        return bytes(value)
    if kind == "deep":
        return head + b',"result":' + b"[" * value + b"]" * value + b"}"
    return head + b',"' + kind.encode() + b'":' + json.dumps(value).encode() + b"}"


class FakeNode(Resource):
    """
    A JSON-RPC node over HTTP answering from its L{Script}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.script = Script()

    def render_POST(self, request: Request) -> bytes:
        call = json.loads(request.content.read())  # type: ignore[union-attr]
        method = call["method"]
        if method == "eth_getBlockByNumber" and call["params"][0] == "finalized":
            method = "finalized"
        self.script.calls.append(method)
        kind, value = self.script.answers.get(method, self.script.default)
        request.setHeader("content-type", "application/json")
        return reply_bytes(kind, value, call["id"])


@pytest.fixture(scope="module")
def fake_node() -> Iterator[tuple[FakeNode, str]]:
    resource = FakeNode()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    yield resource, f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())


# -- hostile node: property -------------------------------------------------------------------

hexes = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**300).map(
        lambda n: hex(n) if n >= 0 else "-" + hex(-n)
    ),
    st.text("0123456789abcdefABCDEFxg", max_size=80).map(lambda s: "0x" + s),
    st.sampled_from([GOOD_HASH, "0x", "0x0", "", "latest"]),
)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    hexes,
)
junk_json = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
blockish = st.dictionaries(
    st.sampled_from(["number", "hash", "parentHash", "timestamp"]),
    st.one_of(hexes, json_leaves),
).map(lambda d: {**GOOD_BLOCK, **d})
answers = st.one_of(
    st.tuples(st.just("result"), st.one_of(hexes, junk_json, blockish, st.just(GOOD_BLOCK))),
    st.tuples(st.just("error"), junk_json),
    st.tuples(st.just("deep"), st.sampled_from([33, 1000, 100_000])),
    st.tuples(st.just("raw"), st.binary(max_size=40)),
)
METHODS = ["eth_chainId", "eth_getBlockByNumber", "eth_getBlockByHash", "finalized"]


@pytest.mark.property
@given(script=st.fixed_dictionaries({}, optional=dict.fromkeys(METHODS, answers)))
@pytest_twisted.ensureDeferred
async def test_a_hostile_node_is_node_trouble_and_nothing_built_from_junk_is_queued(
    fake_node: tuple[FakeNode, str], script: dict[str, tuple[str, Any]]
) -> None:
    """
    Whatever a node answers (wrong types, huge integers, deep nesting, missing fields, not
    JSON), following it from a block it does not know (so that it is asked for the head, its
    parent by hash and its finalized block) either queues real blocks (each message a block a
    server can store) or fails with one NodeError of one line; never anything else.
    """
    resource, url = fake_node
    resource.script = Script(answers=dict(script), default=("result", GOOD_BLOCK))
    resource.script.answers.setdefault("eth_chainId", ("result", "0x7a69"))
    node = Web3Node(url, reactor, timeout=5)
    outbox = Outbox()
    last = Block(31337, 15, "0x" + "ef" * 32, "0x" + "01" * 32, 0x6400)
    follower = Follower(
        node, queue_blocks(outbox, "json"), 4, Checkpoint(last, {15: last.hash}), clock=reactor
    )
    try:
        await follower.follow()
    except NodeError as e:
        assert str(e) and "\n" not in str(e)
        assert len(outbox) == 0
    else:
        assert all(isinstance(parse_block(p), Block) for p in outbox.pending())
    finally:
        await node.close()


# -- hostile node: regressions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ({"eth_chainId": ("result", hex(2**160 - 1))}, "unusable chain id: a 160-bit number"),
        ({"eth_getBlockByNumber": ("result", {**GOOD_BLOCK, "number": hex(10**30)})},
         "unusable block number: a 100-bit number"),
        ({"eth_getBlockByNumber": ("result", {**GOOD_BLOCK, "timestamp": hex(2**64)})},
         "unusable block timestamp: a 65-bit number"),
    ],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_absurd_node_answers_are_said_once_and_never_sent(
    fake_node: tuple[FakeNode, str], logs: Logs, answers: dict[str, Any], reason: str
) -> None:
    """
    A node answering a 160-bit chain id, or a block number or timestamp past 64 bits, is node
    trouble, said once however often it is polled, and nothing is queued; once it answers
    sensibly, its block is.
    """
    resource, url = fake_node
    resource.script = Script(answers=dict(answers), default=("result", GOOD_BLOCK))
    resource.script.answers.setdefault("eth_chainId", ("result", "0x7a69"))
    node = Web3Node(url, reactor, timeout=5)
    outbox = Outbox()
    follower = Follower(node, queue_blocks(outbox, "json"), clock=reactor)
    poller = Poller(follower, reactor, 0.05, 0.05)
    poller.startService()
    try:
        await wait_for(lambda: poller.failures >= 4, 10)
        assert len(outbox) == 0
        [warning] = logs.texts(LogLevel.warn)
        assert reason in warning and "does not serve us" in warning, warning
        resource.script.answers = {"eth_chainId": ("result", "0x7a69")}
        await wait_for(lambda: len(outbox) == 1, 10)
        [payload] = outbox.pending()
        assert json.loads(payload)["chain_id"] == 31337
        assert logs.containing("answers again after")
    finally:
        await poller.stopService()
        await node.close()


@pytest_twisted.ensureDeferred
async def test_absurd_block_numbers_are_node_errors(fake_node: tuple[FakeNode, str]) -> None:
    """
    eth_blockNumber and the finalized block answering numbers past 64 bits fail with a
    NodeError saying so, instead of giving the number.
    """
    resource, url = fake_node
    resource.script = Script(answers={
        "eth_blockNumber": ("result", hex(2**64)),
        "finalized": ("result", {**GOOD_BLOCK, "number": hex(2**160)}),
    })  # fmt: skip
    async with closing(Web3Node(url, reactor, timeout=5)) as node:
        with pytest.raises(NodeError, match="unusable block number: a 65-bit number"):
            await node.block_number()
        with pytest.raises(NodeError, match="unusable finalized block number: a 161-bit"):
            await node.finalized_number()


@pytest_twisted.ensureDeferred
async def test_deep_json_from_the_node_is_node_trouble_in_the_process(
    fake_node: tuple[FakeNode, str],
) -> None:
    """
    An answer nested 100,000 deep, which web3 parses before we see it, fails the call with a
    NodeError (the C decoder's RecursionError), on every method.
    """
    resource, url = fake_node
    resource.script = Script(default=("deep", 100_000))
    async with closing(Web3Node(url, reactor, timeout=5)) as node:
        for call in (node.block_number, node.head, node.finalized_number):
            with pytest.raises(NodeError, match="maximum recursion depth exceeded while decoding"):
                await call()


@pytest_twisted.ensureDeferred
async def test_deep_json_from_the_node_does_not_kill_eth_client(
    fake_node: tuple[FakeNode, str], tmp_path: Path
) -> None:
    """
    twistd eth-client following a node that answers JSON nested 100,000 deep (web3 loads
    py_ecc, which raises the recursion limit so far that json's C decoder used to overflow the
    C stack: SIGSEGV, no log line) logs node trouble and keeps running; SIGTERM stops it.
    """
    resource, url = fake_node
    resource.script = Script(default=("deep", 100_000))
    log = tmp_path / "client.log"
    process = twistd_client(log, "--node", url, "--server", "tcp:host=127.0.0.1:port=1",
                            "--interval", "0.05")  # fmt: skip
    try:
        await until_logged(log, "does not serve us", process)
        calls = len(resource.script.calls)
        await wait_for(
            lambda: len(resource.script.calls) >= calls + 3 or process.poll() is not None,
            TIMEOUT,
            interval=0.05,
        )
        assert process.poll() is None, f"eth-client died: {process.returncode}"
    finally:
        code = await stopped(process)
    text = log.read_text()
    assert code == -signal.SIGTERM, text  # twistd ends by the signal it was given
    assert "Traceback" not in text
    assert text.count("does not serve us") == 1


async def until_logged(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    """
    Wait until C{text} is in the C{log} of a running C{process}; fail if it ends first.
    """

    def logged() -> bool:
        assert process.poll() is None, f"eth-client died: {process.returncode}"
        return text in (log.read_text() if log.exists() else "")

    await wait_for(logged, TIMEOUT, interval=0.05, what=f"{text!r} logged")


async def stopped(process: subprocess.Popen[bytes]) -> int:
    """
    SIGTERM to C{process} (if still running) and its exit status, the reactor running meanwhile.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        await wait_for(lambda: process.poll() is not None, TIMEOUT, interval=0.05)
    except AssertionError:
        process.kill()
    if process.stdout is not None:
        process.stdout.close()
    return process.wait(TIMEOUT)


# -- spool ------------------------------------------------------------------------------------


def poison(**changes: Any) -> bytes:
    """
    A canonical-looking block message with fields no store can hold.
    """
    block = {"chain_id": 1, "number": 5, "hash": GOOD_HASH, "parent_hash": GOOD_HASH,
             "timestamp": 7, **changes}  # fmt: skip
    return json.dumps(block, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.expected_log_errors("^spool checkpoint not usable ")
@pytest_twisted.ensureDeferred
async def test_a_spool_of_an_older_version_is_not_resent_with_its_poison(
    tmp_path: Path, logs: Logs
) -> None:
    """
    Block messages spooled by an older client from absurd node answers (a 160-bit chain id, a
    number past 64 bits, a short hash) are dropped at restore, with a warning, and the batch
    file goes once nothing in it is left to send; the good messages beside them are restored.
    A checkpoint naming such a block is not used.
    """
    good = block_json(Block(1, 5, GOOD_HASH, GOOD_HASH, 7))
    bad = [poison(chain_id=2**160 - 1), poison(number=10**30), poison(hash="0x12")]
    (tmp_path / "batch-000000000000.json").write_text(
        json.dumps({"payloads": [p.decode() for p in bad]})
    )
    (tmp_path / "batch-000000000001.json").write_text(
        json.dumps({"payloads": [bad[0].decode(), good.decode(), "older page"]})
    )
    state = {"version": 1, "recent": [[5, GOOD_HASH]], "last": json.loads(bad[0])}
    (tmp_path / "state.json").write_text(json.dumps(state))
    outbox = Outbox(100, Spool(str(tmp_path), reactor))
    try:
        assert outbox.restore() is None
        assert outbox.pending() == [good, b"older page"]
        await wait_for(lambda: not (tmp_path / "batch-000000000000.json").exists(), 10)
        assert len(logs.containing("dropped 3 block messages", LogLevel.warn)) == 1
        assert len(logs.containing("dropped 1 block messages", LogLevel.warn)) == 1
        [error] = logs.texts(LogLevel.error)
        assert "spool checkpoint not usable" in error and "chain_id is out of range" in error
    finally:
        await outbox.close()


@pytest_twisted.ensureDeferred
async def test_deep_json_in_the_spool_does_not_kill_eth_client(
    fake_node: tuple[FakeNode, str], tmp_path: Path
) -> None:
    """
    twistd eth-client started on a spool whose batch and checkpoint are JSON nested 100,000
    deep (json's C decoder used to overflow the C stack there) sets the batch aside, starts
    from the node's head, and keeps running.
    """
    resource, url = fake_node
    resource.script = Script(answers={"eth_chainId": ("result", "0x7a69")},
                             default=("result", GOOD_BLOCK))  # fmt: skip
    spool = tmp_path / "spool"
    spool.mkdir()
    deep = b'{"payloads":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (spool / "batch-000000000000.json").write_bytes(deep)
    (spool / "state.json").write_bytes(deep)
    log = tmp_path / "client.log"
    process = twistd_client(log, "--node", url, "--spool", str(spool), "--interval", "0.05",
                            "--server", "tcp:host=127.0.0.1:port=1")  # fmt: skip
    try:
        await until_logged(log, "following ", process)
    finally:
        code = await stopped(process)
    text = log.read_text()
    assert code == -signal.SIGTERM, text  # twistd ends by the signal it was given
    assert "batch-000000000000.json (JSON nested more than 32 deep): set aside" in text
    assert "state.json (JSON nested more than 32 deep)" in text
    assert "Traceback" not in text
    assert "batch-000000000000.json.bad" in os.listdir(spool)


@pytest.mark.expected_log_errors("^cannot write the spool: ")
@pytest_twisted.ensureDeferred
async def test_a_failed_spool_write_leaves_no_temporary_file_and_is_told_as_the_spool(
    tmp_path: Path, logs: Logs
) -> None:
    """
    When the spool cannot take a batch (here its name is taken by a directory) its temporary
    file is removed at once, the poller says the spool is the trouble, and once the spool
    takes the next batch says so, not that the node answers again.
    """
    node = ChainNode()
    spool = Spool(str(tmp_path), reactor)
    outbox = Outbox(100, spool)
    follower = Follower(node, queue_blocks(outbox, "json"), clock=reactor)
    poller = Poller(follower, reactor, 0.05, 0.05)
    blocker = tmp_path / "batch-000000000000.json"
    blocker.mkdir()
    poller.startService()
    try:
        # The next batch has the next name, which is free.
        await wait_for(lambda: bool(logs.containing("written again")), 10)
    finally:
        await poller.stopService()
        await outbox.close()
    [error] = logs.texts(LogLevel.error)
    assert "cannot write the spool" in error and "Is a directory" in error
    assert logs.containing("the spool can be written again after 1 failed polls")
    assert len(outbox) == 1
    assert not logs.containing("answers again")
    assert sorted(os.listdir(tmp_path)) == [
        "batch-000000000000.json",
        "batch-000000000001.json",
        "lock",
        "state.json",
    ]


# -- hostile server: property -----------------------------------------------------------------

QUEUED = [f"payload {i}".encode() for i in range(6)]

frames = st.one_of(
    st.integers(0, len(QUEUED) - 1).map(lambda i: encode_control(Ack(payload_hash(QUEUED[i])))),
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: encode_control(Ack(h))),
    st.text(max_size=30).map(lambda r: encode_control(Refusal(r))),
    st.just(encode_control(Hello("server"))),
    st.binary(min_size=1, max_size=30).filter(lambda b: not b.startswith(CONTROL_MARK)),
    st.binary(max_size=30).map(lambda b: CONTROL_MARK + b),
    st.sampled_from([10, 33, 100_000]).map(
        lambda n: CONTROL_MARK + b'{"type":"ack","sha256":' + b"[" * n + b"]" * n + b"}"
    ),
    junk_json.map(lambda v: CONTROL_MARK + json.dumps(v).encode()),
    st.just(CONTROL_MARK + b'{"type":"ack","sha256":"\\ud800"}'),
)


def expected(stream: list[bytes]) -> tuple[set[bytes], bool]:
    """
    The queued payloads the frames acknowledge before the first one a client does not take,
    and whether there is such a frame (a payload, a hello, a malformed control frame).
    """
    acked: set[bytes] = set()
    for frame in stream:
        try:
            decoded = decode_control(frame) if frame.startswith(CONTROL_MARK) else None
        except ProtocolError:
            return acked, True
        if isinstance(decoded, Ack):
            acked |= {p for p in QUEUED if payload_hash(p) == decoded.sha256}
        elif not isinstance(decoded, Refusal):
            return acked, True
    return acked, False


@pytest.mark.property
@given(
    stream=st.lists(frames, max_size=8),
    tail=st.binary(max_size=40),
    chunks=st.lists(st.integers(1, 64), min_size=1, max_size=20),
)
@pytest.mark.expected_log_errors("^server refused this client: ")
def test_a_hostile_server_costs_only_its_connection(
    stream: list[bytes], tail: bytes, chunks: list[int]
) -> None:
    """
    Whatever a server sends (acks, refusals, payloads, malformed or deep control frames,
    arbitrary bytes), in any chunking: dataReceived never raises, a frame the client does not
    take drops the connection, and exactly the payloads acknowledged before it leave the
    outbox, nothing else.
    """
    outbox = Outbox()
    outbox.put(QUEUED)
    delivery = wired(Delivery(outbox, one_server("server"), Clock()))
    protocol = ClientProtocol(delivery)
    transport = StringTransport()
    protocol.makeConnection(transport)
    data = b"".join(netstring(f) for f in stream) + tail
    i = n = 0
    while i < len(data):
        size = chunks[n % len(chunks)]
        protocol.dataReceived(data[i : i + size])
        i, n = i + size, n + 1
    acked, bad = expected(stream)
    assert set(outbox.pending()) == set(QUEUED) - acked
    if bad:
        assert transport.disconnecting and protocol.dropped
    if transport.disconnecting:
        protocol.connectionLost()
    assert set(outbox.pending()) == set(QUEUED) - acked
