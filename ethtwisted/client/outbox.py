"""
The outbox: the payloads the server has not acknowledged yet, kept in a L{Spool} when there is
one; L{queue_blocks} is the follower's sink that fills it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from ethtwisted.client.follower import Checkpoint, Sink
from ethtwisted.client.follower import Sighting as Seen
from ethtwisted.client.spool import Spool, SpoolError
from ethtwisted.frames import Sighting
from ethtwisted.logs import Logger, describe
from ethtwisted.protocol import PayloadFormat, encode_payload, payload_hash

log = Logger(namespace="ethtwisted.client")

DEFAULT_MAX_QUEUE = 10_000


@dataclass
class _Queued:
    payload: bytes
    batch: int
    sighting: Sighting | None = None


class Outbox:
    """
    The payloads the server has not acknowledged yet, oldest first, each once.

    At most C{max_queue} are kept: past it the oldest are dropped, with a warning.  With a
    L{Spool}, what is queued is on disk before it is queued (and sent), and the follower's
    checkpoint after it, before L{put}'s Deferred fires; a payload leaves the disk after its
    acknowledgement.  Each payload keeps the L{Sighting} it was queued with, on disk too.
    """

    def __init__(self, max_queue: int = DEFAULT_MAX_QUEUE, spool: Spool | None = None) -> None:
        self.max_queue = max_queue
        self.spool = spool
        self.queue_listeners: list[Callable[[Sequence[bytes]], None]] = []
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
            for payload, sighting in payloads:
                sha256 = payload_hash(payload)
                if sha256 not in self._queued:
                    self._queued[sha256] = _Queued(payload, sequence, sighting)
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
        self,
        payloads: Sequence[bytes],
        checkpoint: Checkpoint | None = None,
        sightings: Iterable[Sighting] = (),
    ) -> Deferred[list[bytes]]:
        """
        Queue the C{payloads} not queued yet, in order, each with the one of C{sightings} that
        names its SHA256, if any; the Deferred fires with them.  With a spool, they are queued
        once on disk, and it fires once C{checkpoint} is too; it fails with L{SpoolError} if
        either could not be written (and nothing is queued if they could not).
        """
        return Deferred.fromCoroutine(self._put(payloads, checkpoint, sightings))

    async def _put(
        self,
        payloads: Sequence[bytes],
        checkpoint: Checkpoint | None,
        sightings: Iterable[Sighting],
    ) -> list[bytes]:
        seen = {s.sha256: s for s in sightings}
        new: dict[str, bytes] = {}
        for payload in payloads:
            sha256 = payload_hash(payload)
            if sha256 not in self._queued:
                new[sha256] = payload
        batch = self._next_batch
        if new:
            self._next_batch += 1
        if self.spool is not None and new:
            kept = [seen.get(sha256) for sha256 in new]
            await self.spool.call(self.spool.write_batch, batch, list(new.values()), kept)
            # Queued meanwhile by another put: that one counts them, this batch holds copies.
            new = {s: p for s, p in new.items() if s not in self._queued}
            if not new:
                self._remove(batch)
        if new:
            self._batches[batch] = len(new)
            for sha256, payload in new.items():
                self._queued[sha256] = _Queued(payload, batch, seen.get(sha256))
            self._trim()
        added = [p for s, p in new.items() if s in self._queued]
        if added:
            for listener in self.queue_listeners:
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

    def sighting(self, payload: bytes) -> Sighting | None:
        """
        The sighting C{payload} was queued with, if it is queued with one.
        """
        queued = self._queued.get(payload_hash(payload))
        return None if queued is None else queued.sighting

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
    The sink that queues each block in C{outbox} as a payload of C{payload_format}, with its
    sighting.
    """

    async def queue(seen: Sequence[Seen], checkpoint: Checkpoint) -> None:
        payloads = [encode_payload(s.block, payload_format) for s in seen]
        sightings = [Sighting(payload_hash(p), round(s.seen * 1000), s.source)
                     for p, s in zip(payloads, seen, strict=True)]  # fmt: skip
        await outbox.put(payloads, checkpoint, sightings)
        for s in seen:
            log.debug("queued block {number} {hash}", number=s.block.number, hash=s.block.hash)

    def sink(seen: Sequence[Seen], checkpoint: Checkpoint) -> Deferred[None]:
        return Deferred.fromCoroutine(queue(seen, checkpoint))

    return sink
