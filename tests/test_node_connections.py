"""
Connections the node closes: a real loopback HTTP JSON-RPC node that closes connections
under requests (every third request, or every connection asked a second time) costs a call
nothing and logs no trouble, in the calls, the status reads and the polls (each on its own:
the fake's every third request counts them all); a real outage is still said, once, and once
when it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_twisted
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from ethtwisted.client.follower import Follower
from ethtwisted.client.poller import Poller
from ethtwisted.client.status import StatusPoller
from ethtwisted.frames import Status
from ethtwisted.node import NodeError
from ethtwisted.node.status import StatusReader
from ethtwisted.node.web3_node import Web3Node
from tests.fake_rpc import ChainNode
from tests.fakes import Recorder
from tests.headers import expected, fixture
from tests.helpers import closing, the_reactor, wait_for

NAME = "parlia-bsc-1.json"


@pytest_twisted.async_yield_fixture
async def chain() -> AsyncIterator[ChainNode]:
    node = ChainNode(56, [fixture(NAME)])
    await node.start()
    yield node
    await node.stop()


def close_connections(chain: ChainNode, how: str) -> None:
    if how == "every third request":
        # (Every other would drop the retry too: after a drop, a head is asked on a new
        # connection with its chain id first, two requests.)
        chain.drop_every = 3
    else:
        chain.close_reused = True


def said(events: Sequence[LogEvent]) -> list[str]:
    """What was logged at warn and above."""
    return [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]


HOW = ["every third request", "every connection reused"]


@pytest.mark.parametrize("how", HOW)
@pytest_twisted.ensureDeferred
async def test_a_request_the_node_closes_is_asked_again_at_once(
    chain: ChainNode, how: str
) -> None:
    """
    Every call answers, the same as from a node that never closes, and nothing is logged
    above debug; the node did close connections under requests.
    """
    close_connections(chain, how)
    async with closing(Web3Node(chain.http_url, the_reactor(), timeout=5)) as node:
        with capturedLogs() as events:
            for _ in range(5):
                assert await node.head() == expected(NAME)
                assert await node.block_number() == 1
                assert await node.finalized_number() == 1
    assert said(events) == []
    if how == "every third request":
        assert chain.closed_connections >= 5


@pytest.mark.parametrize("how", HOW)
@pytest_twisted.ensureDeferred
async def test_status_reads_say_no_trouble(chain: ChainNode, how: str) -> None:
    """
    The status poller, every 50 ms on the real reactor, says nothing about a node that closes
    connections under requests, and reads its status whole every time.
    """
    close_connections(chain, how)
    reactor = the_reactor()
    node = Web3Node(chain.http_url, reactor, timeout=5)
    statuses: list[Status] = []
    status = StatusPoller(StatusReader(node, reactor), None, reactor, 0.05)
    status.status_listeners.append(statuses.append)
    with capturedLogs() as events:
        status.startService()
        try:
            await wait_for(lambda: len(statuses) >= 10, 20)
        finally:
            await status.stopService()
            await node.close()
    assert said(events) == [] and status.trouble is None
    assert all(s.peers == 3 and s.finalized == 1 and s.pending == 1 for s in statuses)


@pytest.mark.parametrize("how", HOW)
@pytest_twisted.ensureDeferred
async def test_polls_say_no_trouble(chain: ChainNode, how: str) -> None:
    """
    The block poller, every 50 ms on the real reactor, says nothing about a node that closes
    connections under requests, and hands its block over.
    """
    close_connections(chain, how)
    reactor = the_reactor()
    node = Web3Node(chain.http_url, reactor, timeout=5)
    sink = Recorder()
    poller = Poller(Follower(node, sink, clock=reactor), reactor, 0.05, 0.05)
    with capturedLogs() as events:
        poller.startService()
        try:
            await wait_for(lambda: poller.polls >= 10, 20)
        finally:
            await poller.stopService()
            await node.close()
    assert said(events) == [] and poller.failures == 0
    assert sink.blocks == [expected(NAME)]


@pytest_twisted.ensureDeferred
async def test_a_real_outage_is_still_said_once_and_once_when_it_ends(chain: ChainNode) -> None:
    """
    A node closing every request (down, in effect) fails the call after the one retry, and
    the status poller says so once however many reads fail, and once when it answers again.
    """
    reactor = the_reactor()
    node = Web3Node(chain.http_url, reactor, timeout=5)
    reads: list[Status] = []
    status = StatusPoller(StatusReader(node, reactor), None, reactor, 0.05)
    status.status_listeners.append(reads.append)
    with capturedLogs() as events:
        status.startService()
        try:
            await wait_for(lambda: bool(reads), 10)
            chain.down = True
            with pytest.raises(NodeError, match="Server disconnected"):
                await node.block_number()
            closed = chain.closed_connections
            assert closed >= 2
            await wait_for(lambda: chain.closed_connections >= closed + 10, 10)
            chain.down = False
            answered = len(reads)
            await wait_for(lambda: len(reads) > answered + 2, 10)
        finally:
            await status.stopService()
            await node.close()
    texts = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]
    assert [t for t in texts if "status of node" in t] == [
        f"cannot read the status of node {chain.http_url}: Server disconnected",
        f"the status of node {chain.http_url} can be read again",
    ]
