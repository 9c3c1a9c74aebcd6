"""
The node's status: what StatusReader makes of a node's answers (missing methods, errors,
garbage), how StatusPoller paces reads and sends, and the real thing against anvil.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from zope.interface import implementer

from ethtwisted import client_tap
from ethtwisted.client.status import StatusPoller
from ethtwisted.frames import Status, SyncProgress
from ethtwisted.logs import set_verbose
from ethtwisted.node import NodeError, open_node
from ethtwisted.node.interfaces import INodeRequests
from ethtwisted.node.status import StatusReader
from tests.conftest import Anvil
from tests.helpers import Logs, closing

BLOCK = {"number": "0x10", "baseFeePerGas": "0x3b9aca00"}
ANSWERS: dict[str, Any] = {
    "eth_chainId": {"result": "0x1"},
    "web3_clientVersion": {"result": "Geth/v1.14.0"},
    "net_peerCount": {"result": "0x19"},
    "eth_syncing": {
        "result": {"currentBlock": "0x5", "highestBlock": "0x9", "startingBlock": "0x0"}
    },
    "eth_gasPrice": {"result": "0x4a817c800"},
    "eth_getBlockByNumber": {"result": BLOCK},
    "txpool_status": {"result": {"pending": "0x3", "queued": "0x1"}},
}
FULL = Status("Geth/v1.14.0", 1, 25, SyncProgress(5, 9), 20_000_000_000, 1_000_000_000, 16, 16,
              3, 1, 0.0)  # fmt: skip


@pytest.fixture
def logs() -> Iterator[Logs]:
    """What the test logs, debug messages included (the global fixture fails it on errors)."""
    set_verbose(True)
    try:
        with capturedLogs() as events:
            yield Logs(events)
    finally:
        set_verbose(False)


@implementer(INodeRequests)
class FakeRequests:
    """
    A node answering each method with what the test set, counting the calls; C{hold} makes
    reads wait until the test fires them.
    """

    def __init__(self) -> None:
        self.description = "node-a"
        self.answers = dict(ANSWERS)
        self.calls: list[str] = []
        self.down = False
        self.held: list[Deferred[object]] | None = None

    def rpc(self, method: str, params: Any = ()) -> Deferred[object]:
        self.calls.append(method)
        if self.down:
            raise_it: Deferred[object] = Deferred()
            raise_it.errback(NodeError("Connection refused"))
            return raise_it
        if self.held is not None:
            d: Deferred[object] = Deferred()
            d.addCallback(lambda _: self.answers[method])
            self.held.append(d)
            return d
        return succeed(self.answers[method])

    def release(self) -> None:
        assert self.held is not None
        for _ in range(20):
            held, self.held = self.held, []
            if not held:
                break
            for d in held:
                d.callback(None)
        self.held = None


def read(reader: StatusReader) -> Status:
    results: list[Any] = []
    Deferred.fromCoroutine(reader.read()).addBoth(results.append)
    [result] = results
    assert isinstance(result, Status), result
    return result


def test_every_field_from_the_node(logs: Logs) -> None:
    """
    Each field comes from its method, quantities from hex, the base fee from the head, the
    safe and finalized numbers from their blocks, the round trip timed on the clock.
    """
    assert read(StatusReader(FakeRequests(), Clock())) == FULL


def test_a_missing_method_is_null_said_once_and_not_asked_again(logs: Logs) -> None:
    """
    A method the node does not have (-32601, or a message saying so) is null, logged once at
    debug, and not asked again, until another node is in use or the version changes.
    """
    node = FakeRequests()
    node.answers["txpool_status"] = {"error": {"code": -32601, "message": "Method not found"}}
    message = "the method net_peerCount does not exist/is not available"
    node.answers["net_peerCount"] = {"error": {"code": -32000, "message": message}}
    reader = StatusReader(node, Clock())
    for _ in range(3):
        status = read(reader)
        assert (status.peers, status.pending, status.queued) == (None, None, None)
    assert node.calls.count("txpool_status") == node.calls.count("net_peerCount") == 1
    assert len(logs.containing("has no txpool_status", LogLevel.debug)) == 1
    node.description = "node-b"
    read(reader)
    assert node.calls.count("txpool_status") == 2
    node.answers["web3_clientVersion"] = {"result": "Geth/v1.15.0"}
    read(reader)
    assert node.calls.count("txpool_status") == 3


def test_a_missing_method_is_asked_again_after_a_minute_then_less_often(logs: Logs) -> None:
    """
    A method the node lacks is asked again 60 s later, then after 120, 240 and 480 s, then
    every 600 s while it is still missing, said once; once the node has it, it is read again
    at the next of those times, and that is said once.
    """
    node = FakeRequests()
    node.answers["txpool_status"] = {"error": {"code": -32601, "message": "Method not found"}}
    clock = Clock()
    reader = StatusReader(node, clock)
    asked = []
    for second in range(2500):
        before = node.calls.count("txpool_status")
        assert read(reader).pending is None
        if node.calls.count("txpool_status") > before:
            asked.append(second)
        clock.advance(1)
    assert asked == [0, 60, 180, 420, 900, 1500, 2100]
    assert reader.missing == {"txpool_status"}
    assert len(logs.containing("has no txpool_status", LogLevel.debug)) == 1
    node.answers["txpool_status"] = ANSWERS["txpool_status"]
    clock.advance(2700 - clock.seconds() - 1)
    assert read(reader).pending is None
    clock.advance(1)
    assert read(reader).pending == 3 and reader.missing == set()
    assert read(reader).pending == 3
    assert len(logs.containing("has txpool_status now", LogLevel.debug)) == 1


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("net_peerCount", {"result": "0x" + "f" * 17}),
        ("net_peerCount", {"result": 25}),
        ("net_peerCount", {"result": "0x019"}),
        ("web3_clientVersion", {"result": "v" * 257}),
        ("web3_clientVersion", {"result": "\ud800"}),
        ("eth_syncing", {"result": True}),
        ("eth_syncing", {"result": {"currentBlock": "0x1"}}),
        ("txpool_status", {"result": ["0x1", "0x2"]}),
        ("eth_gasPrice", {"nothing": 1}),
        ("eth_gasPrice", "garbage"),
    ],
)
def test_an_unusable_answer_is_null_and_said_once(logs: Logs, method: str, answer: object) -> None:
    """
    An answer that is not what the method answers (out of range, wrong type, too long, a lone
    surrogate, not JSON-RPC) makes its field null with one warning, and the rest still comes.
    """
    node = FakeRequests()
    node.answers[method] = answer
    reader = StatusReader(node, Clock())
    for _ in range(2):
        status = read(reader)
    assert status.chain_id == 1 and status.base_fee == 1_000_000_000
    assert len(logs.texts(LogLevel.warn)) == 1
    assert logs.containing(method, LogLevel.warn)


def test_an_error_answer_is_null_and_asked_again(logs: Logs) -> None:
    """
    A JSON-RPC error other than a missing method (no finalized block yet, say) is null, said
    once at debug, and asked again next time; a block the node does not have is null.
    """
    node = FakeRequests()
    node.answers["eth_getBlockByNumber"] = {"error": {"code": -39001, "message": "unknown block"}}
    reader = StatusReader(node, Clock())
    assert read(reader).finalized is None
    read(reader)
    assert node.calls.count("eth_getBlockByNumber") == 6
    assert len(logs.containing("unknown block", LogLevel.debug)) == 3  # latest, safe, finalized
    node.answers["eth_getBlockByNumber"] = {"result": None}
    assert read(reader).safe is None


def test_a_node_that_does_not_answer_fails_the_read(logs: Logs) -> None:
    """
    Only a node that does not answer fails a read, with NodeError.
    """
    node = FakeRequests()
    node.down = True
    results: list[Any] = []
    Deferred.fromCoroutine(StatusReader(node, Clock()).read()).addErrback(results.append)
    assert results[0].check(NodeError)


class Sent:
    """
    A delivery stand-in: takes status frames while C{welcomed}, and has welcome listeners;
    one server, so no prober.
    """

    prober = None

    def __init__(self) -> None:
        self.welcomed = False
        self.statuses: list[Status] = []
        self.welcome_listeners: list[Any] = []

    def send_status(self, status: Status) -> bool:
        if self.welcomed:
            self.statuses.append(status)
        return self.welcomed

    def welcome(self) -> None:
        self.welcomed = True
        for listener in self.welcome_listeners:
            listener(frozenset({"status"}))


def test_the_poller_paces_reads_and_sends(logs: Logs) -> None:
    """
    Reads every interval and at once on a change, never two at once (changes during a read
    make one more read after it); a changed status is sent at once, an unchanged one at most
    every interval, the last one at once to a server that just welcomed status frames.
    """
    clock, node, sent = Clock(), FakeRequests(), Sent()
    poller = StatusPoller(StatusReader(node, clock), sent, clock, 15.0)  # type: ignore[arg-type]
    client_tap.wire(delivery=sent, status=poller)  # type: ignore[arg-type]
    poller.startService()
    assert poller.status == FULL and sent.statuses == []
    sent.welcome()
    assert sent.statuses == [FULL]
    clock.advance(5)
    poller.changed()
    assert len(sent.statuses) == 1  # unchanged, sent 5 s ago
    node.answers["net_peerCount"] = {"result": "0x18"}
    node.held = []
    poller.changed()
    poller.changed()
    poller.changed()
    assert node.calls.count("eth_chainId") == 3
    node.release()
    assert node.calls.count("eth_chainId") == 4  # one more read for the changes meanwhile
    assert [s.peers for s in sent.statuses] == [25, 24]
    clock.advance(10)
    assert node.calls.count("eth_chainId") == 5
    assert len(sent.statuses) == 2  # the interval's read, unchanged since the one sent at 5 s
    clock.advance(15)
    assert node.calls.count("eth_chainId") == 6
    assert len(sent.statuses) == 3  # unchanged, but sent 25 s ago
    poller.stopService()
    assert not clock.getDelayedCalls()


def test_new_heads_are_read_at_most_once_a_head_gap(logs: Logs) -> None:
    """
    With a head gap of 1 s (the client's --interval), a new head within 1 s of the last read
    is read once that second is over, however many heads came meanwhile; a head after a quiet
    second is read at once; stopping cancels a read still waiting for its turn.
    """
    clock, node, sent = Clock(), FakeRequests(), Sent()
    poller = StatusPoller(StatusReader(node, clock), sent, clock, 15.0, head_gap=1.0)  # type: ignore[arg-type]
    poller.startService()
    assert node.calls.count("eth_chainId") == 1
    clock.advance(0.1)
    for _ in range(3):
        poller.changed()
        clock.advance(0.25)
    assert node.calls.count("eth_chainId") == 1
    clock.advance(0.15)  # a second after the first read
    assert node.calls.count("eth_chainId") == 2
    clock.advance(3)
    poller.changed()
    assert node.calls.count("eth_chainId") == 3
    poller.changed()
    poller.stopService()
    assert not clock.getDelayedCalls()
    clock.advance(5)
    assert node.calls.count("eth_chainId") == 3


@pytest.mark.parametrize("asked_by", ["change", "timer"])
def test_stopping_the_poller_cancels_the_read_under_way(logs: Logs, asked_by: str) -> None:
    """
    Stopping while a read is under way, whether a change or the timer asked for it (the other
    asking for one more meanwhile), cancels it: the stop is over at once, nothing more is read
    or sent, even on a change after it, and nothing is left on the clock.
    """
    clock, node, sent = Clock(), FakeRequests(), Sent()
    poller = StatusPoller(StatusReader(node, clock), sent, clock, 15.0)  # type: ignore[arg-type]
    client_tap.wire(delivery=sent, status=poller)  # type: ignore[arg-type]
    poller.startService()
    sent.welcome()
    node.held = []
    if asked_by == "change":
        clock.advance(5)
        poller.changed()
        clock.advance(15)  # the timer's read at 15 s waits for the one under way
    else:
        clock.advance(15)
        poller.changed()
    calls = len(node.calls)
    assert node.calls.count("eth_chainId") == 2 and node.calls[-1] == "eth_chainId"
    stopped = poller.stopService()
    assert stopped.called and not poller.running
    poller.changed()
    node.release()
    clock.advance(30)
    assert len(node.calls) == calls and sent.statuses == [FULL]
    assert not clock.getDelayedCalls()


def test_the_poller_says_a_dead_node_once_and_never_stops(logs: Logs) -> None:
    """
    A node that does not answer is one warning however many reads fail, one note when it
    answers again, and the poller goes on reading.
    """
    clock, node = Clock(), FakeRequests()
    node.down = True
    poller = StatusPoller(StatusReader(node, clock), None, clock, 1.0)
    poller.startService()
    clock.pump([1.0] * 5)
    node.down = False
    clock.advance(1.0)
    assert poller.status == FULL
    assert len(logs.texts(LogLevel.warn)) == 1
    assert len(logs.containing("can be read again", LogLevel.info)) == 1
    poller.stopService()
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize("transport", ["ipc", "ws", "http"])
@pytest_twisted.ensureDeferred
async def test_anvil_status(anvil: Anvil, transport: str, logs: Logs) -> None:
    """
    A real anvil over IPC, WebSocket and HTTP: its web3_clientVersion, chain id 31337, not
    syncing, its gas price and base fee, block 0 as safe and finalized, an empty pool, a
    round trip under a second; anvil has no net_peerCount, so peers is null (and not asked
    again).
    """
    from twisted.internet import reactor

    uri = {"ipc": anvil.ipc_path, "ws": anvil.ws_url, "http": anvil.http_url}[transport]
    async with closing(open_node([uri], reactor)) as node:
        reader = StatusReader(node, reactor)  # type: ignore[arg-type]
        status = await reader.read()
        again = await reader.read()
    version = anvil.rpc("web3_clientVersion")
    assert version.startswith("anvil/")
    head = anvil.rpc("eth_getBlockByNumber", "latest", False)
    assert status.client_version == version
    assert status.chain_id == 31337
    assert status.syncing is False
    assert status.gas_price == int(anvil.rpc("eth_gasPrice"), 16)
    assert status.base_fee == int(head["baseFeePerGas"], 16)
    assert (status.safe, status.finalized) == (0, 0)
    assert (status.pending, status.queued) == (0, 0)
    assert status.rtt_ms is not None and 0 < status.rtt_ms < 1000
    assert status.peers is None and reader.missing == {"net_peerCount"}
    assert again.client_version == version
