"""
Ethereum node access: each transport against a real anvil, failover, reconnection after a
restart, timeouts against nodes that never answer, and what a C{--node} value may be.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from traceback import walk_tb
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ethtwisted.node import (
    DEFAULT_HTTP_URI,
    NodeError,
    default_node_uris,
    open_node,
    parse_node_uri,
    redact_uri,
    web3_node,
)
from ethtwisted.node.failover import FailoverNode
from ethtwisted.node.interfaces import INode
from ethtwisted.node.measured import MeasuredNode
from ethtwisted.node.web3_node import Web3Node
from ethtwisted.protocol import Block
from tests.e2e import uri_of
from tests.helpers import closing

reactor = IReactorTime(global_reactor)

TRANSPORTS = ["ipc", "ws", "http"]
NODE_KINDS = ["web3", "failover", "measured"]


def expected_block(anvil: Any, which: str | int) -> Block:
    """
    What anvil itself says about a block, over plain JSON-RPC.
    """
    tag = which if isinstance(which, str) else hex(which)
    data = anvil.rpc("eth_getBlockByNumber", tag, False)
    return Block(
        chain_id=int(anvil.rpc("eth_chainId"), 16),
        number=int(data["number"], 16),
        hash=data["hash"],
        parent_hash=data["parentHash"],
        timestamp=int(data["timestamp"], 16),
    )


def node_of(kind: str, uri: str, tmp_path: Any, timeout: float = 5) -> INode:
    """
    The node at C{uri} as C{kind}: a Web3Node; a FailoverNode whose first node is dead (so
    every case also covers the switch); or a Web3Node measured.
    """
    node = Web3Node(uri, reactor, timeout=timeout)
    if kind == "failover":
        dead = Web3Node(str(tmp_path / "nobody.ipc"), reactor, timeout=timeout)
        return FailoverNode([dead, node], reactor)
    if kind == "measured":
        return MeasuredNode(node, reactor, lambda seconds: None, lambda: None, lambda n: None)
    assert kind == "web3"
    return node


async def failure_of(d: Deferred[Any]) -> BaseException:
    try:
        await d
    except BaseException as e:
        return e
    raise AssertionError("the call succeeded")


# -- against anvil ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NODE_KINDS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_blocks_agree_with_the_node(
    anvil: Any, transport: str, kind: str, tmp_path: Any
) -> None:
    """
    Over each transport, the head, a block by number and a block by hash are what the node
    says over plain JSON-RPC, with 0x-prefixed lowercase hashes and the chain id.
    """
    anvil.mine(3)
    async with closing(node_of(kind, uri_of(anvil, transport), tmp_path)) as node:
        assert verifyObject(INode, node)
        head = expected_block(anvil, "latest")
        assert await node.block_number() == head.number
        assert await node.head() == head
        assert head.chain_id == 31337
        assert head.hash == head.hash.lower() and head.hash.startswith("0x")
        second = expected_block(anvil, 2)
        assert await node.block_by_number(2) == second
        assert await node.block_by_hash(second.hash) == second
        assert await node.block_by_hash(second.hash.upper().replace("0X", "0x")) == second
        assert (await node.block_by_number(1)).hash == second.parent_hash  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", NODE_KINDS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_unknown_blocks_are_none(
    anvil: Any, transport: str, kind: str, tmp_path: Any
) -> None:
    """
    A number past the head and a hash the node does not know give None, not an error.
    """
    async with closing(node_of(kind, uri_of(anvil, transport), tmp_path)) as node:
        assert await node.block_by_number(10**9) is None
        assert await node.block_by_hash("0x" + "ab" * 32) is None


@pytest.mark.parametrize("kind", NODE_KINDS)
@pytest_twisted.ensureDeferred
async def test_blocks_carry_the_chain_id(anvil_factory: Any, kind: str, tmp_path: Any) -> None:
    """
    Blocks carry the chain id the node reports (eth_chainId), not a default.
    """
    other = anvil_factory("--chain-id", "5")
    async with closing(node_of(kind, other.ws_url, tmp_path)) as node:
        assert (await node.head()).chain_id == 5


@pytest.mark.parametrize("kind", NODE_KINDS)
@pytest_twisted.ensureDeferred
async def test_finalized_number(anvil: Any, kind: str, tmp_path: Any) -> None:
    """
    anvil reports a finalized block (64 behind the head, at least genesis): its number.
    """
    anvil.mine(70)
    async with closing(node_of(kind, anvil.ipc_path, tmp_path)) as node:
        expected = int(anvil.rpc("eth_getBlockByNumber", "finalized", False)["number"], 16)
        assert await node.finalized_number() == expected


@pytest.mark.parametrize("kind", NODE_KINDS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_restarted_node_is_reached_again(
    anvil: Any, transport: str, kind: str, tmp_path: Any
) -> None:
    """
    After the node restarts, the next call opens a new connection and answers, with the new
    chain's blocks.
    """
    async with closing(node_of(kind, uri_of(anvil, transport), tmp_path)) as node:
        anvil.mine(5)
        before = await node.head()
        anvil.restart()
        after = await node.head()
        assert after == expected_block(anvil, "latest")
        assert after.hash != before.hash


@pytest.mark.parametrize("kind", NODE_KINDS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_stopped_node_fails_then_comes_back(
    anvil: Any, transport: str, kind: str, tmp_path: Any
) -> None:
    """
    While the node is down every call fails at once with NodeError; once it is back, calls
    answer again.
    """
    async with closing(node_of(kind, uri_of(anvil, transport), tmp_path, timeout=10)) as node:
        await node.block_number()
        anvil.stop()
        start = reactor.seconds()
        for _ in range(2):
            error = await failure_of(node.block_number())
            assert isinstance(error, NodeError), error
        assert reactor.seconds() - start < 5
        anvil.start()
        assert await node.block_number() == 0


@pytest.mark.parametrize("transport", ["ipc", "ws"])
@pytest_twisted.ensureDeferred
async def test_web3_reads_a_persistent_connection_in_the_task_we_watch(
    anvil: Any, transport: str
) -> None:
    """
    web3 has no public way to say that a persistent connection closed, so Web3Node watches the
    task in which web3's provider reads the socket (its private _message_listener_task, read
    in one place, _Connection.listener): once connected it is a running asyncio task, and it
    ends when the node hangs up.  This fails when web3 renames or changes it.
    """
    async with closing(Web3Node(uri_of(anvil, transport), reactor, timeout=5)) as node:
        await node.block_number()
        connection = node._connection
        assert connection is not None
        assert connection.persistent
        listener = connection.listener
        assert isinstance(listener, asyncio.Task)
        assert not listener.done()
        assert connection.gone() is False
        anvil.stop()
        await Deferred.fromFuture(asyncio.ensure_future(asyncio.wait([listener], timeout=5)))
        assert listener.done()
        assert connection.gone() is not False


@pytest_twisted.ensureDeferred
async def test_http_has_no_listener_task(anvil: Any) -> None:
    """
    Over HTTP there is no connection to watch: no listener, and never gone.
    """
    async with closing(Web3Node(anvil.http_url, reactor, timeout=5)) as node:
        await node.block_number()
        connection = node._connection
        assert connection is not None
        assert connection.listener is None
        assert connection.gone() is False


@pytest_twisted.ensureDeferred
async def test_failover_to_a_live_node_is_logged_once(anvil: Any, tmp_path: Any) -> None:
    """
    With a dead node first, calls are answered by the live one, and the switch is logged once.
    """
    dead = str(tmp_path / "nobody.ipc")
    async with closing(open_node([dead, anvil.ws_url], reactor, timeout=5)) as node:
        assert isinstance(node, FailoverNode)
        with capturedLogs() as events:
            head = await node.head()
            assert await node.block_number() == head.number
        assert head == expected_block(anvil, "latest")
        switches = [e for e in events if "unreachable" in e["log_format"]]
        assert len(switches) == 1
        assert switches[0]["old"] == dead and switches[0]["new"] == anvil.ws_url
        assert node.description == anvil.ws_url


# -- nodes that never answer ------------------------------------------------------------------


def local_port(factory: IProtocolFactory) -> Deferred[IListeningPort]:
    """Listen with C{factory} on a free port of 127.0.0.1."""
    return TCP4ServerEndpoint(IReactorTCP(global_reactor), 0, interface="127.0.0.1").listen(
        factory
    )


def port_number(port: IListeningPort) -> int:
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


class Silent(Protocol):
    """
    Accepts a connection and never says anything.
    """


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_node_that_never_answers_fails_within_the_timeout(
    transport: str, tmp_path: Any
) -> None:
    """
    A node that accepts connections but never answers makes every call fail with NodeError
    once the timeout has passed, not hang.
    """
    factory = Factory.forProtocol(Silent)
    if transport == "ipc":
        path = str(tmp_path / "silent.ipc")
        port = await UNIXServerEndpoint(IReactorUNIX(global_reactor), path).listen(factory)
        uri = path
    else:
        port = await local_port(factory)
        uri = f"{transport}://127.0.0.1:{port_number(port)}"
    node = Web3Node(uri, reactor, timeout=0.5)
    try:
        for _ in range(2):
            start = reactor.seconds()
            error = await failure_of(node.block_number())
            assert isinstance(error, NodeError)
            assert "within 0.5 s" in str(error)
            assert 0.4 < reactor.seconds() - start < 3
    finally:
        await node.close()
        await maybeDeferred(port.stopListening)


@pytest.mark.parametrize("uri", ["ws://127.0.0.1:1", "http://127.0.0.1:1"])
@pytest_twisted.ensureDeferred
async def test_refused_connection_is_a_node_error(uri: str, tmp_path: Any) -> None:
    """
    Nothing listening: NodeError at once, with a short reason.
    """
    async with closing(Web3Node(uri, reactor, timeout=10)) as node:
        start = reactor.seconds()
        error = await failure_of(node.head())
        assert isinstance(error, NodeError)
        assert str(error) == "Connection refused"
        assert reactor.seconds() - start < 5


@pytest_twisted.ensureDeferred
async def test_missing_ipc_socket_is_a_node_error(tmp_path: Any) -> None:
    """
    An IPC path where no node listens fails with the system's reason.
    """
    async with closing(Web3Node(str(tmp_path / "geth.ipc"), reactor)) as node:
        error = await failure_of(node.block_number())
        assert isinstance(error, NodeError)
        assert str(error) == "No such file or directory"


@pytest_twisted.ensureDeferred
async def test_bad_arguments_are_value_errors(tmp_path: Any) -> None:
    """
    A negative block number or a malformed hash is the caller's mistake: ValueError.
    """
    node = Web3Node(str(tmp_path / "geth.ipc"), reactor)
    assert isinstance(await failure_of(node.block_by_number(-1)), ValueError)
    assert isinstance(await failure_of(node.block_by_hash("0x1234")), ValueError)
    await node.close()
    assert isinstance(await failure_of(node.block_number()), NodeError)


# -- nodes that answer oddly ------------------------------------------------------------------


class FakeRPC(Resource):
    """
    A JSON-RPC endpoint whose answers the test decides: a dict (merged into the response), or
    raw bytes.
    """

    isLeaf = True

    def __init__(self, answer: Callable[[str, list[Any]], dict[str, Any] | bytes]) -> None:
        super().__init__()
        self.answer = answer

    def render_POST(self, request: Request) -> bytes:
        call = json.loads(request.content.read())  # type: ignore[union-attr]
        reply = self.answer(call["method"], call["params"])
        if isinstance(reply, bytes):
            return reply
        request.setHeader("content-type", "application/json")
        return json.dumps({"jsonrpc": "2.0", "id": call["id"], **reply}).encode()


async def with_fake_rpc(
    answer: Callable[[str, list[Any]], dict[str, Any] | bytes],
    check: Callable[[Web3Node], Awaitable[None]],
) -> None:
    port = await local_port(Site(FakeRPC(answer)))
    node = Web3Node(f"http://127.0.0.1:{port_number(port)}", reactor, timeout=5)
    try:
        await check(node)
    finally:
        await node.close()
        await maybeDeferred(port.stopListening)


@pytest.mark.parametrize(
    "reply",
    [
        {"result": None},
        {"error": {"code": -39001, "message": "finalized block not found"}},
        {"error": {"code": -32602, "message": "invalid argument 0: hex string without 0x prefix"}},
    ],
)
@pytest_twisted.ensureDeferred
async def test_finalized_number_is_none_when_the_node_has_none(reply: dict[str, Any]) -> None:
    """
    A node without finality (no such block, or the tag refused) reports None.
    """

    async def check(node: Web3Node) -> None:
        assert await node.finalized_number() is None

    await with_fake_rpc(lambda method, params: reply, check)


@pytest.mark.parametrize(
    "reply",
    [
        b"<html>502 Bad Gateway</html>",
        {"result": {"number": "0x1", "parentHash": "0x" + "00" * 32, "timestamp": "0x0"}},
        {"result": {"number": "0x1", "hash": "0x12", "parentHash": "0x12", "timestamp": "0x0"}},
        {"result": "a block"},
    ],
)
@pytest_twisted.ensureDeferred
async def test_garbage_from_the_node_is_a_node_error(reply: dict[str, Any] | bytes) -> None:
    """
    An answer that is not JSON-RPC, or a block without the fields a block has, fails the call
    with NodeError.
    """

    def answer(method: str, params: list[Any]) -> dict[str, Any] | bytes:
        return {"result": "0x7a69"} if method == "eth_chainId" else reply

    async def check(node: Web3Node) -> None:
        error = await failure_of(node.head())
        assert isinstance(error, NodeError), error
        assert str(error) and "\n" not in str(error)

    await with_fake_rpc(answer, check)


@pytest_twisted.ensureDeferred
async def test_rpc_error_is_a_node_error_with_its_message() -> None:
    """
    A JSON-RPC error answer fails the call with the node's message.
    """

    async def check(node: Web3Node) -> None:
        error = await failure_of(node.block_number())
        assert isinstance(error, NodeError)
        assert str(error) == "node error: the node is syncing"

    await with_fake_rpc(
        lambda method, params: {"error": {"code": -32000, "message": "the node is syncing"}},
        check,
    )


GOOD_BLOCK = {
    "number": "0x1",
    "hash": "0x" + "ab" * 32,
    "parentHash": "0x" + "cd" * 32,
    "timestamp": "0x0",
}


@pytest.mark.parametrize("bug", [TypeError, KeyError, AttributeError])
@pytest_twisted.ensureDeferred
async def test_a_bug_of_ours_is_not_node_trouble(
    monkeypatch: pytest.MonkeyPatch, bug: type[Exception]
) -> None:
    """
    A TypeError, KeyError or AttributeError raised by our own code (here, checking a good
    answer) fails the call with that exception and its traceback, for the caller to log as a
    bug: not a NodeError, which would be said as the node's trouble.
    """

    def broken(chain_id: int, data: object) -> Block:
        raise bug("ours")

    monkeypatch.setattr(web3_node, "as_block", broken)

    def answer(method: str, params: list[Any]) -> dict[str, Any]:
        return {"result": "0x7a69"} if method == "eth_chainId" else {"result": GOOD_BLOCK}

    async def check(node: Web3Node) -> None:
        error = await failure_of(node.head())
        assert type(error) is bug, error
        assert error.__traceback__ is not None
        assert broken.__code__ in [frame.f_code for frame, _ in walk_tb(error.__traceback__)]

    await with_fake_rpc(answer, check)


# -- failover without a network ---------------------------------------------------------------


@implementer(INode)
class FakeNode:
    """
    A node that answers block numbers, or fails when down.
    """

    def __init__(self, description: str, number: int) -> None:
        self.description = description
        self.number = number
        self.down = False
        self.calls = 0

    def _answer(self, value: Any) -> Deferred[Any]:
        self.calls += 1
        if self.down:
            return fail(NodeError("connection refused"))
        return succeed(value)

    def block_number(self) -> Deferred[int]:
        return self._answer(self.number)

    def head(self) -> Deferred[Block]:
        return self._answer(Block(1, self.number, "0x" + "00" * 32, "0x" + "00" * 32, 0))

    def block_by_number(self, number: int) -> Deferred[Block | None]:
        return self._answer(None)

    def block_by_hash(self, block_hash: str) -> Deferred[Block | None]:
        return self._answer(None)

    def finalized_number(self) -> Deferred[int | None]:
        return self._answer(None)

    def close(self) -> Deferred[None]:
        return succeed(None)


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def test_failover_moves_on_and_back() -> None:
    """
    Calls go to the first node; when it fails, to the next (logged once, however many calls),
    and after retry_after seconds back to the first once it answers again (logged once too).
    """
    clock = Clock()
    a, b, c = FakeNode("a", 1), FakeNode("b", 2), FakeNode("c", 3)
    node = FailoverNode([a, b, c], clock, retry_after=30)
    assert verifyObject(INode, node)
    with capturedLogs() as events:
        assert result_of(node.block_number()) == 1
        a.down = True
        assert [result_of(node.block_number()) for _ in range(3)] == [2, 2, 2]
        assert node.description == "b"
        a.down = False
        clock.advance(29)
        assert result_of(node.block_number()) == 2
        clock.advance(1)
        assert result_of(node.head()).number == 1
        assert result_of(node.block_number()) == 1
    messages = [e for e in events if e.get("log_namespace") == "ethtwisted.node"]
    assert len(messages) == 2
    assert messages[0]["old"] == "a" and messages[0]["new"] == "b"
    assert messages[0]["reason"] == "connection refused"
    assert messages[1]["old"] == "b" and messages[1]["new"] == "a"
    assert not clock.getDelayedCalls()


def test_failover_while_preferred_stays_down_tries_it_only_now_and_then() -> None:
    """
    A preferred node that stays down is tried again once per retry_after, silently.
    """
    clock = Clock()
    a, b = FakeNode("a", 1), FakeNode("b", 2)
    a.down = True
    node = FailoverNode([a, b], clock, retry_after=30)
    with capturedLogs() as events:
        for _ in range(5):
            assert result_of(node.block_number()) == 2
        assert a.calls == 1
        clock.advance(30)
        for _ in range(5):
            assert result_of(node.block_number()) == 2
        assert a.calls == 2
    assert len([e for e in events if e.get("log_namespace") == "ethtwisted.node"]) == 1


def test_failover_fails_when_no_node_answers() -> None:
    """
    With every node down, the call fails with NodeError naming each; it stays on its node.
    """
    clock = Clock()
    a, b = FakeNode("a", 1), FakeNode("b", 2)
    node = FailoverNode([a, b], clock)
    a.down = b.down = True
    with pytest.raises(NodeError, match="a: connection refused; b: connection refused"):
        result_of(node.block_number())
    assert node.description == "a"
    b.down = False
    assert result_of(node.block_number()) == 2


class SlowNode(FakeNode):
    """
    A FakeNode whose block number the test answers (or fails) when it likes.
    """

    def __init__(self) -> None:
        super().__init__("slow", 7)
        self.pending: list[Deferred[int]] = []

    def block_number(self) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.pending.append(d)
        return d


def test_measured_node_reports_each_call() -> None:
    """
    The measured node answers as its node does and reports each call: the seconds an answer
    took, a failure, the number of each head; a cancelled call is neither answer nor failure.
    """
    clock, node = Clock(), SlowNode()
    answered: list[float] = []
    failures: list[None] = []
    heads: list[int] = []
    measured = MeasuredNode(node, clock, answered.append, lambda: failures.append(None),
                            heads.append)  # fmt: skip
    assert verifyObject(INode, measured)
    assert measured.description == "slow"
    call = measured.block_number()
    clock.advance(0.25)
    node.pending.pop().callback(7)
    assert result_of(call) == 7
    assert answered == [0.25] and failures == []
    assert result_of(measured.head()).number == 7
    assert heads == [7] and answered == [0.25, 0.0]
    node.down = True
    with pytest.raises(NodeError):
        result_of(measured.head())
    assert len(failures) == 1 and heads == [7]
    cancelled = measured.block_number()
    cancelled.cancel()
    cancelled.addErrback(lambda f: f.trap(CancelledError))
    assert len(failures) == 1 and len(answered) == 2
    assert not clock.getDelayedCalls()


# -- URIs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "transport", "target"),
    [
        ("/var/run/geth.ipc", "ipc", "/var/run/geth.ipc"),
        ("ipc:///var/run/geth.ipc", "ipc", "/var/run/geth.ipc"),
        ("ws://127.0.0.1:8546", "ws", "ws://127.0.0.1:8546"),
        ("wss://node.example:443/ws", "ws", "wss://node.example:443/ws"),
        ("http://127.0.0.1:8545", "http", "http://127.0.0.1:8545"),
        ("https://node.example/rpc", "http", "https://node.example/rpc"),
    ],
)
def test_supported_uris(uri: str, transport: str, target: str) -> None:
    """
    Paths and ipc:// URLs are IPC, ws(s):// WebSocket, http(s):// HTTP.
    """
    parsed = parse_node_uri(uri)
    assert (parsed.transport, parsed.target) == (transport, target)


def test_relative_ipc_path_is_made_absolute() -> None:
    """
    A relative IPC path is taken from the current directory.
    """
    assert parse_node_uri("geth.ipc").target == os.path.join(os.getcwd(), "geth.ipc")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "empty node URI"),
        ("ftp://127.0.0.1/x", "unsupported node URI scheme 'ftp'"),
        ("tcp://127.0.0.1:8545", "unsupported node URI scheme 'tcp'"),
        ("localhost:8545", "has no scheme: write http://localhost:8545"),
        ("http://127.0.0.1:99999", "malformed node URL"),
        ("http://127.0.0.1:port", "malformed node URL"),
        ("ws://", "no host"),
        ("http://host name:8545", "white space"),
        ("ipc://", "names no IPC path"),
    ],
)
def test_invalid_uris(uri: str, message: str) -> None:
    """
    What is not a node URI is refused with a message that says why.
    """
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_node_uri(uri)
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        open_node(["http://127.0.0.1:8545", uri], reactor)


def test_open_node_without_uris() -> None:
    """
    At least one node is needed.
    """
    with pytest.raises(ValueError, match="no node URI given"):
        open_node([], reactor)


def test_open_node_builds_one_or_failover() -> None:
    """
    One URI gives a Web3Node, several a FailoverNode preferring them in order.
    """
    single = open_node(["http://127.0.0.1:8545"], reactor)
    assert isinstance(single, Web3Node)
    several = open_node(["/tmp/geth.ipc", "http://127.0.0.1:8545"], reactor)
    assert isinstance(several, FailoverNode)
    assert [n.description for n in several.nodes] == ["/tmp/geth.ipc", "http://127.0.0.1:8545"]


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("https://user:s3cret@node.example/rpc", "https://***@node.example/rpc"),
        ("wss://node.example:8546/?token=s3cret", "wss://node.example:8546/?token=***"),
        (
            "https://mainnet.infura.io/v3/0123456789abcdef0123456789abcdef",
            "https://mainnet.infura.io/v3/***",
        ),
        ("/home/someone/.ethereum/geth.ipc", "/home/someone/.ethereum/geth.ipc"),
    ],
)
def test_descriptions_hide_credentials(uri: str, shown: str) -> None:
    """
    A node's description (what logs show) has its credentials and API keys redacted.
    """
    assert redact_uri(uri) == shown
    assert Web3Node(uri, reactor).description == shown


def test_invalid_uri_message_hides_credentials() -> None:
    """
    Even the error for a bad URI does not show its password.
    """
    with pytest.raises(ValueError) as info:
        parse_node_uri("gopher://user:s3cret@node.example/")
    assert "s3cret" not in str(info.value)


IMPORTS_WEB3_ONLY_FOR_A_NODE = """
import sys
import ethtwisted.client_tap, ethtwisted.node.uri
assert "web3" not in sys.modules, "web3 imported with the options"
from twisted.internet.task import Clock
from ethtwisted.node import open_node
open_node(["http://127.0.0.1:8545"], Clock())
assert "web3" in sys.modules
assert sys.getrecursionlimit() <= 1000, sys.getrecursionlimit()
"""


def test_options_load_without_web3() -> None:
    """
    eth-client's options and the node URIs load without web3 (so twistd eth-client --help
    does not pay for it); building a node imports it, and puts the recursion limit back.
    """
    subprocess.run([sys.executable, "-P", "-c", IMPORTS_WEB3_ONLY_FOR_A_NODE], check=True,
                   timeout=60)  # fmt: skip


def test_default_uris(tmp_path: Any) -> None:
    """
    Without --node: the geth IPC sockets that exist, then the local HTTP port.
    """
    home = tmp_path / "home"
    environ = {"HOME": str(home), "TMPDIR": str(tmp_path / "tmp")}
    uris: Callable[[], list[str]] = lambda: default_node_uris(environ, str(home))  # noqa: E731
    assert DEFAULT_HTTP_URI == "http://127.0.0.1:8545"
    assert uris()[-1] == DEFAULT_HTTP_URI
    assert str(home / ".ethereum/geth.ipc") not in uris()
    (home / ".ethereum").mkdir(parents=True)
    (home / ".ethereum/geth.ipc").touch()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp/geth.ipc").touch()
    found = uris()
    assert found[0] == str(home / ".ethereum/geth.ipc")
    assert str(tmp_path / "tmp/geth.ipc") in found
    assert found[-1] == DEFAULT_HTTP_URI
    assert default_node_uris(environ) == found
