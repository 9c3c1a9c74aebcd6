"""
The following side: poll an Ethereum node, turn every new canonical block into a payload, and
deliver the payloads to an eth-server until each one is acknowledged.

L{Follower} is the chain-following logic (backfill, reorgs), L{Poller} runs it every interval
and rides out node trouble, L{Outbox} holds what the server has not acknowledged yet (in
memory, and in a L{Spool} directory when asked), L{Delivery} keeps one connection to the server
through C{ClientService}, L{OneShotDelivery} talks to older servers, and L{EthClient} ties them
together and stops them in order.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from twisted.application.internet import ClientService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ethtwisted.interfaces import INode
from ethtwisted.logs import describe, log_observer
from ethtwisted.node import NodeError
from ethtwisted.protocol import (
    Ack,
    Block,
    ControlFrame,
    FrameProtocol,
    Hello,
    PayloadFormat,
    ProtocolError,
    Refusal,
    block_problem,
    encode_payload,
    loads_bounded,
    parse_block,
    payload_hash,
)

log = Logger(observer=log_observer)

DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.05
DEFAULT_MAX_BACKFILL = 256
DEFAULT_MAX_QUEUE = 10_000
MAX_NODE_BACKOFF = 10.0
"""Longest wait, in seconds, between two polls of a node that does not answer."""
FLUSH_TIMEOUT = 5.0
"""Seconds a stopping client waits for the server to acknowledge what is still queued."""
ONESHOT_TIMEOUT = 30.0
"""Seconds an older server has to take one message (connect, send, close)."""
MIN_REMEMBERED = 64
"""Block hashes remembered at least, to recognise a reorg."""


# -- following the chain ----------------------------------------------------------------------


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


_RECOVERED = {
    "node": "{node} answers again after {n} failed polls; its head is block {number}",
    "spool": "the spool can be written again after {n} failed polls; the head of {node} is "
    "block {number}",
    "bug": "following {node} again after {n} failed polls; its head is block {number}",
}


class Poller(Service):
    """
    Runs L{Follower.follow} every C{interval} seconds, never two at once.  A poll never fails:
    when the node does not answer, the next polls wait longer (doubling, up to
    C{max_backoff}); the node going away and coming back are logged once each.
    """

    def __init__(
        self,
        follower: Follower,
        clock: IReactorTime,
        interval: float = DEFAULT_INTERVAL,
        max_backoff: float = MAX_NODE_BACKOFF,
    ) -> None:
        self.follower = follower
        self.clock = clock
        self.interval = interval
        self.max_backoff = max(max_backoff, interval)
        self.trouble: str | None = None
        self.trouble_kind: str | None = None
        """Whose the trouble is: C{node}, C{spool} or C{bug}."""
        self.failures = 0
        self.polls = 0
        self._loop: LoopingCall | None = None
        self._finished: Deferred[None] = succeed(None)
        self._current: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        finished = self._loop.start(self.interval, now=True)
        self._finished = finished.addCallback(lambda _: None)
        self._finished.addErrback(lambda f: log.failure("the poller stopped", f))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._current is not None:
            self._current.cancel()
        return self._finished

    def poll(self) -> Deferred[None]:
        """
        One poll, and the wait after it when the node is in trouble; never fails.
        """
        d = Deferred.fromCoroutine(self._poll())
        if not d.called:
            self._current = d
            d.addBoth(self._polled)
        return d

    def _polled(self, result: object) -> object:
        self._current = None
        return result

    @property
    def node(self) -> str:
        return str(self.follower.node.description)

    async def _poll(self) -> None:
        self.polls += 1
        try:
            head = await self.follower.follow()
        except CancelledError:
            return
        except NodeError as e:
            self._failed(describe(e), "node")
        except SpoolError as e:
            self._failed(f"cannot write the spool: {e}", "spool")
        except Exception:
            if self.trouble_kind != "bug":
                log.failure("bug while following {node}", node=self.node)
            self._failed("internal error", "bug")
        else:
            self._answered(head)
            return
        delay = min(self.interval * 2 ** (self.failures - 1), self.max_backoff)
        try:
            await deferLater(self.clock, delay)
        except CancelledError:
            return

    def _answered(self, head: Block) -> None:
        if self.trouble_kind is not None:
            log.info(_RECOVERED[self.trouble_kind], node=self.node, n=self.failures,
                     number=head.number)  # fmt: skip
        elif self.polls == 1:
            log.info("following {node}; its head is block {number}", node=self.node,
                     number=head.number)  # fmt: skip
        self.trouble = None
        self.trouble_kind = None
        self.failures = 0

    def _failed(self, reason: str, kind: str) -> None:
        self.failures += 1
        if self.trouble is None or kind != self.trouble_kind:
            if kind == "node":
                log.warn(
                    "node {node} does not serve us: {reason}; retrying (every {cap:g} s at most)",
                    node=self.node,
                    reason=reason,
                    cap=self.max_backoff,
                )
            elif kind == "spool":
                log.error("{reason}; retrying (every {cap:g} s at most)", reason=reason,
                          cap=self.max_backoff)  # fmt: skip
        else:
            log.debug("poll failed again: {reason}", reason=reason)
        self.trouble = reason
        self.trouble_kind = kind


# -- the outbox and its spool -----------------------------------------------------------------


class SpoolError(Exception):
    """
    The spool directory cannot be used; the message says why.
    """


def _write_atomically(path: str, data: bytes) -> None:
    """
    Replace C{path} by C{data}: written to a temporary file, flushed to disk, renamed over it,
    so a crash leaves either the old content or the new, never a mix.
    """
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _unusable_block(payload: bytes) -> bool:
    """
    Whether C{payload} is a JSON block message (all the client sends starting with C{{}) that
    does not hold a block which can be real.
    """
    return payload.startswith(b"{") and parse_block(payload) is None


class Spool:
    """
    A directory that keeps the outbox and the follower's checkpoint across restarts.

    Each group of payloads queued together is one file, C{batch-<sequence>.json}, removed once
    all its payloads are acknowledged (or dropped); the checkpoint is C{state.json}.  Every
    file is replaced atomically.  A lock file keeps a second client off the same directory.

    The methods that touch files block.  Once the reactor runs, they go through L{call}: one
    thread of the spool's own runs them one at a time, in the order they were asked for.
    C{reactor} is the one their results go back to.
    """

    STATE = "state.json"

    def __init__(self, directory: str, reactor: Any) -> None:
        self.directory = os.path.abspath(directory)
        self.reactor = reactor
        self._thread = ThreadPool(1, 1, "spool")
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._lock: IO[bytes] | None = open(  # noqa: SIM115 -- held until close()
                os.path.join(self.directory, "lock"), "ab"
            )
        except OSError as e:
            raise SpoolError(f"cannot use {self.directory}: {e.strerror}") from None
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock.close()
            self._lock = None
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise SpoolError(f"{self.directory} is in use by another eth-client") from None
            raise SpoolError(f"cannot lock {self.directory}: {e.strerror}") from None

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write(self, name: str, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        try:
            _write_atomically(self._path(name), data)
            self._sync_directory()
        except OSError as e:
            raise SpoolError(f"{self._path(name)}: {e.strerror}") from None

    def load_batches(self) -> list[tuple[int, list[bytes]]]:
        """
        The batches on disk, oldest first.  A file that cannot be read is renamed aside.
        """
        batches = []
        for name in sorted(os.listdir(self.directory)):
            path = self._path(name)
            if name.endswith(".tmp"):
                os.unlink(path)  # an interrupted write; the file it was for is intact
                continue
            if not (name.startswith("batch-") and name.endswith(".json")):
                continue
            try:
                sequence = int(name[len("batch-") : -len(".json")])
                with open(path, "rb") as f:
                    obj = loads_bounded(f.read())
                payloads = [p.encode("utf-8") for p in obj["payloads"]]
            except (OSError, ProtocolError, ValueError, KeyError, TypeError, AttributeError) as e:
                log.error("unreadable spool file {path} ({reason}): set aside as .bad",
                          path=path, reason=describe(e))  # fmt: skip
                os.replace(path, path + ".bad")
                continue
            # An older client may have spooled a block message built from a node's absurd
            # answer (a 160-bit chain id, say), which a server cannot store as a block.
            usable = [p for p in payloads if not _unusable_block(p)]
            if len(usable) < len(payloads):
                log.warn("spool file {path}: dropped {n} block messages that hold no usable "
                         "block", path=path, n=len(payloads) - len(usable))  # fmt: skip
            batches.append((sequence, usable))
        batches.sort()
        return batches

    def write_batch(self, sequence: int, payloads: Sequence[bytes]) -> None:
        self._write(
            f"batch-{sequence:012d}.json", {"payloads": [p.decode("utf-8") for p in payloads]}
        )

    def remove_batch(self, sequence: int) -> None:
        """
        Remove a batch (gone already is fine); L{SpoolError} if it cannot be.
        """
        try:
            os.unlink(self._path(f"batch-{sequence:012d}.json"))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise SpoolError(f"cannot remove acknowledged spool batch {sequence}: "
                             f"{e.strerror}") from None  # fmt: skip

    def load_state(self) -> Any:
        """
        The saved state, or L{None} if there is none (or it is unreadable, which is logged).
        """
        path = self._path(self.STATE)
        try:
            with open(path, "rb") as f:
                return loads_bounded(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ProtocolError) as e:
            log.error("unreadable spool file {path} ({reason}): starting from the node's head",
                      path=path, reason=describe(e))  # fmt: skip
            return None

    def write_state(self, state: Any) -> None:
        self._write(self.STATE, state)

    def call(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Run C{f(*args)} on the spool's thread after everything asked for before; the
        Deferred fires with its result (in the reactor thread).
        """
        if self._lock is None:
            return fail(SpoolError(f"{self.directory}: the spool is closed"))
        if not self._thread.started:
            self._start_thread()
        return deferToThreadPool(self.reactor, self._thread, f, *args)

    def _start_thread(self) -> None:
        self._thread.start()
        # The thread is not a daemon: should the spool not be closed (a stop that failed),
        # stopping it at shutdown, as adbapi does with its pool, lets the process exit.
        self._shutdown = self.reactor.addSystemEventTrigger(
            "during", "shutdown", self._stop_thread
        )

    def _stop_thread(self) -> None:
        if self._thread.started:
            self._thread.stop()

    def close(self) -> Deferred[None]:
        """
        Once everything asked for is done: stop the spool's thread and unlock the directory.
        """
        done: Deferred[None] = self.call(lambda: None) if self._thread.started else succeed(None)
        return done.addCallback(self._closed)

    def _closed(self, _: None) -> None:
        if self._thread.started:
            self.reactor.removeSystemEventTrigger(self._shutdown)
            self._stop_thread()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@dataclass
class _Queued:
    payload: bytes
    batch: int


class Outbox:
    """
    The payloads the server has not acknowledged yet, oldest first, each once.

    At most C{max_queue} are kept: past it the oldest are dropped, with a warning.  With a
    L{Spool}, what is queued is on disk before it is queued (and sent), and the follower's
    checkpoint after it, before L{put}'s Deferred fires; a payload leaves the disk after its
    acknowledgement.
    """

    def __init__(self, max_queue: int = DEFAULT_MAX_QUEUE, spool: Spool | None = None) -> None:
        self.max_queue = max_queue
        self.spool = spool
        self.listeners: list[Callable[[Sequence[bytes]], None]] = []
        """Called with the payloads each L{put} adds."""
        self.ack_listeners: list[Callable[[bytes], None]] = []
        """Called with each payload acknowledged."""
        self.dropped = 0
        """Payloads dropped since the outbox last had room."""
        self._queued: OrderedDict[str, _Queued] = OrderedDict()
        self._batches: dict[int, int] = {}
        self._next_batch = 0
        self._empty: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._queued)

    def restore(self) -> Checkpoint | None:
        """
        Load what the spool kept; return the follower's checkpoint, if one was saved.
        """
        if self.spool is None:
            return None
        for sequence, payloads in self.spool.load_batches():
            self._next_batch = max(self._next_batch, sequence + 1)
            added = 0
            for payload in payloads:
                sha256 = payload_hash(payload)
                if sha256 not in self._queued:
                    self._queued[sha256] = _Queued(payload, sequence)
                    added += 1
            if added:
                self._batches[sequence] = added
            else:
                self._remove(sequence, now=True)
        self._trim(now=True)
        if self._queued:
            log.info("{n} unacknowledged messages restored from the spool", n=len(self))
        state = self.spool.load_state()
        if state is None:
            return None
        try:
            return Checkpoint.from_json(state)
        except ValueError as e:
            log.error("spool checkpoint not usable ({reason}): starting from the node's head",
                      reason=str(e))  # fmt: skip
            return None

    def put(
        self, payloads: Sequence[bytes], checkpoint: Checkpoint | None = None
    ) -> Deferred[list[bytes]]:
        """
        Queue the C{payloads} not queued yet, in order; the Deferred fires with them.  With a
        spool, they are queued once on disk, and it fires once C{checkpoint} is too; it fails
        with L{SpoolError} if either could not be written (and nothing is queued if they
        could not).
        """
        return Deferred.fromCoroutine(self._put(payloads, checkpoint))

    async def _put(self, payloads: Sequence[bytes], checkpoint: Checkpoint | None) -> list[bytes]:
        new: dict[str, bytes] = {}
        for payload in payloads:
            sha256 = payload_hash(payload)
            if sha256 not in self._queued:
                new[sha256] = payload
        batch = self._next_batch
        if new:
            self._next_batch += 1
        if self.spool is not None and new:
            await self.spool.call(self.spool.write_batch, batch, list(new.values()))
            # Queued meanwhile by another put: that one counts them, this batch holds copies.
            new = {s: p for s, p in new.items() if s not in self._queued}
            if not new:
                self._remove(batch)
        if new:
            self._batches[batch] = len(new)
            for sha256, payload in new.items():
                self._queued[sha256] = _Queued(payload, batch)
            self._trim()
        added = [p for s, p in new.items() if s in self._queued]
        if added:
            for listener in self.listeners:
                listener(added)
        if self.spool is not None and checkpoint is not None:
            # After the payloads: a crash in between makes the follower queue them again,
            # which the outbox and the server both take once.
            await self.spool.call(self.spool.write_state, checkpoint.to_json())
        return added

    def _trim(self, now: bool = False) -> None:
        count = 0
        while len(self._queued) > self.max_queue:
            _, queued = self._queued.popitem(last=False)
            self._release(queued.batch, now)
            count += 1
        if count:
            if not self.dropped:
                log.warn(
                    "outbox full ({max} messages unacknowledged): dropped the {n} oldest; "
                    "more will go while the server does not acknowledge",
                    max=self.max_queue,
                    n=count,
                )
            self.dropped += count

    def _release(self, batch: int, now: bool = False) -> None:
        left = self._batches[batch] - 1
        if left:
            self._batches[batch] = left
            return
        del self._batches[batch]
        if self.spool is not None:
            self._remove(batch, now)

    def _remove(self, batch: int, now: bool = False) -> None:
        """
        Remove a batch from the spool: at once while restoring, else on the spool's thread.
        """
        assert self.spool is not None
        call = maybeDeferred if now else self.spool.call
        call(self.spool.remove_batch, batch).addErrback(self._not_removed)

    def _not_removed(self, failure: Failure) -> None:
        if failure.check(SpoolError):
            log.warn("{reason}", reason=describe(failure))
        else:
            log.failure("bug while removing a spool batch", failure)

    def ack(self, sha256: str) -> bool:
        """
        Forget the payload with this SHA256; return whether it was queued.
        """
        queued = self._queued.pop(sha256, None)
        if queued is None:
            return False
        self._release(queued.batch)
        for listener in self.ack_listeners:
            listener(queued.payload)
        if self.dropped:
            log.warn("dropped {n} of the oldest messages in all while the outbox was full",
                     n=self.dropped)  # fmt: skip
            self.dropped = 0
        if not self._queued:
            empty, self._empty = self._empty, []
            for d in empty:
                d.callback(None)
        return True

    def pending(self) -> list[bytes]:
        """
        Every queued payload, oldest first.
        """
        return [queued.payload for queued in self._queued.values()]

    def first(self) -> bytes | None:
        for queued in self._queued.values():
            return queued.payload
        return None

    def empty(self) -> Deferred[None]:
        """
        Fire once nothing is queued (at once if nothing is).
        """
        if not self._queued:
            return succeed(None)
        d: Deferred[None] = Deferred(self._empty.remove)
        self._empty.append(d)
        return d

    def close(self) -> Deferred[None]:
        """
        Close the spool, once what was asked of it is done.
        """
        if self.spool is None:
            return succeed(None)
        return self.spool.close()


def queue_blocks(outbox: Outbox, payload_format: PayloadFormat) -> Sink:
    """
    The sink that queues each block in C{outbox} as a payload of C{payload_format}.
    """

    async def queue(blocks: Sequence[Block], checkpoint: Checkpoint) -> None:
        await outbox.put([encode_payload(b, payload_format) for b in blocks], checkpoint)
        for b in blocks:
            log.debug("queued block {number} {hash}", number=b.number, hash=b.hash)

    def sink(blocks: Sequence[Block], checkpoint: Checkpoint) -> Deferred[None]:
        return Deferred.fromCoroutine(queue(blocks, checkpoint))

    return sink


# -- delivery ---------------------------------------------------------------------------------


class ClientProtocol(FrameProtocol):
    """
    The connection to the server: payloads out, acknowledgements in.
    """

    def __init__(self, delivery: Delivery) -> None:
        super().__init__()
        self.delivery = delivery

    def connectionMade(self) -> None:
        self.delivery.connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.delivery.disconnected(self, reason)

    def controlReceived(self, frame: ControlFrame) -> None:
        if isinstance(frame, Ack):
            self.delivery.acked(frame.sha256)
        elif isinstance(frame, Refusal):
            self.delivery.refused(frame.reason)
        else:
            super().controlReceived(frame)


class ClientFactory(Factory):
    """
    Builds the L{ClientProtocol}s of one L{Delivery}.
    """

    noisy = False

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery

    def buildProtocol(self, addr: Any) -> ClientProtocol:
        return ClientProtocol(self.delivery)


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """
    An endpoint that tells C{failed} why each connection attempt failed.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, failed: Callable[[Failure], None]) -> None:
        self.endpoint = endpoint
        self.failed = failed

    def connect(self, protocolFactory: Any) -> Deferred[Any]:  # noqa: N803 -- Twisted's name
        d: Deferred[Any] = self.endpoint.connect(protocolFactory)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> Failure:
        self.failed(failure)
        return failure


@implementer(ILogObserver)
def _as_debug(event: dict[str, Any]) -> None:
    log_observer(dict(event, log_level=LogLevel.debug))


class ReconnectingService(ClientService):
    """
    C{ClientService} whose note on every retry is a debug message: L{Delivery} says once that
    the server cannot be reached.
    """

    _log = Logger(observer=_as_debug)


class Delivery:
    """
    Sends the outbox over one connection at a time (C{ClientService} makes them): on connect a
    hello, then every payload not acknowledged yet, in order, then each new one as it is
    queued; an acknowledgement removes its payload from the outbox.
    """

    def __init__(self, outbox: Outbox, server: str, hello: Hello | None = None) -> None:
        self.outbox = outbox
        self.server = server
        self.hello = hello
        self.protocol: ClientProtocol | None = None
        self.stopping = False
        self.unreachable: str | None = None
        self.refusal: str | None = None
        self.connection_listeners: list[Callable[[bool], None]] = []
        """Called with C{True} on each connection to the server, C{False} when it is lost."""
        outbox.listeners.append(self._queued)

    def factory(self) -> ClientFactory:
        return ClientFactory(self)

    def endpoint(self, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
        """
        C{endpoint}, with its failures to connect reported here.
        """
        return _ReportingEndpoint(endpoint, self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        reason = describe(failure)
        if reason != self.unreachable:
            log.warn("cannot connect to {server}: {reason}; retrying", server=self.server,
                     reason=reason)  # fmt: skip
        self.unreachable = reason

    def connected(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        self.unreachable = None
        for listener in self.connection_listeners:
            listener(True)
        pending = self.outbox.pending()
        (log.debug if self.refusal else log.info)(
            "connected to {server}; sending {n} unacknowledged messages",
            server=self.server,
            n=len(pending),
        )
        if self.hello is not None:
            protocol.send_control(self.hello)
        for payload in pending:
            protocol.sendString(payload)

    def disconnected(self, protocol: ClientProtocol, reason: Failure) -> None:
        if self.protocol is protocol:
            self.protocol = None
            for listener in self.connection_listeners:
                listener(False)
        if self.stopping or self.refusal is not None:
            return
        log.warn(
            "lost the connection to {server}: {reason}; {n} messages unacknowledged",
            server=self.server,
            reason=protocol.dropped or describe(reason),
            n=len(self.outbox),
        )

    def _queued(self, payloads: Sequence[bytes]) -> None:
        if self.protocol is not None:
            for payload in payloads:
                self.protocol.sendString(payload)

    def acked(self, sha256: str) -> None:
        if self.refusal is not None:
            log.info("{server} accepts this client again", server=self.server)
            self.refusal = None
        if not self.outbox.ack(sha256):
            log.debug("acknowledgement of {sha256}, not queued", sha256=sha256)

    def refused(self, reason: str) -> None:
        if reason != self.refusal:
            log.error("{server} refused this client: {reason}", server=self.server,
                      reason=reason)  # fmt: skip
        self.refusal = reason


class _OneShotProtocol(FrameProtocol):
    """
    The older client's exchange: one payload, then close.
    """

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.sendString(self.payload)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ConnectionDone):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def controlReceived(self, frame: ControlFrame) -> None:
        pass  # a newer server's acknowledgement: not awaited


class OneShotDelivery(Service):
    """
    Delivery to older servers: a new connection per payload, which is sent and closed, without
    waiting for an acknowledgement; the outbox is worked through in order.  A failed attempt
    is retried after C{retry_policy(attempt)} seconds.
    """

    def __init__(
        self,
        outbox: Outbox,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        server: str,
        retry_policy: Callable[[int], float],
        timeout: float = ONESHOT_TIMEOUT,
    ) -> None:
        self.outbox = outbox
        self.endpoint = endpoint
        self.clock = clock
        self.server = server
        self.retry_policy = retry_policy
        self.timeout = timeout
        self.stopping = False
        self._sending: Deferred[None] | None = None
        outbox.listeners.append(self._kick)

    def startService(self) -> None:
        super().startService()
        self._kick()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._sending is not None:
            self._sending.cancel()
        return succeed(None)

    def _kick(self, new: Sequence[bytes] = ()) -> None:
        if not self.running or self._sending is not None or not len(self.outbox):
            return
        d = Deferred.fromCoroutine(self._drain())
        if not d.called:
            self._sending = d
            d.addBoth(self._drained)
        d.addErrback(lambda f: log.failure("bug while sending to {server}", f,
                                           server=self.server))  # fmt: skip

    def _drained(self, result: object) -> object:
        self._sending = None
        return result

    async def _drain(self) -> None:
        failures = 0
        trouble: str | None = None
        while self.running and (payload := self.outbox.first()) is not None:
            protocol = _OneShotProtocol(payload)
            try:
                connecting = connectProtocol(self.endpoint, protocol)
                await connecting.addTimeout(self.timeout, self.clock)
                await protocol.done.addTimeout(self.timeout, self.clock)
            except CancelledError:
                return
            except Exception as e:
                failures += 1
                reason = describe(e)
                if reason != trouble:
                    log.warn("cannot send to {server}: {reason}; retrying", server=self.server,
                             reason=reason)  # fmt: skip
                trouble = reason
                try:
                    await deferLater(self.clock, self.retry_policy(failures))
                except CancelledError:
                    return
                continue
            if trouble is not None:
                log.info("{server} takes messages again", server=self.server)
                trouble = None
            failures = 0
            self.outbox.ack(payload_hash(payload))


# -- the whole client -------------------------------------------------------------------------


class EthClient(MultiService):
    """
    The poller and the delivery over one outbox.  Stopping is graceful: polling stops, what is
    queued has C{flush_timeout} seconds to be acknowledged, then the connection closes; what
    is left stays in the spool (when there is one).
    """

    def __init__(
        self,
        poller: Poller,
        delivery: Service,
        connection: Delivery | None,
        outbox: Outbox,
        node: INode,
        clock: IReactorTime,
        flush_timeout: float = FLUSH_TIMEOUT,
    ) -> None:
        super().__init__()
        self.poller = poller
        self.delivery = delivery
        self.connection = connection
        self.outbox = outbox
        self.node = node
        self.clock = clock
        self.flush_timeout = flush_timeout
        delivery.setServiceParent(self)
        poller.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self.poller.stopService()
        if len(self.outbox):
            log.info("waiting up to {t:g} s for {n} messages to be acknowledged",
                     t=self.flush_timeout, n=len(self.outbox))  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await self.outbox.empty().addTimeout(self.flush_timeout, self.clock)
        if self.connection is not None:
            self.connection.stopping = True
        await self.delivery.stopService()
        try:
            await self.node.close()
        except Exception as e:
            log.debug("closing the node: {reason}", reason=describe(e))
        left = len(self.outbox)
        if left and self.outbox.spool is not None:
            log.info("{n} unacknowledged messages kept in the spool {directory}", n=left,
                     directory=self.outbox.spool.directory)  # fmt: skip
        elif left:
            log.warn("{n} unacknowledged messages lost: no --spool given", n=left)
        await self.outbox.close()
        for service in self:
            if service.running and service not in (self.poller, self.delivery):
                await service.stopService()
