"""
eth-client without a network or a node: the follower against an in-memory chain, the poller on
a Clock, the outbox and its spool, the connection against a tiny acknowledging peer, and the
options.  The real node and server are exercised in test_client_e2e.py.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import pkgutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import pytest_twisted
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface.verify import verifyObject

from ethtwisted import client_tap
from ethtwisted.client import EthClient
from ethtwisted.client.delivery import ClientFactory, ClientProtocol, Delivery, ReconnectingService
from ethtwisted.client.failover import ServerList
from ethtwisted.client.follower import Checkpoint, Follower, Sighting
from ethtwisted.client.oneshot import OneShotDelivery
from ethtwisted.client.outbox import Outbox, queue_blocks
from ethtwisted.client.poller import Poller
from ethtwisted.client.spool import Spool, SpoolError
from ethtwisted.frames import Ack, Hello, Refusal, encode_control
from ethtwisted.frames import Sighting as SightingFrame
from ethtwisted.framing import FrameProtocol
from ethtwisted.node import NodeError
from ethtwisted.node.interfaces import INode
from ethtwisted.protocol import Block, block_html, block_json, payload_hash
from tests.fakes import AckingPeer, FakeEndpoint, FakeNode, OneShotServer, Recorder, one_server
from tests.helpers import Logs, options, usage_error, wait_for, wired
from tests.wire import feed, netstring

# -- helpers ----------------------------------------------------------------------------------


def follower(
    node: FakeNode,
    max_backfill: int = 256,
    checkpoint: Checkpoint | None = None,
    clock: Clock | None = None,
) -> tuple[Follower, Recorder]:
    sink = Recorder()
    return Follower(node, sink, max_backfill, checkpoint, clock=clock or Clock()), sink


class Following(NamedTuple):
    """A chain, its follower, and the follower's sink."""

    node: FakeNode
    follower: Follower
    sink: Recorder


@pytest.fixture
def following() -> Following:
    """
    A fresh L{FakeNode} (its genesis only), a follower of it with the default bounds and no
    checkpoint (not polled yet), and the sink it hands blocks to.
    """
    node = FakeNode()
    return Following(node, *follower(node))


async def followed_one_by_one(node: FakeNode, f: Follower, sink: Recorder, blocks: int) -> None:
    """
    Follow C{node} once (its head is sent), then mine C{blocks} blocks one at a time,
    following each; the sink is left empty.
    """
    await f.follow()
    for _ in range(blocks):
        node.mine()
        await f.follow()
    sink.take()


def connect(factory: Factory, peer: FrameProtocol) -> tuple[ClientProtocol, iosim.IOPump]:
    """
    A connection made by C{factory} to C{peer}, through an in-memory pump.
    """
    client = factory.buildProtocol(None)
    assert isinstance(client, ClientProtocol)
    pump = iosim.connect(peer, iosim.makeFakeServer(peer), client, iosim.makeFakeClient(client))
    return client, pump


def json_payload(block: Block) -> bytes:
    return block_json(block)


def payloads(n: int, prefix: str = "m") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


def fired(d: Deferred[Any]) -> Any:
    """
    The result of a Deferred that has fired already.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


@pytest.fixture
def reactor() -> Any:
    """
    The reactor pytest-twisted runs, for the spool's thread to report back to.
    """
    from twisted.internet import reactor

    return reactor


def test_every_client_module_logs_as_the_client() -> None:
    """
    Every module of the client package logs in the namespace C{ethtwisted.client}, so the
    lines twistd writes read C{[ethtwisted.client#level]} whichever module they come from.
    """
    package = importlib.import_module("ethtwisted.client")
    names = [m.name for m in pkgutil.iter_modules(package.__path__, "ethtwisted.client.")]
    assert len(names) >= 6
    for name in ["ethtwisted.client", *names]:
        assert importlib.import_module(name).log.namespace == "ethtwisted.client", name


# -- following the chain ----------------------------------------------------------------------


def test_fake_node_provides_inode() -> None:
    """
    The fake node implements the interface the client uses, so these tests mean something.
    """
    assert verifyObject(INode, FakeNode())


@pytest_twisted.ensureDeferred
async def test_start_sends_the_current_head_only(logs: Logs, following: Following) -> None:
    """
    A client without a checkpoint sends the node's current head, not the history before it.
    """
    node, f, sink = following
    node.mine(10)
    await f.follow()
    assert sink.blocks == [node.tip]
    await f.follow()
    assert sink.blocks == [node.tip]
    assert node.calls == ["head", "head"]


@pytest_twisted.ensureDeferred
async def test_each_new_block_is_sent_once_in_order(logs: Logs, following: Following) -> None:
    """
    One block per poll: each is sent once, without fetching anything but the head.
    """
    node, f, sink = following
    await f.follow()
    for _ in range(5):
        node.mine()
        await f.follow()
        await f.follow()
    assert sink.blocks == node.canonical
    assert all(call == "head" for call in node.calls)


@pytest_twisted.ensureDeferred
async def test_a_jump_is_backfilled_in_order(logs: Logs) -> None:
    """
    When the head moved by several blocks, the ones in between are fetched and sent in order.
    """
    node = FakeNode()
    f, sink = follower(node, max_backfill=10)
    await f.follow()
    node.mine(10)
    await f.follow()
    assert sink.blocks == node.canonical
    assert not logs.containing("skipped")


@pytest_twisted.ensureDeferred
async def test_a_jump_beyond_max_backfill_sends_the_latest_and_logs_the_rest(
    logs: Logs,
) -> None:
    """
    A jump of more than C{max_backfill} blocks sends the last C{max_backfill} of them, in
    order, and says which were skipped.
    """
    node = FakeNode()
    f, sink = follower(node, max_backfill=5)
    await f.follow()
    node.mine(12)
    await f.follow()
    assert sink.numbers == [0, 8, 9, 10, 11, 12]
    assert len(node.calls) == 1 + 1 + 4  # head, head, 4 parents
    [skipped] = logs.containing("skipped", LogLevel.warn)
    assert "7 blocks (1 to 7)" in skipped


@pytest_twisted.ensureDeferred
async def test_reorg_at_the_same_height(logs: Logs, following: Following) -> None:
    """
    A new hash at the height already sent replaces that block: the new one is sent, and a reorg
    of depth 1 is logged.
    """
    node, f, sink = following
    node.mine(5)
    await f.follow()
    node.reorg(1)
    await f.follow()
    assert [b.number for b in sink.blocks] == [5, 5]
    assert sink.blocks[1] == node.tip != sink.blocks[0]
    [reorg] = logs.containing("reorg", LogLevel.info)
    assert "depth 1" in reorg and "after block 4" in reorg


@pytest_twisted.ensureDeferred
async def test_deeper_reorg_sends_the_new_chain_from_the_fork(
    logs: Logs, following: Following
) -> None:
    """
    After a reorg replacing 3 blocks with 5, the walk goes back to the fork and the 5 new blocks
    are sent in order; the depth is logged.
    """
    node, f, sink = following
    await followed_one_by_one(node, f, sink, 6)
    node.reorg(3, 5)
    await f.follow()
    assert sink.blocks == node.canonical[4:]
    assert [b.number for b in sink.blocks] == [4, 5, 6, 7, 8]
    [reorg] = logs.containing("reorg", LogLevel.info)
    assert "depth 3" in reorg and "blocks 4 to 6" in reorg
    assert node.calls.count("finalized") == 1


@pytest_twisted.ensureDeferred
async def test_reorg_to_a_shorter_chain(logs: Logs, following: Following) -> None:
    """
    When the node goes back to a block already sent (a revert), nothing is sent; the next blocks
    mined on top are sent, though their heights were used before.
    """
    node, f, sink = following
    await followed_one_by_one(node, f, sink, 5)
    node.revert(2)
    await f.follow()
    assert sink.blocks == []
    assert logs.containing("reorg of depth 3")
    node.mine(2, salt="again")
    await f.follow()
    assert sink.blocks == node.canonical[3:5]
    assert [b.number for b in sink.blocks] == [3, 4]


@pytest_twisted.ensureDeferred
async def test_reorg_never_walks_past_the_finalized_block(
    logs: Logs, following: Following
) -> None:
    """
    The walk back stops at the node's finalized block: the new chain is sent from there on, and
    the limit is logged.
    """
    node, f, sink = following
    node.mine(10)
    await followed_one_by_one(node, f, sink, 5)
    # A reorg going below a block the node calls finalized (which a sane node never does).
    node.reorg(6, 7)
    node.finalized = 12
    await f.follow()
    asked = [c for c in node.calls if c.startswith("hash ")]
    assert min(node.blocks[c[5:]].number for c in asked) == 12
    assert [b.number for b in sink.blocks] == list(range(12, 17))
    [warning] = logs.containing("finalized block 12", LogLevel.warn)
    assert "deeper than" in warning


@pytest_twisted.ensureDeferred
async def test_reorg_deeper_than_max_backfill_is_logged(logs: Logs) -> None:
    """
    A reorg deeper than C{max_backfill} sends what the walk reached and says it could not find
    the fork.
    """
    node = FakeNode()
    f, sink = follower(node, max_backfill=3)
    await followed_one_by_one(node, f, sink, 8)
    node.reorg(6)
    await f.follow()
    assert [b.number for b in sink.blocks] == [6, 7, 8]
    assert logs.containing("deeper than --max-backfill 3", LogLevel.warn)


@pytest_twisted.ensureDeferred
async def test_a_new_chain_from_genesis_is_followed(logs: Logs, following: Following) -> None:
    """
    A node restarted on a new chain (same chain id, new genesis) is followed from its genesis:
    the walk stops at block 0.
    """
    node, f, sink = following
    await followed_one_by_one(node, f, sink, 4)
    fresh = FakeNode(salt="restarted")
    fresh.mine(2, salt="restarted")
    f.node = fresh
    await f.follow()
    assert sink.blocks == fresh.canonical
    assert logs.containing("new from its genesis on", LogLevel.warn)
    assert logs.containing("5 blocks sent before")
    fresh.mine(1, salt="restarted")
    await f.follow()
    assert sink.blocks[-1] == fresh.tip


@pytest_twisted.ensureDeferred
async def test_another_chain_id_starts_afresh(logs: Logs, following: Following) -> None:
    """
    A node on another chain (another chain id) is followed from its head, with a warning.
    """
    node, f, sink = following
    node.mine(3)
    await f.follow()
    other = FakeNode(chain_id=5)
    other.mine(7)
    f.node = other
    await f.follow()
    assert sink.blocks == [node.tip, other.tip]
    assert logs.containing("on chain 5, not 31337", LogLevel.warn)


@pytest_twisted.ensureDeferred
async def test_a_failing_sink_keeps_the_follower_where_it_was(
    logs: Logs, following: Following
) -> None:
    """
    When the blocks cannot be queued, the checkpoint does not move: the next poll hands the
    same blocks over again.
    """
    node, f, sink = following
    await f.follow()
    node.mine(3)
    sink.failing = True
    with pytest.raises(SpoolError):
        await f.follow()
    sink.failing = False
    await f.follow()
    assert sink.blocks == node.canonical


@pytest_twisted.ensureDeferred
async def test_an_unknown_parent_is_node_trouble(logs: Logs, following: Following) -> None:
    """
    A node that does not know the parent of its own block fails the poll with L{NodeError}.
    """
    node, f, _sink = following
    await f.follow()
    node.mine(3)
    del node.blocks[node.canonical[2].hash]
    with pytest.raises(NodeError, match="does not know block"):
        await f.follow()


def test_checkpoint_round_trip() -> None:
    """
    A checkpoint survives its JSON form; a malformed one is refused with L{ValueError}.
    """
    node = FakeNode()
    node.mine(3)
    checkpoint = Checkpoint(node.tip, {b.number: b.hash for b in node.canonical})
    again = Checkpoint.from_json(json.loads(json.dumps(checkpoint.to_json())))
    assert again == checkpoint
    assert Checkpoint.from_json(Checkpoint().to_json()) == Checkpoint()
    for bad in [{}, {"version": 2, "last": None, "recent": []}, {"version": 1, "last": {}}]:
        with pytest.raises(ValueError):
            Checkpoint.from_json(bad)


# -- the poller -------------------------------------------------------------------------------


def test_polls_every_interval_never_overlapping(logs: Logs, following: Following) -> None:
    """
    A poll starts at once and then every interval; while one waits for the node, no other
    starts.  Stopping waits for the poll in flight to be cancelled.
    """
    clock = Clock()
    node, f, sink = following
    poller = Poller(f, clock, interval=0.5)
    poller.startService()
    assert node.calls == ["head"]
    for _ in range(4):
        clock.advance(0.5)
        node.mine()
    assert node.calls == ["head"] * 5
    node.hold = True
    clock.advance(0.5)
    clock.advance(0.5)
    clock.advance(0.5)
    assert node.calls == ["head"] * 6
    node.hold = False
    node.release()
    assert sink.blocks == node.canonical
    stopped = poller.stopService()
    assert stopped.called
    assert not clock.getDelayedCalls()


def test_node_trouble_is_logged_once_and_retried_with_capped_backoff(
    logs: Logs, following: Following
) -> None:
    """
    While the node is down, polls are spaced out (doubling, capped); its going away and coming
    back are logged once each; the blocks it made meanwhile are sent when it is back.
    """
    clock = Clock()
    node, f, sink = following
    poller = Poller(f, clock, interval=1.0, max_backoff=8.0)
    poller.startService()
    node.down = "Connection refused"
    times: list[float] = []
    for _ in range(200):
        clock.advance(0.5)
        if len(node.calls) > len(times) + 1:
            times.append(clock.seconds())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == sorted(gaps)
    assert gaps[0] <= 2.0 and 8.0 <= max(gaps) <= 9.0
    assert len(logs.containing("does not serve us", LogLevel.warn)) == 1
    node.down = None
    node.mine(3)
    clock.advance(9.0)
    assert sink.blocks == node.canonical
    [back] = logs.containing("answers again")
    assert "block 3" in back
    poller.stopService()
    assert not clock.getDelayedCalls()


def test_stopping_cancels_a_backoff_wait(logs: Logs, following: Following) -> None:
    """
    Stopping the poller while it waits after a failure ends at once, leaving no timer behind.
    """
    clock = Clock()
    node, f, _sink = following
    node.down = "timeout"
    poller = Poller(f, clock, interval=1.0)
    poller.startService()
    clock.advance(1.5)
    stopped = poller.stopService()
    assert stopped.called
    assert not clock.getDelayedCalls()


@pytest.mark.expected_log_errors("^bug while following ")
def test_a_bug_is_logged_once_and_polling_goes_on(logs: Logs, following: Following) -> None:
    """
    An unexpected exception is logged with its traceback once, and polling carries on.
    """
    clock = Clock()
    node, f, sink = following

    def broken(sightings: Sequence[Sighting], checkpoint: Checkpoint) -> None:
        raise RuntimeError("bug")

    f.sink = broken
    poller = Poller(f, clock, interval=1.0, max_backoff=2.0)
    poller.startService()
    clock.advance(10)
    assert len([e for e in logs.events if "log_failure" in e]) == 1
    f.sink = sink
    clock.advance(3)
    assert sink.blocks == [node.tip]
    poller.stopService()
    assert not clock.getDelayedCalls()


# -- the outbox and the spool -----------------------------------------------------------------


def test_outbox_keeps_order_and_each_payload_once(logs: Logs) -> None:
    """
    Payloads stay in the order queued, a payload already queued is not queued twice, and an
    acknowledgement removes exactly its payload.
    """
    outbox = Outbox(10)
    seen: list[bytes] = []
    outbox.queue_listeners.append(seen.extend)
    assert fired(outbox.put([b"a", b"b"])) == [b"a", b"b"]
    assert fired(outbox.put([b"b", b"c"])) == [b"c"]
    assert outbox.pending() == [b"a", b"b", b"c"] == seen
    assert outbox.ack(payload_hash(b"b"))
    assert not outbox.ack(payload_hash(b"b"))
    assert not outbox.ack("f" * 64)
    assert outbox.pending() == [b"a", b"c"]
    assert outbox.first() == b"a"


def test_outbox_drops_the_oldest_past_its_bound(logs: Logs) -> None:
    """
    Past C{max_queue}, the oldest payloads go, with one warning saying how many, and a
    summary once the server acknowledges again.
    """
    outbox = Outbox(5)
    outbox.put(payloads(3))
    outbox.put(payloads(4, "n"))
    assert outbox.pending() == [b"m2", b"n0", b"n1", b"n2", b"n3"]
    outbox.put([b"x"])
    outbox.put([b"y"])
    assert len(outbox) == 5
    [warning] = logs.containing("outbox full", LogLevel.warn)
    assert "dropped the 2 oldest" in warning
    outbox.ack(payload_hash(b"y"))
    [summary] = logs.containing("in all")
    assert "dropped 4" in summary
    outbox.put([b"z"])
    assert len(logs.containing("outbox full")) == 1


def test_outbox_empty_fires_when_all_are_acknowledged() -> None:
    """
    L{Outbox.empty} fires once the last payload is acknowledged; a cancelled wait is
    forgotten.
    """
    outbox = Outbox(10)
    assert outbox.empty().called
    outbox.put([b"a", b"b"])
    waiting = outbox.empty()
    given_up = outbox.empty()
    given_up.addErrback(lambda f: f.trap(CancelledError))
    given_up.cancel()
    outbox.ack(payload_hash(b"a"))
    assert not waiting.called
    outbox.ack(payload_hash(b"b"))
    assert waiting.called


@pytest_twisted.ensureDeferred
async def test_spool_round_trip(tmp_path: Path, logs: Logs, reactor: Any) -> None:
    """
    What is queued with a spool, and the checkpoint, come back in a new outbox over the same
    directory, in order, without the groups acknowledged whole (a payload acknowledged in a
    group that was not is sent again: the server keeps it once).
    """
    node = FakeNode()
    node.mine(2)
    checkpoint = Checkpoint(node.tip, {b.number: b.hash for b in node.canonical})
    outbox = Outbox(100, Spool(str(tmp_path), reactor))
    await outbox.put([b"a", b"b"], Checkpoint())
    await outbox.put([b"c"], checkpoint)
    outbox.ack(payload_hash(b"b"))
    await outbox.close()

    again = Outbox(100, Spool(str(tmp_path), reactor))
    assert again.restore() == checkpoint
    assert again.pending() == [b"a", b"b", b"c"]
    await again.put([b"d"])
    for payload in [b"a", b"b", b"c", b"d"]:
        again.ack(payload_hash(payload))
    await again.close()
    assert sorted(os.listdir(tmp_path)) == ["lock", "state.json"]
    assert logs.containing("3 unacknowledged messages restored")


@pytest_twisted.ensureDeferred
async def test_spool_restore_applies_the_bound(tmp_path: Path, logs: Logs, reactor: Any) -> None:
    """
    A spool holding more than C{max_queue} payloads gives back the newest C{max_queue}.
    """
    outbox = Outbox(100, Spool(str(tmp_path), reactor))
    for i in range(4):
        await outbox.put(payloads(3, f"b{i}-"))
    await outbox.close()
    again = Outbox(5, Spool(str(tmp_path), reactor))
    assert again.restore() is None
    assert again.pending() == [b"b2-1", b"b2-2", b"b3-0", b"b3-1", b"b3-2"]
    assert len(os.listdir(tmp_path)) == 1 + 2
    await again.close()


@pytest.mark.expected_log_errors("^unreadable spool file ")
@pytest_twisted.ensureDeferred
async def test_spool_survives_an_interrupted_write(
    tmp_path: Path, logs: Logs, reactor: Any
) -> None:
    """
    A temporary file left by a crash mid-write is discarded and the files it was replacing are
    intact; an unreadable batch is set aside with an error, the rest restored.
    """
    outbox = Outbox(100, Spool(str(tmp_path), reactor))
    await outbox.put([b"a"], Checkpoint())
    await outbox.put([b"b"])
    await outbox.close()
    (tmp_path / "state.json.tmp").write_bytes(b'{"vers')
    (tmp_path / "batch-000000000002.json.tmp").write_bytes(b"")
    (tmp_path / "batch-000000000001.json").write_bytes(b'{"payloads": ["b"')
    again = Outbox(100, Spool(str(tmp_path), reactor))
    assert again.restore() == Checkpoint()
    assert again.pending() == [b"a"]
    assert [t for t in logs.texts(LogLevel.error) if "batch-000000000001.json" in t]
    assert sorted(os.listdir(tmp_path)) == [
        "batch-000000000000.json",
        "batch-000000000001.json.bad",
        "lock",
        "state.json",
    ]
    await again.close()


def test_spool_is_locked_against_a_second_client(tmp_path: Path) -> None:
    """
    Two clients cannot share a spool directory; the second is refused with a clear reason.
    """
    first = Spool(str(tmp_path / "spool"), None)
    with pytest.raises(SpoolError, match="in use by another eth-client"):
        Spool(str(tmp_path / "spool"), None)
    assert fired(first.close()) is None
    assert fired(Spool(str(tmp_path / "spool"), None).close()) is None


@pytest_twisted.ensureDeferred
async def test_spool_writes_payloads_before_the_checkpoint(
    tmp_path: Path, logs: Logs, reactor: Any
) -> None:
    """
    When the checkpoint cannot be written, the payloads are queued already: a crash between
    the two writes costs a duplicate, never a block.
    """
    spool = Spool(str(tmp_path), reactor)
    outbox = Outbox(100, spool)

    def full(state: Any) -> None:
        raise SpoolError("state.json: No space left on device")

    spool.write_state = full  # type: ignore[method-assign]
    with pytest.raises(SpoolError):
        await outbox.put([b"a"], Checkpoint())
    assert outbox.pending() == [b"a"]
    await outbox.close()
    again = Outbox(100, Spool(str(tmp_path), reactor))
    assert again.restore() is None
    assert again.pending() == [b"a"]
    await again.close()


@pytest_twisted.ensureDeferred
async def test_spool_queues_nothing_it_could_not_write(
    tmp_path: Path, logs: Logs, reactor: Any
) -> None:
    """
    When a batch cannot be written, nothing is queued or sent and the checkpoint is not
    written: the follower hands the same blocks over again.
    """
    spool = Spool(str(tmp_path), reactor)
    outbox = Outbox(100, spool)
    sent: list[bytes] = []
    outbox.queue_listeners.append(sent.extend)

    def full(
        sequence: int, payloads: Sequence[bytes], sightings: Sequence[SightingFrame | None] = ()
    ) -> None:
        raise SpoolError("batch: No space left on device")

    spool.write_batch = full  # type: ignore[method-assign]
    with pytest.raises(SpoolError):
        await outbox.put([b"a"], Checkpoint())
    assert outbox.pending() == [] == sent
    await outbox.close()
    assert sorted(os.listdir(tmp_path)) == ["lock"]


@pytest.mark.expected_log_errors("^cannot write the spool: ")
@pytest_twisted.ensureDeferred
async def test_a_spool_that_cannot_be_written_is_reported_once(
    tmp_path: Path, logs: Logs, reactor: Any
) -> None:
    """
    A batch the spool cannot write (a full disk) is one error about the spool from the
    poller, which keeps retrying; once the disk takes it, the blocks are queued and on disk.
    """
    clock, node = Clock(), FakeNode()
    spool = Spool(str(tmp_path), reactor)
    outbox = Outbox(100, spool)
    f = Follower(node, queue_blocks(outbox, "json"), clock=clock)
    poller = Poller(f, clock, interval=1.0)
    write_batch = spool.write_batch

    def full(
        sequence: int, payloads: Sequence[bytes], sightings: Sequence[SightingFrame | None] = ()
    ) -> None:
        raise SpoolError("batch: No space left on device")

    spool.write_batch = full  # type: ignore[method-assign]
    try:
        poller.startService()
        await wait_for(lambda: poller.failures == 1, 10)
        assert len(outbox) == 0 and f.checkpoint.last is None
        spool.write_batch = write_batch  # type: ignore[method-assign]

        def retried() -> bool:
            clock.advance(1.0)
            return f.checkpoint.last == node.tip

        await wait_for(retried, 10, interval=0.02)
        assert f.checkpoint.last == node.tip and outbox.pending() == [json_payload(node.tip)]
        [error] = logs.texts(LogLevel.error)
        assert "cannot write the spool: batch: No space left on device" in error
        await poller.stopService()
    finally:
        await outbox.close()
    assert len([n for n in os.listdir(tmp_path) if n.startswith("batch-")]) == 1
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_spool_writes_off_the_reactor_thread_in_order(
    tmp_path: Path, logs: Logs, reactor: Any
) -> None:
    """
    The spool's files are written and removed on one thread that is not the reactor's, in
    the order asked for: after many puts (all in flight at once) and acknowledgements, the
    disk holds every unacknowledged payload in order, no batch acknowledged whole, and the
    last checkpoint.
    """
    import threading

    spool = Spool(str(tmp_path), reactor)
    outbox = Outbox(10_000, spool)
    threads: set[int] = set()
    write = spool._write

    def recorded(path: str, obj: Any) -> None:
        threads.add(threading.get_ident())
        write(path, obj)

    spool._write = recorded  # type: ignore[method-assign]
    node = FakeNode()
    node.mine(1)
    last = Checkpoint(node.tip, {b.number: b.hash for b in node.canonical})
    puts = [outbox.put(payloads(3, f"p{i}-"), Checkpoint()) for i in range(199)]
    puts.append(outbox.put([b"last"], last))
    acked = 0
    for i, d in enumerate(puts):
        await d
        for payload in outbox.pending()[: i % 3]:
            assert outbox.ack(payload_hash(payload))
            acked += 1
    left = outbox.pending()
    await outbox.close()
    assert len(threads) == 1 and threading.get_ident() not in threads
    again = Outbox(10_000, Spool(str(tmp_path), reactor))
    assert again.restore() == last
    restored = again.pending()
    assert [p for p in restored if p in left] == left and len(left) == 598 - acked > 0
    # Only the batches acknowledged whole are gone (the rest come back whole).
    groups = {p.split(b"-")[0] for p in left}
    assert {p.split(b"-")[0] for p in restored} == groups
    await again.close()


def test_queue_blocks_encodes_each_format() -> None:
    """
    The sink queues the canonical JSON message or the older page, per block, in order.
    """
    node = FakeNode()
    node.mine(2)
    for fmt, encode in [("json", block_json), ("html", lambda b: block_html(b.number))]:
        outbox = Outbox(10)
        sightings = [Sighting(b, "poll", 1.0) for b in node.canonical]
        queue_blocks(outbox, fmt)(sightings, Checkpoint())  # type: ignore[arg-type]
        assert outbox.pending() == [encode(b) for b in node.canonical]


# -- the connection ---------------------------------------------------------------------------


def test_hello_then_everything_pending_then_each_new_payload(logs: Logs) -> None:
    """
    On connect the client says hello (name and token), then sends every unacknowledged
    payload in order; a payload queued later is sent at once.
    """
    outbox = Outbox(10)
    outbox.put([b"a", b"b"])
    delivery = wired(Delivery(outbox, one_server(), Clock(), Hello("c1", "secret-token")))
    transport = StringTransport()
    protocol = delivery.factory().buildProtocol(None)
    protocol.makeConnection(transport)
    outbox.put([b"c"])
    assert transport.value() == b"".join(
        netstring(p) for p in [encode_control(Hello("c1", "secret-token")), b"a", b"b", b"c"]
    )
    assert all("secret-token" not in t for t in logs.texts())


def test_acknowledgements_fed_in_small_chunks_remove_payloads(logs: Logs) -> None:
    """
    Acks arriving a few bytes at a time each remove their payload from the outbox.
    """
    outbox = Outbox(10)
    outbox.put([b"a", b"b", b"c"])
    delivery = wired(Delivery(outbox, one_server(), Clock()))
    protocol = delivery.factory().buildProtocol(None)
    protocol.makeConnection(StringTransport())
    acks = b"".join(netstring(encode_control(Ack(payload_hash(p)))) for p in [b"c", b"a"])
    feed(protocol, acks)
    assert outbox.pending() == [b"b"]


def test_reconnect_resends_everything_unacknowledged_in_order(logs: Logs) -> None:
    """
    Payloads sent on a connection that dropped before they were acknowledged are sent again,
    in order, on the next connection; those acknowledged are not.
    """
    outbox = Outbox(10)
    delivery = wired(Delivery(outbox, one_server(), Clock(), Hello("c1")))
    factory = delivery.factory()
    peer = AckingPeer(ack=False)
    client, pump = connect(factory, peer)
    outbox.put([b"a", b"b"])
    pump.flush()
    peer.ack = True
    outbox.put([b"c"])
    pump.flush()
    peer.ack = False
    outbox.put([b"d"])
    pump.flush()
    assert peer.payloads == [b"a", b"b", b"c", b"d"]
    assert outbox.pending() == [b"a", b"b", b"d"]
    assert client.transport is not None
    client.transport.loseConnection()
    pump.flush()
    assert delivery.protocol is None
    outbox.put([b"e"])
    assert [t for t in logs.texts(LogLevel.warn) if "lost the connection" in t]

    second = AckingPeer()
    _, pump = connect(factory, second)
    pump.flush()
    assert second.hellos == [Hello("c1")]
    assert second.payloads == [b"a", b"b", b"d", b"e"]
    assert outbox.pending() == []


@pytest.mark.expected_log_errors(" refused this client: ")
def test_a_refusal_is_logged_once(logs: Logs) -> None:
    """
    A server refusing this client is logged once, however often the client reconnects, and
    again only once it is accepted.
    """
    outbox = Outbox(10)
    outbox.put([b"a"])
    delivery = wired(Delivery(outbox, one_server(), Clock(), Hello("c1", "bad-token")))
    factory = delivery.factory()
    for _ in range(3):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        feed(protocol, netstring(encode_control(Refusal("client 'c1': invalid token"))))
        protocol.connectionLost(Failure(ConnectionRefusedError()))
    [refusal] = logs.containing("refused this client", LogLevel.error)
    assert "invalid token" in refusal and "bad-token" not in refusal
    assert not logs.containing("lost the connection")
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    feed(protocol, netstring(encode_control(Ack(payload_hash(b"a")))))
    assert logs.containing("accepts this client again")


def test_a_server_sending_payloads_loses_the_connection(logs: Logs) -> None:
    """
    The server has no business sending payloads: the client drops that connection and says
    why, once.
    """
    delivery = wired(Delivery(Outbox(10), one_server(), Clock()))
    protocol = delivery.factory().buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    feed(protocol, netstring(b"hello?") + netstring(b"more"))
    assert transport.disconnecting
    assert len(logs.containing("unexpected payload")) == 1


def test_reconnecting_service_backs_off_and_reports_once(logs: Logs) -> None:
    """
    The connection is made by C{ClientService}: refusals are retried with growing, capped,
    jittered delays, logged once (C{ClientService}'s own note on each retry is a debug
    message); the connection, once made, gets hello and the backlog.
    """
    clock, endpoint = Clock(), FakeEndpoint()
    outbox = Outbox(10)
    outbox.put([b"a"])
    delivery = wired(Delivery(outbox, ServerList([("test-server", endpoint)]), clock, Hello("c1")))
    retry = client_tap.backoffPolicy(0.25, 4.0, factor=2.0, jitter=lambda: 0.5)
    service = ReconnectingService(
        delivery.servers, delivery.factory(), retryPolicy=retry, clock=clock
    )
    service.startService()
    delays = []
    for _ in range(8):
        endpoint.refuse()
        [call] = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [1.0, 1.5, 2.5, 4.5, 4.5, 4.5, 4.5, 4.5]
    assert len(logs.containing("cannot connect to test-server", LogLevel.warn)) == 1
    retry_notes = [e for e in logs.events if "Scheduling retry" in e.get("log_format", "")]
    assert all(e["log_level"] == LogLevel.debug for e in retry_notes)
    peer = AckingPeer()
    _, pump = endpoint.accept(peer)
    assert peer.hellos == [Hello("c1")] and peer.payloads == [b"a"]
    assert len(outbox) == 0
    stopped = service.stopService()
    pump.flush()
    assert stopped.called
    assert not clock.getDelayedCalls()


# -- older servers ----------------------------------------------------------------------------


def test_oneshot_sends_one_message_per_connection_in_order(logs: Logs) -> None:
    """
    With C{--oneshot}, each payload goes over its own connection, alone and without a hello,
    in order; a payload counts as delivered once its connection closed cleanly.
    """
    clock, endpoint = Clock(), FakeEndpoint()
    outbox = Outbox(10)
    outbox.put([b"a", b"b"])
    sender = OneShotDelivery(outbox, [("old-server", endpoint)], clock, lambda n: 1.0)
    client_tap.wire(outbox=outbox, oneshot=sender)
    sender.startService()
    received: list[bytes] = []
    for expected in [b"a", b"b"]:
        assert len(endpoint.attempts) == 1
        _, pump = endpoint.accept(OneShotServer(received))
        pump.flush()
        assert received[-1] == expected
    assert received == [b"a", b"b"]
    assert len(outbox) == 0 and not endpoint.attempts
    outbox.put([b"c"])
    endpoint.accept(OneShotServer(received))[1].flush()
    assert received == [b"a", b"b", b"c"]
    sender.stopService()
    assert not clock.getDelayedCalls()


def test_oneshot_retries_a_server_that_is_down(logs: Logs) -> None:
    """
    A refused connection keeps the payload, logs once and retries after the policy's delay.
    """
    clock, endpoint = Clock(), FakeEndpoint()
    outbox = Outbox(10)
    outbox.put([b"a"])
    sender = OneShotDelivery(outbox, [("old-server", endpoint)], clock, lambda n: float(n))
    client_tap.wire(outbox=outbox, oneshot=sender)
    sender.startService()
    for attempt in range(1, 4):
        endpoint.refuse()
        assert not endpoint.attempts
        clock.advance(attempt)
    received: list[bytes] = []
    endpoint.accept(OneShotServer(received))[1].flush()
    assert received == [b"a"] and len(outbox) == 0
    assert len(logs.containing("cannot send to old-server", LogLevel.warn)) == 1
    assert logs.containing("takes messages again")
    sender.stopService()
    assert not clock.getDelayedCalls()


# -- the whole client -------------------------------------------------------------------------


class StoppableDelivery(Service):
    """
    A delivery that connects to one in-memory peer and disconnects when stopped.
    """

    def __init__(self, delivery: Delivery, peer: FrameProtocol) -> None:
        self.delivery = delivery
        self.peer = peer
        self.pump: iosim.IOPump | None = None
        self.client: ClientProtocol | None = None

    def startService(self) -> None:
        super().startService()
        self.client, self.pump = connect(ClientFactory(self.delivery), self.peer)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        assert self.client is not None and self.pump is not None
        assert self.client.transport is not None
        self.client.transport.loseConnection()
        self.pump.flush()
        return succeed(None)


def whole_client(
    tmp_path: Path, node: FakeNode, peer: AckingPeer, clock: Clock, reactor: Any
) -> tuple[EthClient, Outbox, StoppableDelivery]:
    spool = Spool(str(tmp_path / "spool"), reactor)
    outbox = Outbox(100, spool)
    f = Follower(node, queue_blocks(outbox, "json"), 256, outbox.restore(), clock=clock)
    poller = Poller(f, clock, interval=1.0)
    delivery = wired(Delivery(outbox, one_server(), clock, Hello("c1")))
    connection = StoppableDelivery(delivery, peer)
    return EthClient(poller, connection, delivery, outbox, node, clock, 5.0), outbox, connection


async def followed(reactor: Any, client: EthClient, node: FakeNode) -> None:
    """
    Wait until the client has queued the node's head and saved it in its spool.
    """
    await wait_for(lambda: client.poller.follower.checkpoint.last == node.tip, 10)


@pytest_twisted.ensureDeferred
async def test_stop_flushes_for_a_while_then_keeps_the_rest_in_the_spool(
    tmp_path: Path, logs: Logs, reactor: Any
) -> None:
    """
    Stopping stops polling, waits up to the flush timeout for acknowledgements, closes the
    connection and leaves the rest in the spool, from which a restarted client sends it, then
    backfills the blocks made while it was down.
    """
    clock, node, peer = Clock(), FakeNode(), AckingPeer(ack=False)
    client, outbox, connection = whole_client(tmp_path, node, peer, clock, reactor)
    client.startService()
    await followed(reactor, client, node)
    assert connection.pump is not None
    connection.pump.flush()
    node.mine()
    clock.advance(1.0)
    await followed(reactor, client, node)
    connection.pump.flush()
    assert peer.payloads == [json_payload(b) for b in node.canonical]
    stopped = client.stopService()
    assert not stopped.called
    node.mine()
    clock.advance(4.9)
    assert not stopped.called and len(node.calls) == 2
    clock.advance(0.1)
    await stopped
    assert node.closed
    assert logs.containing("2 unacknowledged messages kept in the spool")
    assert not clock.getDelayedCalls()

    node.mine(2)
    peer = AckingPeer()
    client, outbox, connection = whole_client(tmp_path, node, peer, clock, reactor)
    client.startService()
    await followed(reactor, client, node)
    assert connection.pump is not None
    connection.pump.flush()
    assert peer.payloads == [json_payload(b) for b in node.canonical]
    assert len(outbox) == 0
    await client.stopService()
    assert sorted(os.listdir(tmp_path / "spool")) == ["lock", "state.json"]
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_stop_ends_as_soon_as_everything_is_acknowledged(
    tmp_path: Path, logs: Logs, reactor: Any
) -> None:
    """
    A stop waiting for acknowledgements ends when the last one arrives, not at the timeout,
    once the spool has done what was asked of it.
    """
    clock, node, peer = Clock(), FakeNode(), AckingPeer(ack=False)
    client, _outbox, connection = whole_client(tmp_path, node, peer, clock, reactor)
    client.startService()
    await followed(reactor, client, node)
    assert connection.pump is not None
    connection.pump.flush()
    stopped = client.stopService()
    assert not stopped.called
    peer.send_control(Ack(payload_hash(peer.payloads[0])))
    connection.pump.flush()
    await stopped
    assert sorted(os.listdir(tmp_path / "spool")) == ["lock", "state.json"]
    assert not clock.getDelayedCalls()


# -- options ----------------------------------------------------------------------------------


def test_option_defaults() -> None:
    """
    Without flags: the default server, a 1 s interval, json, 256 / 10,000, no spool, the host
    name, no token, no node (the usual ones are tried).
    """
    config = options()
    assert config["server"] == ["tcp:host=127.0.0.1:port=9999"]
    assert config["interval"] == 1.0 and isinstance(config["interval"], float)
    assert config["format"] == "json"
    assert config["max-backfill"] == 256 and config["max-queue"] == 10_000
    assert config["spool"] is None and not config["oneshot"]
    assert config["name"] and config["token"] is None
    assert config["node"] == []


def test_options_from_flags_and_environment(tmp_path: Path) -> None:
    """
    Flags set every option; ETH_* variables too, ETH_NODE holding several nodes; a flag beats
    the environment.
    """
    config = options(
        "--node", "/tmp/geth.ipc", "--node", "ws://127.0.0.1:8546", "--interval", "0.05",
        "--format", "html", "--max-backfill", "3", "--max-queue", "7", "--name", "n1",
        "--spool", str(tmp_path), "--server", "tls:example.com:9999", "--verbose",
    )  # fmt: skip
    assert config["node"] == ["/tmp/geth.ipc", "ws://127.0.0.1:8546"]
    assert config["interval"] == 0.05 and config["format"] == "html"
    assert (config["max-backfill"], config["max-queue"]) == (3, 7)
    assert config["server"] == ["tls:example.com:9999"] and config["verbose"]
    config = options(
        "--interval", "2",
        ETH_NODE="http://127.0.0.1:8545 /tmp/x.ipc", ETH_INTERVAL="5", ETH_ONESHOT="1",
    )  # fmt: skip
    assert config["node"] == ["http://127.0.0.1:8545", "/tmp/x.ipc"]
    assert config["interval"] == 2.0 and config["oneshot"]


def test_older_host_and_port_flags() -> None:
    """
    The older C{--host}/C{--port} mean a plain TCP endpoint; mixed with C{--server}, refused.
    """
    assert options("--host", "10.0.0.5")["server"] == ["tcp:host=10.0.0.5:port=9999"]
    assert options("--port", "7000")["server"] == ["tcp:host=127.0.0.1:port=7000"]
    assert options("--host", "::1", "--port", "1")["server"] == ["tcp:host=\\:\\:1:port=1"]
    assert "not both" in usage_error("--host", "h", "--server", "tcp:host=h:port=1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0.01"], "at least 0.05"),
        (["--interval", "soon"], "expected a number"),
        (["--format", "xml"], "json, html"),
        (["--max-queue", "0"], "at least 1"),
        (["--node", "127.0.0.1:8545"], "no scheme"),
        (["--node", "ftp://x"], "unsupported node URI scheme"),
        (["--server", "bogus:1"], "--server"),
        (["--port", "99999"], "must be 1 to 65535, not 99999"),
        (["--port", "0"], "must be at least 1"),
        (["--server", "tcp:host=127.0.0.1:port=70000"], "port 70000 is not 1 to 65535"),
        (["--server", "tcp:127.0.0.1:0"], "port 0 is not 1 to 65535"),
        (["--server", "tls:example.com:99999"], "port 99999 is not 1 to 65535"),
        (["--name", "x" * 256], "1 to 255"),
        (["--name", "bad\tname"], "--name must not contain control characters"),
        (["--name", "spaced "], "--name must not begin or end with spaces"),
        (["--token-file", "/nonexistent/token"], "cannot read /nonexistent/token"),
    ],
)
def test_bad_options_end_with_one_line(args: list[str], message: str) -> None:
    """
    A bad option ends the program with one line saying what is wrong.
    """
    error = usage_error(*args)
    assert error.startswith("eth-client: ") and message in error
    assert "\n" not in error


def test_token_file(tmp_path: Path) -> None:
    """
    The token is read from its file, never shown in an error; it needs the hello, so not with
    C{--oneshot}.
    """
    token = tmp_path / "token"
    token.write_text("# client token\ns3cret-value\n")
    assert options("--token-file", str(token))["token"] == "s3cret-value"
    error = usage_error("--token-file", str(token), "--oneshot")
    assert "--oneshot" in error and "s3cret" not in error
    token.write_text("s3cret-one\ns3cret-two\n")
    error = usage_error("--token-file", str(token))
    assert "more than one" in error and "s3cret" not in error


def test_make_service_builds_the_client(tmp_path: Path) -> None:
    """
    makeService wires a poller and a ClientService (or a one-shot sender) over one outbox,
    without connecting anything; a spool in use ends with one line.
    """
    clock = Clock()
    config = options("--node", "http://127.0.0.1:1", "--spool", str(tmp_path / "s"))
    service = client_tap.makeService(config, clock)
    assert isinstance(service, EthClient)
    assert isinstance(service.delivery, ReconnectingService)
    assert isinstance(service.poller, Poller)
    with pytest.raises(SystemExit, match="in use by another"):
        client_tap.makeService(config, clock)
    service.outbox.close()
    config = options("--node", "http://127.0.0.1:1", "--oneshot")
    service = client_tap.makeService(config, clock)
    assert isinstance(service, EthClient) and isinstance(service.delivery, OneShotDelivery)
    assert not clock.getDelayedCalls()


def test_spool_thread_is_stopped_at_shutdown_if_the_spool_was_not_closed(
    tmp_path: Path,
) -> None:
    """
    A spool whose client never closed it (a stop that failed half-way) still lets the process
    exit: its thread is stopped during the reactor's shutdown; a spool closed as usual leaves
    no such trigger behind.
    """

    class Triggers:
        def __init__(self) -> None:
            self.triggers: dict[int, tuple[str, str, Callable[[], None]]] = {}

        def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], None]) -> int:
            self.triggers[len(self.triggers)] = (phase, event, f)
            return len(self.triggers) - 1

        def removeSystemEventTrigger(self, trigger: int) -> None:
            del self.triggers[trigger]

    reactor = Triggers()
    spool = Spool(str(tmp_path / "spool"), reactor)
    spool._start_thread()
    assert spool._thread.started
    [(phase, event, stop)] = reactor.triggers.values()
    assert (phase, event) == ("during", "shutdown")
    stop()
    assert not spool._thread.started
    assert all(not t.is_alive() for t in spool._thread.threads)
    spool._closed(None)
    assert spool._lock is None

    reactor.triggers.clear()
    closed = Spool(str(tmp_path / "other"), reactor)
    closed._start_thread()
    closed._closed(None)
    assert reactor.triggers == {}
    assert not closed._thread.started
