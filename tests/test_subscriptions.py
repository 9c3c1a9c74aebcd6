"""
New heads pushed by the node: the merge of pushed headers and polls in the follower, on a
L{Clock} with an in-memory node; and the whole client against real anvil over IPC and
WebSocket, with a WebSocket proxy that can swallow notifications.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ethtwisted.client import EthClient
from ethtwisted.client.follower import Follower, Sighting
from ethtwisted.client.poller import Poller
from ethtwisted.client.subscriber import Subscriber
from ethtwisted.node import NodeError, RefusalError
from ethtwisted.node.interfaces import IHeadSource, IHeadSubscription, INode
from ethtwisted.node.lacking import says_missing
from ethtwisted.node.web3_node import Web3Node
from ethtwisted.protocol import Block
from tests.e2e import (
    assert_chain_stored_once,
    node_hashes,
    reorganised,
    start_client,
    subscribed,
    subscriber_of,
    uri_of,
)
from tests.fake_rpc import ChainNode, header_of
from tests.fakes import FakeNode, Recorder, block_hash
from tests.helpers import Committed, Server, the_reactor, wait_for
from tests.services import Anvil

INTERVAL = 1.0
GENESIS = {"number": "0x0", "hash": "0x" + "11" * 32, "parentHash": "0x" + "00" * 32,
           "timestamp": "0x0"}  # fmt: skip


@implementer(IHeadSubscription)
class FakeSubscription:
    description = "fake-node"

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.closed = False

    def close(self) -> Deferred[None]:
        self.closed = True
        if not self.ended.called:
            self.ended.callback(None)
        return succeed(None)


@implementer(INode, IHeadSource)
class PushingNode(FakeNode):
    """
    The in-memory node, which can push headers: each C{subscribe_heads} is answered when the
    test says so (L{answer}), and L{push} calls the latest subscriber.
    """

    def __init__(self) -> None:
        super().__init__()
        self.subscribers: list[Callable[[Block], object]] = []
        self.replies: list[Deferred[IHeadSubscription | None]] = []
        self.subscriptions: list[FakeSubscription] = []

    def subscribe_heads(
        self, deliver: Callable[[Block], object]
    ) -> Deferred[IHeadSubscription | None]:
        self.subscribers.append(deliver)
        d: Deferred[IHeadSubscription | None] = Deferred()
        self.replies.append(d)
        return d

    def answer(self) -> FakeSubscription:
        subscription = FakeSubscription()
        self.subscriptions.append(subscription)
        self.replies[-1].callback(subscription)
        return subscription

    def push(self, *blocks: Block) -> None:
        for block in blocks:
            self.subscribers[-1](block)


class Watched:
    """
    A poller with a subscriber on a Clock over a L{PushingNode}, and what it handed over.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.node = PushingNode()
        self.sink = Recorder()
        self.follower = Follower(self.node, self.sink, 256, clock=self.clock)
        self.sightings: list[Sighting] = []
        self.follower.sighting_listeners.append(self.sightings.append)
        self.subscriber = Subscriber(self.follower, self.clock)
        self.poller = Poller(self.follower, self.clock, INTERVAL, subscriber=self.subscriber)

    def start(self) -> FakeSubscription:
        self.poller.startService()
        assert self.sink.blocks == [self.node.tip]
        return self.node.answer()

    def sources(self) -> list[tuple[int, str]]:
        return [(s.block.number, s.source) for s in self.sightings]

    def stop(self) -> None:
        self.poller.stopService()
        assert not self.clock.getDelayedCalls()


@pytest.fixture
def watched() -> Iterator[Watched]:
    with capturedLogs() as events:
        w = Watched()
        yield w
        w.stop()
    failures = [formatEvent(e) for e in events if "log_failure" in e]
    assert not failures, failures


def test_the_fakes_provide_the_interfaces() -> None:
    """
    The pushing node and its subscription implement what the client uses.
    """
    node = PushingNode()
    assert verifyObject(IHeadSource, node) and verifyObject(INode, node)
    assert verifyObject(IHeadSubscription, FakeSubscription())


def test_a_pushed_header_that_extends_the_last_block_is_handed_over_at_once(
    watched: Watched,
) -> None:
    """
    A header that extends the last block handed over is handed over when it arrives, with no
    call to the node, and recorded as learnt by subscription at the clock's time.
    """
    watched.start()
    calls = len(watched.node.calls)
    watched.clock.advance(0.3)
    watched.node.push(watched.node.mine())
    assert watched.sink.numbers == [0, 1]
    assert len(watched.node.calls) == calls
    assert watched.sightings[-1].source == "subscription"
    assert watched.sightings[-1].seen == 0.3


def test_duplicate_and_late_headers_are_handed_over_once(watched: Watched) -> None:
    """
    The same header pushed twice, and an older one pushed late, are not handed over again,
    nor do they cost a call to the node.
    """
    watched.start()
    one, two = watched.node.mine(), watched.node.mine()
    watched.node.push(one, two)
    calls = len(watched.node.calls)
    watched.node.push(two, one)
    assert len(watched.node.calls) == calls
    watched.clock.advance(INTERVAL)
    watched.node.push(two)
    assert watched.sink.blocks == watched.node.canonical
    assert watched.sources() == [(0, "poll"), (1, "subscription"), (2, "subscription")]


def test_headers_out_of_order_are_backfilled_once_in_order(watched: Watched) -> None:
    """
    A header that skips blocks makes the follower ask the node for its head and backfill the
    gap in order; the skipped headers, pushed afterwards, are not handed over again.
    """
    watched.start()
    watched.node.mine(3)
    one, two, three = watched.node.canonical[1:]
    watched.node.push(three, one, two)
    assert watched.sink.blocks == watched.node.canonical
    assert watched.sources() == [(0, "poll"), (1, "backfill"), (2, "backfill"),
                                 (3, "subscription")]  # fmt: skip


def test_a_header_of_a_block_the_node_no_longer_has_is_not_handed_over(
    watched: Watched,
) -> None:
    """
    A pushed header that does not extend the last block (here of a branch the node dropped)
    is only a sign: what the node answers for its head is handed over, never that header.
    """
    watched.start()
    genesis = watched.node.tip
    dropped_parent = block_hash(genesis.hash, 1, "dropped")
    dropped = Block(genesis.chain_id, 2, block_hash(dropped_parent, 2, "dropped"),
                    dropped_parent, 1_700_000_002)  # fmt: skip
    canonical = watched.node.mine()
    watched.node.push(dropped)
    assert watched.sink.blocks == [genesis, canonical]
    assert watched.sources()[-1] == (1, "poll")


def test_a_same_height_reorg_pushed_is_followed(watched: Watched) -> None:
    """
    A pushed header at the height of the last block with another hash (geth's one header after
    a reorg) leads to the node's chain being followed from the fork.
    """
    watched.start()
    watched.node.push(*(watched.node.mine() for _ in range(3)))
    watched.node.reorg(2)
    watched.node.push(watched.node.tip)
    numbers = watched.sink.numbers
    assert numbers == [0, 1, 2, 3, 2, 3]
    assert watched.sink.blocks[-2:] == watched.node.canonical[2:]


def test_a_reorg_to_a_shorter_chain_pushed_is_followed_at_once(watched: Watched) -> None:
    """
    Pushed headers below the last block that are not the blocks handed over there (the node
    replaced blocks 1-3 by two others) lead, before any poll, to the node's chain being
    followed from the fork, as a reorg of depth 3; the same headers pushed again are not
    news and cost no call to the node.
    """
    depths: list[int] = []
    watched.follower.reorg_listeners.append(depths.append)
    watched.start()
    watched.node.push(*(watched.node.mine() for _ in range(3)))
    watched.node.reorg(3, length=2)
    watched.node.push(*watched.node.canonical[1:])
    assert watched.sink.numbers == [0, 1, 2, 3, 1, 2]
    assert watched.sink.blocks[-2:] == watched.node.canonical[1:]
    assert depths == [3]
    calls = len(watched.node.calls)
    watched.node.push(*watched.node.canonical[1:])
    assert len(watched.node.calls) == calls


def test_a_header_pushed_before_the_subscribe_reply_is_handed_over(watched: Watched) -> None:
    """
    A notification that arrives before the reply to the subscribe request is handed over at
    once, and the catch-up after the reply sends nothing twice.
    """
    watched.poller.startService()
    watched.node.push(watched.node.mine())
    assert watched.sink.numbers == [0, 1]
    watched.node.answer()
    assert watched.subscriber.active
    watched.clock.advance(INTERVAL)
    assert watched.sink.numbers == [0, 1]


def test_a_quiet_chain_is_not_a_silent_subscription(watched: Watched) -> None:
    """
    Polls that see no new block never count a miss nor remake the subscription.
    """
    subscription = watched.start()
    watched.clock.pump([INTERVAL] * 20)
    assert watched.subscriber.misses == 0 and watched.subscriber.resubscriptions == 0
    assert not subscription.closed and len(watched.node.subscribers) == 1


def test_a_silent_subscription_is_remade_and_the_poll_delivers(watched: Watched) -> None:
    """
    A head the subscription has not delivered is left to it for one poll, then delivered by
    the next poll (a miss); the subscription is closed and made again; going quiet and coming
    back are logged once each.
    """
    with capturedLogs() as events:
        first = watched.start()
        block = watched.node.mine()
        watched.clock.advance(INTERVAL)
        assert watched.sink.numbers == [0]
        watched.clock.advance(INTERVAL)
        assert watched.sink.numbers == [0, 1]
        assert watched.sources()[-1] == (1, "poll")
        assert watched.subscriber.misses == 1 and watched.subscriber.resubscriptions == 1
        assert first.closed and len(watched.node.subscribers) == 2
        watched.node.answer()
        watched.node.mine(2)
        watched.clock.advance(INTERVAL)  # not delivered: a poll waits for the new one
        watched.clock.advance(INTERVAL)  # missed again: said once
        watched.node.answer()
        watched.node.push(watched.node.mine())
        watched.node.push(watched.node.mine())
        watched.clock.advance(INTERVAL)
    assert watched.sink.blocks == watched.node.canonical
    assert watched.sources()[-2:] == [(4, "subscription"), (5, "subscription")]
    assert block in watched.sink.blocks
    texts = [formatEvent(e) for e in events]
    assert len([t for t in texts if "no new heads by subscription" in t]) == 1, texts
    assert len([t for t in texts if "arrive by subscription again" in t]) == 1, texts


def test_an_ended_subscription_is_made_again_and_catches_up(watched: Watched) -> None:
    """
    When the node ends the subscription (it hung up), a new one is asked for at once, and once
    it is live the blocks made meanwhile are handed over by a catch-up.
    """
    subscription = watched.start()
    subscription.ended.errback(NodeError("the node hung up"))
    assert len(watched.node.subscribers) == 2 and not watched.subscriber.active
    watched.node.mine(2)
    watched.node.answer()
    assert watched.sink.blocks == watched.node.canonical
    assert watched.subscriber.resubscriptions == 1


def test_without_push_the_polls_deliver_at_once() -> None:
    """
    A node that cannot push (HTTP): the subscriber asks once, and each poll delivers what it
    sees at once.
    """
    w = Watched()
    w.poller.startService()
    w.node.replies[-1].callback(None)
    w.node.mine()
    w.clock.advance(INTERVAL)
    w.node.mine()
    w.clock.advance(INTERVAL)
    assert w.sink.numbers == [0, 1, 2]
    assert len(w.node.subscribers) == 1 and w.subscriber.misses == 0
    w.stop()


def test_a_node_without_eth_subscribe_is_polled_and_asked_again_less_often() -> None:
    """
    A node answering eth_subscribe with "method not found" (EthereumJS's WebSocket) is polled,
    each block delivered at once, and asked to subscribe again after 60 s, then 120, 240,
    480 s and every 600 s, not at each poll; that is said once, and once when it subscribes.
    """
    refusal = {"code": -32601, "message": "Method not found"}
    with capturedLogs() as events:
        w = Watched()
        w.poller.startService()
        asked: list[int] = []
        for second in range(2200):
            if len(asked) < len(w.node.replies):
                asked.append(second)
                w.node.replies[-1].errback(RefusalError("node error: Method not found", refusal))
            if second % 100 == 0:
                w.node.mine()
            w.clock.advance(INTERVAL)
        assert asked == [0, 60, 180, 420, 900, 1500, 2100]
        assert w.sink.blocks == w.node.canonical and not w.subscriber.active
        w.clock.advance(2700 - w.clock.seconds())
        w.node.answer()
        assert w.subscriber.active
        w.node.push(w.node.mine())
        assert w.sightings[-1].source == "subscription"
        w.stop()
    texts = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]
    assert [t for t in texts if "eth_subscribe" in t or "subscribe" in t] == [
        "fake-node has no eth_subscribe (node error: Method not found): polling it, and asking "
        "again in 60 s, then less often (at most every 600 s)",
        "fake-node subscribes to new heads now",
    ]


def test_a_node_without_eth_subscribe_does_not_stop_another_from_subscribing() -> None:
    """
    After a failover, the node now in use is asked to subscribe at once, whatever the one
    before lacked.
    """
    w = Watched()
    w.poller.startService()
    w.node.replies[-1].errback(RefusalError("node error: Method not found", {"code": -32601}))
    w.clock.advance(INTERVAL)
    assert len(w.node.replies) == 1
    w.node.description = "another-node"
    w.clock.advance(INTERVAL)
    assert len(w.node.replies) == 2
    w.node.answer()
    assert w.subscriber.active
    w.stop()


@pytest_twisted.ensureDeferred
async def test_a_real_refusal_of_eth_subscribe_is_kept_whole() -> None:
    """
    Over a real WebSocket, a node answering eth_subscribe with -32601 fails the subscription
    with a RefusalError holding the node's error, which says the method is missing.
    """
    chain = ChainNode(1, [header_of(GENESIS)])
    chain.missing.add("eth_subscribe")
    await chain.start()
    node = Web3Node(chain.ws_url, the_reactor(), timeout=5)
    try:
        with pytest.raises(RefusalError) as info:
            await node.subscribe_heads(lambda block: None)
    finally:
        await node.close()
        await chain.stop()
    assert str(info.value) == "node error: Method not found"
    assert says_missing(info.value.error)
    assert chain.calls["eth_subscribe"] == 1


@pytest_twisted.ensureDeferred
async def test_a_node_silent_to_eth_subscribe_is_a_node_error_at_the_timeout() -> None:
    """
    Over a real WebSocket, a node that reads eth_subscribe and never answers fails the
    subscription with a NodeError saying so once the node's timeout has passed (not with
    asyncio's CancelledError, taken for a bug of ours).
    """
    chain = ChainNode(1, [header_of(GENESIS)])
    chain.silent.add("eth_subscribe")
    await chain.start()
    node = Web3Node(chain.ws_url, the_reactor(), timeout=0.5)
    try:
        with pytest.raises(NodeError) as info:
            await node.subscribe_heads(lambda block: None)
    finally:
        await node.close()
        await chain.stop()
    assert str(info.value) == "no answer to eth_subscribe within 0.5 s"
    assert chain.calls["eth_subscribe"] == 1


@pytest_twisted.ensureDeferred
async def test_a_subscriber_stopped_while_subscribing_says_nothing() -> None:
    """
    A subscriber stopped while its node has not answered eth_subscribe yet cancels the
    attempt, which ends in Twisted's CancelledError: nothing is logged as a bug (web3's future
    failed with asyncio's own CancelledError before, which the subscriber logged as one).
    """
    chain = ChainNode(1, [header_of(GENESIS)])
    chain.silent.add("eth_subscribe")
    await chain.start()
    node = Web3Node(chain.ws_url, the_reactor(), timeout=30)
    subscriber = Subscriber(Follower(node, Recorder(), clock=the_reactor()), the_reactor())
    try:
        with capturedLogs() as events:
            await Deferred.fromCoroutine(subscriber.poll())
            await wait_for(lambda: chain.calls.get("eth_subscribe") == 1, what="eth_subscribe")
            await subscriber.stop()
            # The attempt ends once asyncio has run the cancelled future's callbacks.
            await wait_for(lambda: subscriber._subscribing is None, what="the attempt ended")
    finally:
        await node.close()
        await chain.stop()
    assert [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn] == []


# -- against anvil ----------------------------------------------------------------------------


PUSHING = ["ipc", "ws"]


def watch_sources(client: EthClient) -> list[Sighting]:
    sightings: list[Sighting] = []
    client.poller.follower.sighting_listeners.append(sightings.append)
    return sightings


@pytest.mark.parametrize("transport", PUSHING)
@pytest_twisted.ensureDeferred
async def test_every_block_stored_once_by_subscription(
    anvil: Anvil, server: tuple[Server, Committed], transport: str
) -> None:
    """
    At the default interval, every block mined one at a time reaches SQL once, learnt by
    subscription; a jump is backfilled.
    """
    srv, committed = server
    client = start_client(uri_of(anvil, transport), srv.port, "--interval", "1")
    sightings = watch_sources(client)
    try:
        await committed.wait_for(node_hashes(anvil).values())
        await subscribed(client)
        for _ in range(5):
            anvil.mine()
            await committed.wait_for([anvil.rpc("eth_getBlockByNumber", "latest", False)["hash"]])
        anvil.mine(5)
        await committed.wait_for(node_hashes(anvil).values())
    finally:
        await client.stopService()
    assert_chain_stored_once(srv, anvil)
    assert [s.source for s in sightings[1:6]] == ["subscription"] * 5
    assert sightings[-1].block.number == 10


@pytest.mark.parametrize("transport", PUSHING)
@pytest_twisted.ensureDeferred
async def test_a_reorg_is_followed_with_subscriptions(
    anvil: Anvil, server: tuple[Server, Committed], transport: str
) -> None:
    """
    After evm_revert to a snapshot and new blocks with other timestamps, the client follows
    the new chain from the fork, at the default interval.
    """
    srv, committed = server
    with capturedLogs() as events:
        client = start_client(uri_of(anvil, transport), srv.port, "--interval", "1")
        try:
            await committed.wait_for(node_hashes(anvil).values())
            await subscribed(client)
            await reorganised(anvil, committed, 3, 3, 4)
        finally:
            await client.stopService()
    reorgs = [formatEvent(e) for e in events if "reorg" in e.get("log_format", "")]
    assert len(reorgs) == 1 and "after block 3" in reorgs[0], reorgs


def texts_with(events: Sequence[LogEvent], text: str) -> list[str]:
    return [t for t in (formatEvent(e) for e in events) if text in t]


@pytest.mark.parametrize("transport", PUSHING)
@pytest_twisted.ensureDeferred
async def test_node_restart_subscribes_again(
    anvil: Anvil, server: tuple[Server, Committed], transport: str
) -> None:
    """
    When the node restarts, the subscription ends, is made again once the node is back, and
    new blocks arrive by subscription again; each change is said once.
    """
    srv, committed = server
    with capturedLogs() as events:
        client = start_client(uri_of(anvil, transport), srv.port, "--interval", "0.2")
        sightings = watch_sources(client)
        try:
            await committed.wait_for(node_hashes(anvil).values())
            await subscribed(client)
            anvil.stop()
            await wait_for(
                lambda: bool(texts_with(events, "no new heads by subscription")),
                what="the client saying the subscription ended",
            )
            anvil.start()
            anvil.mine(5)
            await committed.wait_for(node_hashes(anvil).values())
            await subscribed(client)
            anvil.mine()
            await committed.wait_for(node_hashes(anvil).values())
        finally:
            await client.stopService()
    assert len(texts_with(events, "no new heads by subscription")) == 1
    assert len(texts_with(events, "arrive by subscription again")) == 1
    assert sightings[-1].source == "subscription"


class SwallowingProxy:
    """
    A WebSocket proxy in front of anvil: it passes every message both ways, except that on the
    connections open when L{swallow} was called it drops the notifications (C{eth_subscription})
    and keeps the socket open.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.open: set[Any] = set()
        self.swallowing: set[Any] = set()
        self.swallowed = 0
        self.server: Any = None
        self.url = ""

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        self.server = await serve(self._serve, "127.0.0.1", 0)
        port = next(iter(self.server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"

    def swallow(self) -> None:
        self.swallowing |= self.open

    async def _serve(self, downstream: Any) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.upstream, max_size=None) as upstream:
            self.open.add(downstream)
            passes = [asyncio.ensure_future(self._pass(downstream, upstream, False)),
                      asyncio.ensure_future(self._pass(upstream, downstream, True))]  # fmt: skip
            try:
                await asyncio.wait(passes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.open.discard(downstream)
                for task in passes:
                    task.cancel()
                await asyncio.gather(*passes, return_exceptions=True)

    async def _pass(self, source: Any, sink: Any, from_node: bool) -> None:
        async for message in source:
            if (
                from_node
                and sink in self.swallowing
                and b"eth_subscription"
                in (message.encode() if isinstance(message, str) else message)
            ):
                self.swallowed += 1
                continue
            await sink.send(message)

    async def stop(self) -> None:
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), 5)


@pytest_twisted.async_yield_fixture
async def proxy(anvil: Anvil) -> AsyncIterator[SwallowingProxy]:
    p = SwallowingProxy(anvil.ws_url)
    await Deferred.fromFuture(asyncio.ensure_future(p.start()))
    yield p
    await Deferred.fromFuture(asyncio.ensure_future(p.stop()))


@pytest_twisted.ensureDeferred
async def test_a_subscription_gone_quiet_is_remade(
    anvil: Anvil, server: tuple[Server, Committed], proxy: SwallowingProxy
) -> None:
    """
    Through a proxy that swallows notifications while keeping the socket open: the blocks still
    reach SQL once (by poll), the subscription is remade on a new connection, and the next
    blocks are pushed again.
    """
    srv, committed = server
    with capturedLogs() as events:
        client = start_client(proxy.url, srv.port, "--interval", "0.2")
        sightings = watch_sources(client)
        try:
            await committed.wait_for(node_hashes(anvil).values())
            await subscribed(client)
            proxy.swallow()
            anvil.mine()
            anvil.mine()
            await committed.wait_for(node_hashes(anvil).values())
            remade = subscriber_of(client)
            await wait_for(lambda: bool(remade.resubscriptions and remade.active), 5)
            after = len(sightings)
            # The 0.2 s poll may still win the race for one block; not for five in a row.
            for _ in range(5):
                anvil.mine()
                await committed.wait_for(node_hashes(anvil).values())
                if any(s.source == "subscription" for s in sightings[after:]):
                    break
        finally:
            await client.stopService()
    assert proxy.swallowed >= 1
    assert subscriber_of(client).misses >= 1
    assert_chain_stored_once(srv, anvil)
    assert any(s.source == "subscription" for s in sightings[after:])
    assert len(texts_with(events, "no new heads by subscription")) == 1
    assert len(texts_with(events, "arrive by subscription again")) == 1
