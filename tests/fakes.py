"""
In-memory stand-ins the tests drive by hand: L{FakeNode} (a chain that is mined,
reverted and reorganised, goes down or holds its answers), L{Recorder} (a follower's sink),
L{AckingPeer} and L{OneShotServer} (servers for a client to talk to), L{FakeEndpoint} (connection
attempts the test refuses or accepts), L{HeldStore} (a store whose commits wait for the test).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.test import iosim
from zope.interface import implementer

from ethtwisted.client.failover import ServerList
from ethtwisted.client.follower import Checkpoint, Sighting
from ethtwisted.client.spool import SpoolError
from ethtwisted.frames import Ack, ControlFrame, Hello
from ethtwisted.framing import FrameProtocol
from ethtwisted.node import NodeError
from ethtwisted.node.interfaces import INode
from ethtwisted.protocol import Block, payload_hash
from ethtwisted.records import Received, StatusReport
from ethtwisted.storage.memory_store import MemoryStore


def block_hash(parent_hash: str, number: int, salt: str) -> str:
    return "0x" + hashlib.sha256(f"{parent_hash}/{number}/{salt}".encode()).hexdigest()


@implementer(INode)
class FakeNode:
    """
    A small in-memory chain: blocks are mined, reverted and replaced by the test; the node can
    go down, or hold its answers until the test releases them.
    """

    description = "fake-node"

    def __init__(self, chain_id: int = 31337, salt: str = "") -> None:
        self.chain_id = chain_id
        self.blocks: dict[str, Block] = {}
        self.canonical: list[Block] = []
        self.finalized: int | None = None
        self.down: str | None = None
        self.hold = False
        self.held: list[tuple[Deferred[Any], Any]] = []
        self.calls: list[str] = []
        self.closed = False
        self.mine(1, salt)

    @property
    def tip(self) -> Block:
        return self.canonical[-1]

    def mine(self, n: int = 1, salt: str = "") -> Block:
        for _ in range(n):
            parent = self.canonical[-1] if self.canonical else None
            number = parent.number + 1 if parent else 0
            parent_hash = parent.hash if parent else "0x" + "00" * 32
            h = block_hash(parent_hash, number, salt)
            block = Block(self.chain_id, number, h, parent_hash, 1_700_000_000 + number)
            self.blocks[h] = block
            self.canonical.append(block)
        return self.tip

    def revert(self, number: int) -> None:
        """
        Make block C{number} the head again (C{evm_revert}).
        """
        del self.canonical[number + 1 :]

    def reorg(self, depth: int, length: int | None = None, salt: str = "fork") -> None:
        """
        Replace the last C{depth} blocks by C{length} others.
        """
        self.revert(self.tip.number - depth)
        self.mine(depth if length is None else length, salt)

    def _answer(self, what: str, value: Any) -> Deferred[Any]:
        self.calls.append(what)
        if self.down is not None:
            return fail(NodeError(self.down))
        if self.hold:
            d: Deferred[Any] = Deferred()
            self.held.append((d, value))
            return d
        return succeed(value)

    def release(self) -> None:
        held, self.held = self.held, []
        for d, value in held:
            d.callback(value)

    def block_number(self) -> Deferred[int]:
        return self._answer("block_number", self.tip.number)

    def head(self) -> Deferred[Block]:
        return self._answer("head", self.tip)

    def block_by_number(self, number: int) -> Deferred[Block | None]:
        found = self.canonical[number] if number < len(self.canonical) else None
        return self._answer(f"number {number}", found)

    def block_by_hash(self, block_hash: str) -> Deferred[Block | None]:
        return self._answer(f"hash {block_hash}", self.blocks.get(block_hash))

    def finalized_number(self) -> Deferred[int | None]:
        return self._answer("finalized", self.finalized)

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


class Recorder:
    """
    A follower's sink that keeps what it is given (or fails, when told to).
    """

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.checkpoints: list[Checkpoint] = []
        self.failing = False

    def __call__(self, sightings: Sequence[Sighting], checkpoint: Checkpoint) -> None:
        if self.failing:
            raise SpoolError("/spool/batch: No space left on device")
        self.blocks.extend(s.block for s in sightings)
        self.checkpoints.append(checkpoint)

    @property
    def numbers(self) -> list[int]:
        return [b.number for b in self.blocks]

    def take(self) -> list[Block]:
        blocks, self.blocks = self.blocks, []
        return blocks


class AckingPeer(FrameProtocol):
    """
    A server-like peer for unit tests: keeps the hellos and payloads it receives and
    acknowledges each payload, unless told not to.
    """

    def __init__(self, ack: bool = True) -> None:
        super().__init__()
        self.ack = ack
        self.hellos: list[Hello] = []
        self.payloads: list[bytes] = []

    def controlReceived(self, frame: ControlFrame) -> None:
        if isinstance(frame, Hello):
            self.hellos.append(frame)
        else:
            super().controlReceived(frame)

    def payloadReceived(self, payload: bytes) -> None:
        self.payloads.append(payload)
        if self.ack:
            self.send_control(Ack(payload_hash(payload)))


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint whose connection attempts wait for the test to make them fail or succeed.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[Deferred[Any], Any]] = []

    def connect(self, protocolFactory: Any) -> Deferred[Any]:  # noqa: N803
        d: Deferred[Any] = Deferred()
        self.attempts.append((d, protocolFactory))
        return d

    def refuse(self) -> None:
        d, _ = self.attempts.pop(0)
        d.errback(ConnectionRefusedError())

    def accept(self, peer: FrameProtocol) -> tuple[Any, iosim.IOPump]:
        d, factory = self.attempts.pop(0)
        client = factory.buildProtocol(None)
        pump = iosim.connect(
            peer, iosim.makeFakeServer(peer), client, iosim.makeFakeClient(client), greet=False
        )
        d.callback(client)
        pump.flush()
        return client, pump


def one_server(name: str = "test-server") -> ServerList:
    """
    A list of one server, whose endpoint connects only when the test says so.
    """
    return ServerList([(name, FakeEndpoint())])


class OneShotServer(FrameProtocol):
    """
    An older server: reads one netstring per connection, answers nothing.
    """

    received: list[bytes]

    def __init__(self, received: list[bytes]) -> None:
        super().__init__()
        self.received = received

    def payloadReceived(self, payload: bytes) -> None:
        self.received.append(payload)


class HeldStore(MemoryStore):
    """
    The in-memory store, with each commit held until the test completes it (L{commit}) or
    fails it (C{results[i].errback}).
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[Received]] = []
        """The payloads of each commit."""
        self.batches: list[list[Received | StatusReport]] = []
        """Each commit whole: its payloads and status reports."""
        self.results: list[Deferred[int]] = []

    def store(self, batch: Sequence[Received | StatusReport]) -> Deferred[int]:
        self.calls.append([r for r in batch if isinstance(r, Received)])
        self.batches.append(list(batch))
        d: Deferred[int] = Deferred()
        self.results.append(d)
        return d

    def commit(self, index: int = -1) -> None:
        super().store(self.batches[index]).chainDeferred(self.results[index])
