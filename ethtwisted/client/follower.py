"""
Following the chain: L{Follower} hands every new canonical block of a node to a L{Sink}, in
order, through backfills and reorgs; L{Checkpoint} is where it stands.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from ethtwisted.interfaces import INode
from ethtwisted.logs import log_observer
from ethtwisted.node import NodeError
from ethtwisted.protocol import Block, block_problem

log = Logger(namespace="ethtwisted.client", observer=log_observer)

DEFAULT_MAX_BACKFILL = 256
MIN_REMEMBERED = 64
"""Block hashes remembered at least, to recognise a reorg."""


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


Sink = Callable[[Sequence[Block], Checkpoint], Awaitable[object] | None]
"""
Takes the blocks to send, in order, and the checkpoint that holds once they are queued; what it
returns, if anything, is awaited.  It raises (or its result fails) when they could not be
queued; the follower then stays where it was.
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
    """

    def __init__(
        self,
        node: INode,
        sink: Sink,
        max_backfill: int = DEFAULT_MAX_BACKFILL,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.node = node
        self.sink = sink
        self.max_backfill = max_backfill
        self.remember = max(max_backfill, MIN_REMEMBERED)
        self.checkpoint = checkpoint or Checkpoint()
        self.reorg_listeners: list[Callable[[int], None]] = []
        """Called with the depth of each reorg followed."""

    async def follow(self) -> Block:
        """
        Hand over what is new since the last call; return the node's head.  Raises
        L{NodeError} when the node fails us, and whatever the sink raises.
        """
        head = await self.node.head()
        last = self.checkpoint.last
        if last is not None and head.hash == last.hash:
            return head
        if last is None or last.chain_id != head.chain_id:
            if last is not None:
                log.warn(
                    "the node is on chain {new}, not {old} as before: following it from "
                    "its head, block {number}",
                    new=head.chain_id,
                    old=last.chain_id,
                    number=head.number,
                )
            await self._advance([head], Checkpoint(head, {head.number: head.hash}))
            return head
        recent = self.checkpoint.recent
        fork: int | None
        if recent.get(head.number) == head.hash:
            # The node went back to a block that was handed over already.
            chain: list[Block] = []
            fork, limit = head.number, None
        else:
            chain, fork, limit = await self._walk_back(head, last)
        if fork is None:
            lowest = chain[0].number
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
                    limit=limit,
                    lowest=lowest,
                )
            keep_below = lowest
        else:
            if fork < 0:
                log.warn(
                    "the node's chain is new from its genesis on (a restarted dev node?): "
                    "{depth} blocks sent before are not in it; new head {number} {hash}",
                    depth=last.number + 1,
                    number=head.number,
                    hash=head.hash,
                )
            elif fork < last.number:
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
        kept += [(b.number, b.hash) for b in chain]
        await self._advance(chain, Checkpoint(head, dict(kept[-self.remember :])))
        return head

    async def _walk_back(
        self, head: Block, last: Block
    ) -> tuple[list[Block], int | None, str | None]:
        """
        The blocks from the head down to the last one handed over that still matches, in
        ascending order, and the number of that block (-1 below genesis); or, when the walk had
        to stop before it found one, L{None} and why it stopped.
        """
        recent = self.checkpoint.recent
        chain = [head]
        finalized: int | None = None
        asked_finalized = False
        while True:
            block = chain[-1]
            if block.number == 0:
                return chain[::-1], -1, None
            parent_number = block.number - 1
            if recent.get(parent_number) == block.parent_hash:
                return chain[::-1], parent_number, None
            if parent_number <= last.number:
                # The parent replaces a block handed over before: a reorg.
                if not asked_finalized:
                    finalized = await self.node.finalized_number()
                    asked_finalized = True
                if finalized is not None and parent_number < finalized:
                    return chain[::-1], None, f"the node's finalized block {finalized}"
                if not recent or parent_number < min(recent):
                    # Nothing was sent there, or it is forgotten: take it as the fork.
                    return chain[::-1], parent_number, None
            if len(chain) >= self.max_backfill:
                return chain[::-1], None, f"--max-backfill {self.max_backfill}"
            parent = await self.node.block_by_hash(block.parent_hash)
            if parent is None:
                raise NodeError(
                    f"the node does not know block {block.parent_hash}, "
                    f"parent of its block {block.number}"
                )
            if parent.number != parent_number or parent.hash != block.parent_hash:
                raise NodeError(f"the node answered block {parent.number} for the parent hash "
                                f"of block {block.number}")  # fmt: skip
            chain.append(parent)

    async def _advance(self, blocks: Sequence[Block], checkpoint: Checkpoint) -> None:
        queued = self.sink(blocks, checkpoint)
        if queued is not None:
            await queued
        self.checkpoint = checkpoint
