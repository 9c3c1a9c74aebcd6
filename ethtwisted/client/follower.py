"""
Following the chain: L{Follower} hands every new canonical block of a node to a L{Sink}, in
order, through backfills and reorgs, whether a poll found the head or the node pushed it;
L{Checkpoint} is where it stands, L{Sighting} how and when the client learnt of a block.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime

from ethtwisted.logs import Logger
from ethtwisted.node import NodeError
from ethtwisted.node.interfaces import INode
from ethtwisted.protocol import Block, block_problem

log = Logger(namespace="ethtwisted.client")

"""How the client learns of a block: pushed by the node, its head when polled, or fetched as
the parent of another."""
DEFAULT_MAX_BACKFILL = 256
MIN_REMEMBERED = 64
"""Block hashes remembered at least, to recognise a reorg."""


@dataclass(frozen=True)
class Joined:
    """
    A walk back from the node's head reached block C{fork}, handed over before and still in
    the node's chain; C{chain} holds the blocks above it, ascending.
    """

    chain: list[Block]
    fork: int


@dataclass(frozen=True)
class NewChain:
    """
    A walk back reached the genesis without meeting a block handed over before: the node's
    chain is new from its genesis on; C{chain} holds all of it, ascending.
    """

    chain: list[Block]


@dataclass(frozen=True)
class Stopped:
    """
    A walk back had to stop before it met a block handed over before, for C{reason};
    C{chain} holds what it fetched, ascending.
    """

    chain: list[Block]
    reason: str


Walk = Joined | NewChain | Stopped
"""What a walk back from the node's head found."""


@dataclass
class Checkpoint:
    """
    Where the follower is: the last block it queued, and the hashes of the blocks it queued
    before (by number, ascending) to recognise a reorganisation.
    """

    last: Block | None = None
    recent: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        last = self.last
        return {
            "version": 1,
            "last": None
            if last is None
            else {
                "chain_id": last.chain_id,
                "number": last.number,
                "hash": last.hash,
                "parent_hash": last.parent_hash,
                "timestamp": last.timestamp,
            },
            "recent": [[number, block_hash] for number, block_hash in self.recent.items()],
        }

    @classmethod
    def from_json(cls, obj: Any) -> Checkpoint:
        """
        The checkpoint saved by L{to_json}; L{ValueError} if C{obj} is not one.
        """
        try:
            if obj["version"] != 1:
                raise ValueError(f"unknown checkpoint version {obj['version']!r}")
            last = None
            if obj["last"] is not None:
                last = Block(**obj["last"])
                problem = block_problem(last)
                if problem is not None:
                    raise ValueError(f"malformed last block: {problem}")
            recent = {}
            for number, block_hash in obj["recent"]:
                seen = Block(chain_id=0, number=number, hash=block_hash,
                             parent_hash=block_hash, timestamp=0)  # fmt: skip
                problem = block_problem(seen)
                if problem is not None:
                    raise ValueError(f"malformed recent block: {problem}")
                recent[number] = block_hash
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed checkpoint: {e}") from None
        if last is not None:
            recent[last.number] = last.hash
        return cls(last, dict(sorted(recent.items())))


@dataclass(frozen=True)
class Sighting:
    """
    How the client learnt of a block it handed over (one of L{ethtwisted.protocol.SOURCES})
    and when, on its clock.
    """

    block: Block
    source: str
    seen: float


Sink = Callable[[Sequence[Sighting], Checkpoint], Awaitable[object] | None]
"""
Takes the blocks to send, in order, each with how and when it was learnt, and the checkpoint
that holds once they are queued; what it returns, if anything, is awaited.  It raises (or its
result fails) when they could not be queued; the follower then stays where it was.
"""


class Follower:
    """
    Follows the canonical chain of a node, one L{follow} at a time, and hands every block it
    has not handed over yet to a L{Sink}, in order.

    The head is identified by number and hash.  When it moved by more than one block, the
    blocks in between are fetched by walking back parent hashes from the head, up to
    C{max_backfill} blocks; beyond that the older ones are skipped, and logged.  When a block
    that was handed over is no longer canonical (a reorg), the walk goes back to the last block
    that still matches, never past the node's finalized block, and the new blocks from there on
    are handed over.

    Heads come from polls (L{follow}, L{follow_head}) and from the node pushing them
    (L{pushed}), one at a time: a head is followed only once the one before it is.  A pushed
    header is taken as it is only when it extends the last block handed over; anything else it
    says (a gap, a reorg, a duplicate, a stale or unknown block) is only a sign that the node's
    head moved, and what the node answers for its head then decides.  So pushed headers follow
    the same rules as polls, whatever order or repetition the node sends them in.
    """

    def __init__(
        self,
        node: INode,
        sink: Sink,
        max_backfill: int = DEFAULT_MAX_BACKFILL,
        checkpoint: Checkpoint | None = None,
        *,
        clock: IReactorTime,
    ) -> None:
        self.node = node
        self.sink = sink
        self.max_backfill = max_backfill
        self.remember = max(max_backfill, MIN_REMEMBERED)
        self.checkpoint = checkpoint or Checkpoint()
        self.clock = clock
        self.moves = 0
        """How many times the checkpoint moved: a head asked for before it moved may be stale."""
        self.reorg_listeners: list[Callable[[int], None]] = []
        """Called with the depth of each reorg followed."""
        self.sighting_listeners: list[Callable[[Sighting], None]] = []
        """Called with each block handed over, in order, once the sink took it."""
        self._lock = DeferredLock()

    async def follow(self) -> Block:
        """
        Hand over what is new since the last call; return the node's head.  Raises
        L{NodeError} when the node fails us, and whatever the sink raises.
        """
        moves = self.moves
        head = await self.node.head()
        await self.follow_head(head, "poll", self.clock.seconds(), moves)
        return head

    async def follow_head(
        self, head: Block, source: str, seen: float, moves: int | None = None
    ) -> None:
        """
        Follow C{head}, the node's head, learnt from C{source} at C{seen}.  C{moves} is what
        L{moves} was when the node was asked for it: if the checkpoint moved since (a pushed
        head was followed meanwhile) and C{head} is no higher than the last block, it is stale
        and left alone.
        """
        async with self._lock:
            last = self.checkpoint.last
            stale = moves is not None and moves != self.moves
            if stale and last is not None and head.number <= last.number:
                return
            await self._follow(head, source, seen)

    async def pushed(self, header: Block, seen: float) -> None:
        """
        Follow a header the node pushed at C{seen}: at once when it extends the last block
        handed over; ignored when it is a block handed over (a duplicate, or late) or older
        than those remembered; otherwise (a gap, a reorg, to a shorter chain too) by asking
        the node for its head.
        """
        async with self._lock:
            last = self.checkpoint.last
            if last is not None and header.chain_id == last.chain_id:
                if header.number == last.number + 1 and header.parent_hash == last.hash:
                    await self._follow(header, "subscription", seen)
                    return
                recent = self.checkpoint.recent  # by number, ascending
                handed = recent.get(header.number) == header.hash
                if handed or header.number < next(iter(recent), header.number):
                    # A header below the last block that is not the one handed over there
                    # is news: the node may have gone over to a shorter chain.
                    log.debug("pushed block {number} {hash} is not news: the last block "
                              "handed over is {last}", number=header.number, hash=header.hash,
                              last=last.number)  # fmt: skip
                    return
            moves = self.moves
        head = await self.node.head()
        if head.hash == header.hash:
            await self.follow_head(head, "subscription", seen, moves)
        else:
            await self.follow_head(head, "poll", self.clock.seconds(), moves)

    async def _follow(self, head: Block, source: str, seen: float) -> None:
        last = self.checkpoint.last
        if last is not None and head.hash == last.hash:
            return
        sightings = {head.hash: (source, seen)}
        if last is None or last.chain_id != head.chain_id:
            if last is not None:
                log.warn(
                    "the node is on chain {new}, not {old} as before: following it from "
                    "its head, block {number}",
                    new=head.chain_id,
                    old=last.chain_id,
                    number=head.number,
                )
            await self._advance([head], Checkpoint(head, {head.number: head.hash}), sightings)
            return
        recent = self.checkpoint.recent
        walk: Walk
        if recent.get(head.number) == head.hash:
            # The node went back to a block that was handed over already.
            walk = Joined([], head.number)
        else:
            walk = await self._walk_back(head, last, sightings)
        if isinstance(walk, Stopped):
            lowest = walk.chain[0].number
            if lowest > last.number + 1:
                log.warn(
                    "skipped {count} blocks ({first} to {end}): the node is more than "
                    "{max_backfill} blocks ahead of block {last}",
                    count=lowest - last.number - 1,
                    first=last.number + 1,
                    end=lowest - 1,
                    max_backfill=self.max_backfill,
                    last=last.number,
                )
            else:
                log.warn(
                    "reorg deeper than {limit}: no block below {lowest} matches what was sent; "
                    "following the node's chain from block {lowest}",
                    limit=walk.reason,
                    lowest=lowest,
                )
            keep_below = lowest
        elif isinstance(walk, NewChain):
            log.warn(
                "the node's chain is new from its genesis on (a restarted dev node?): "
                "{depth} blocks sent before are not in it; new head {number} {hash}",
                depth=last.number + 1,
                number=head.number,
                hash=head.hash,
            )
            keep_below = 0
        else:
            fork = walk.fork
            if fork < last.number:
                for listener in self.reorg_listeners:
                    listener(last.number - fork)
                log.info(
                    "reorg of depth {depth}: blocks {first} to {end} replaced after block "
                    "{fork}; new head {number} {hash}",
                    depth=last.number - fork,
                    first=fork + 1,
                    end=last.number,
                    fork=fork,
                    number=head.number,
                    hash=head.hash,
                )
            keep_below = fork + 1
        kept = [(n, h) for n, h in recent.items() if n < keep_below]
        kept += [(b.number, b.hash) for b in walk.chain]
        checkpoint = Checkpoint(head, dict(kept[-self.remember :]))
        await self._advance(walk.chain, checkpoint, sightings)

    async def _walk_back(
        self, head: Block, last: Block, sightings: dict[str, tuple[str, float]]
    ) -> Walk:
        """
        Walk from C{head} down through the parents until a block handed over before that the
        node's chain still holds, the genesis, or a reason to stop.  Each block fetched on the
        way goes into C{sightings} as a backfill.
        """
        recent = self.checkpoint.recent
        chain = [head]
        finalized: int | None = None
        asked_finalized = False
        while True:
            block = chain[-1]
            if block.number == 0:
                return NewChain(chain[::-1])
            parent_number = block.number - 1
            if recent.get(parent_number) == block.parent_hash:
                return Joined(chain[::-1], parent_number)
            if parent_number <= last.number:
                # The parent replaces a block handed over before: a reorg.
                if not asked_finalized:
                    finalized = await self.node.finalized_number()
                    asked_finalized = True
                if finalized is not None and parent_number < finalized:
                    return Stopped(chain[::-1], f"the node's finalized block {finalized}")
                if not recent or parent_number < min(recent):
                    # Nothing was sent there, or it is forgotten: take it as the fork.
                    return Joined(chain[::-1], parent_number)
            if len(chain) >= self.max_backfill:
                return Stopped(chain[::-1], f"--max-backfill {self.max_backfill}")
            parent = await self.node.block_by_hash(block.parent_hash)
            if parent is None:
                raise NodeError(
                    f"the node does not know block {block.parent_hash}, "
                    f"parent of its block {block.number}"
                )
            if parent.number != parent_number or parent.hash != block.parent_hash:
                raise NodeError(f"the node answered block {parent.number} for the parent hash "
                                f"of block {block.number}")  # fmt: skip
            sightings[parent.hash] = ("backfill", self.clock.seconds())
            chain.append(parent)

    async def _advance(
        self,
        blocks: Sequence[Block],
        checkpoint: Checkpoint,
        sightings: dict[str, tuple[str, float]],
    ) -> None:
        seen = [Sighting(block, *sightings[block.hash]) for block in blocks]
        queued = self.sink(seen, checkpoint)
        if queued is not None:
            await queued
        self.checkpoint = checkpoint
        self.moves += 1
        for sighting in seen:
            log.debug("block {number} {hash} learnt by {source} at {ms} ms",
                      number=sighting.block.number, hash=sighting.block.hash,
                      source=sighting.source, ms=round(sighting.seen * 1000))  # fmt: skip
            for listener in self.sighting_listeners:
                listener(sighting)
