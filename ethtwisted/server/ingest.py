"""
Payloads on their way into the stores: committed in groups, each acknowledged once it is
stored and counted, with back-pressure on the readers while the stores are behind.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ethtwisted.interfaces import IBlockStore, ICounterStore
from ethtwisted.logs import Logger, Trouble, describe
from ethtwisted.records import Received, StatusReport
from ethtwisted.storage import RejectedError, is_conflict, is_rejection

log = Logger(namespace="ethtwisted.server")

MAX_BATCH = 1000
HIGH_WATER_BYTES = 8 * 1024 * 1024
MAX_RETRY_DELAY = 5.0
MAX_CONFLICT_RETRIES = 3
"""Times in a row a group that conflicts with a concurrent transaction is tried again at once;
one conflict more is taken for an outage (retried after a delay, and logged)."""
_retry_delay = backoffPolicy(
    initialDelay=0.1, maxDelay=MAX_RETRY_DELAY, factor=2.0, jitter=lambda: 0.0
)
"""The wait before retrying a store after the n-th failure in a row (0 for the first)."""
ENTRY_OVERHEAD_BYTES = 2000
"""What a message held costs beyond its payload's characters, as counted against the high-water
mark.  Measured with tracemalloc on 100,000 messages fed through a connection into an Ingest
whose commit never ends (Python 3.11): 1,895 bytes each besides the payload for the canonical
block message (its str, its SHA256, the parsed L{Block} with two hex strings, L{Received}, the
entry, its Deferred and the connection's callbacks on it, the peer's address), 1,467 for a
payload that is no block; tests/test_server.py measures it again."""
STATUS_BYTES = 3000
"""What a status report held costs, as counted against the high-water mark (at most one
pending per client)."""


@dataclass
class _Entry:
    received: Received | StatusReport
    size: int
    done: Deferred[str] = field(default_factory=Deferred)


def _payloads(group: Sequence[_Entry]) -> list[Received]:
    return [e.received for e in group if isinstance(e.received, Received)]


class Ingest:
    """
    Payloads on their way into the stores.

    Whatever arrives while a transaction is being committed goes into the next one, so a lone
    message is committed at once and a busy server commits in large groups.  A group is
    committed to SQL, then counted in Redis (when configured); only then is each payload's
    Deferred fired and its sender acknowledged.  Status reports go into the same groups (each
    payload's sighting is in the payload's L{Received}): a client's report not yet taken into a
    transaction is replaced by its next one, so each client holds at most one.  A store that
    is unavailable is retried with capped backoff, the same group again; meanwhile readers are
    paused past a high-water mark of pending bytes and resumed below half of it.  A store that
    rejects what a group holds (L{is_rejection}) has the group split in halves, tried again at
    once, until the message it rejects is alone: that message's Deferred fails with
    L{RejectedError}, the others are stored.
    A transaction that conflicts with a concurrent one (L{is_conflict}: another server storing
    the same blocks through another Galera node) is tried again at once, up to
    L{MAX_CONFLICT_RETRIES} times in a row, then as an outage; each conflict is told to the
    C{conflict_listeners} and logged at debug level only.
    """

    def __init__(
        self,
        store: IBlockStore,
        counters: ICounterStore | None,
        reactor: IReactorTime,
        max_batch: int = MAX_BATCH,
        high_water_bytes: int = HIGH_WATER_BYTES,
    ) -> None:
        self.store = store
        self.counters = counters
        self.reactor = reactor
        self.max_batch = max_batch
        self.high_water_bytes = high_water_bytes
        self.pending: deque[_Entry] = deque()
        """Received, not yet taken into a transaction."""
        self.halves: deque[tuple[list[_Entry], Callable[[list[_Entry]], None]]] = deque()
        """Parts of a rejected group, each with the step to try it again at, before anything
        pending."""
        self.unsettled = 0
        """Received, not yet stored and counted: pending or in a transaction under way."""
        self.pending_bytes = 0
        self.busy = False
        self.paused = False
        self.producers: set[IPushProducer] = set()
        self.trouble = Trouble(
            log,
            LogLevel.error,
            "{reason}; holding {n} messages and retrying",
            "stores are back after {n} failed attempts",
        )
        self.failures = 0
        self.conflicts = 0
        """Conflicts in a row of the group under way."""
        self._idle: list[Deferred[None]] = []
        self.commit_listeners: list[Callable[[Sequence[Received], int], None]] = []
        """Called with each committed group and how many of its payloads were new."""
        self.conflict_listeners: list[Callable[[], None]] = []
        """Called with each conflict, whether its group is then tried again at once or later."""
        self.statuses: dict[str, _Entry] = {}
        """Each client's status report not yet taken into a transaction."""

    def submit(self, received: Received) -> Deferred[str]:
        """
        Queue C{received}; the Deferred fires with its SHA256 once it is stored and counted.
        """
        entry = _Entry(received, len(received.payload) + ENTRY_OVERHEAD_BYTES)
        self._queue(entry)
        return entry.done

    def report(self, status: StatusReport) -> None:
        """
        Queue C{status} for the next group, in place of that client's report still queued.
        """
        queued = self.statuses.get(status.client)
        if queued is not None:
            queued.received = status
            return
        entry = _Entry(status, STATUS_BYTES)
        self.statuses[status.client] = entry
        entry.done.addErrback(
            lambda f: log.warn(
                "status of {client} not stored: {reason}", client=status.client, reason=describe(f)
            )
        )
        self._queue(entry)

    def _queue(self, entry: _Entry) -> None:
        self.pending.append(entry)
        self.unsettled += 1
        self.pending_bytes += entry.size
        if not self.busy:
            self.busy = True
            # Let the rest of this read be parsed first, so that it joins the same group.
            self.reactor.callLater(0, self._next)
        if self.pending_bytes > self.high_water_bytes and not self.paused:
            self.paused = True
            log.info("pausing {n} readers: {bytes} bytes waiting for the stores",
                     n=len(self.producers), bytes=self.pending_bytes)  # fmt: skip
            for producer in self.producers:
                producer.pauseProducing()

    def add_producer(self, producer: IPushProducer) -> None:
        self.producers.add(producer)
        if self.paused:
            producer.pauseProducing()

    def remove_producer(self, producer: IPushProducer) -> None:
        self.producers.discard(producer)

    def _next(self) -> None:
        if self.halves:
            group, step = self.halves.popleft()
            step(group)
            return
        if not self.pending:
            self.busy = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        group = [self.pending.popleft() for _ in range(min(self.max_batch, len(self.pending)))]
        for e in group:
            if isinstance(e.received, StatusReport):
                del self.statuses[e.received.client]
        self._store(group)

    def _store(self, group: list[_Entry]) -> None:
        d = self.store.store([e.received for e in group])
        d.addCallbacks(
            lambda new: self._stored(group, new),
            lambda f: self._failed(group, "SQL", f, self._store),
        )
        d.addErrback(lambda f: log.failure("storing a group", f))

    def _stored(self, group: list[_Entry], new: int) -> None:
        for listener in self.commit_listeners:
            listener(_payloads(group), new)
        self._record(group)

    def _record(self, group: list[_Entry], name: str | None = None) -> None:
        if self.counters is None or not _payloads(group):
            self._done(group)
            return
        # A retry keeps the group's name, so that Redis counts it once however often it is sent.
        name = name or uuid.uuid4().hex
        d = self.counters.record(_payloads(group), name)
        d.addCallbacks(
            lambda _: self._done(group),
            lambda f: self._failed(group, "Redis", f, lambda g: self._record(g, name)),
        )
        d.addErrback(lambda f: log.failure("counting a group", f))

    def _failed(
        self,
        group: list[_Entry],
        store: str,
        failure: Failure,
        again: Callable[[list[_Entry]], None],
    ) -> None:
        if is_conflict(failure):
            for listener in self.conflict_listeners:
                listener()
            if self.conflicts < MAX_CONFLICT_RETRIES:
                self.conflicts += 1
                log.debug("{store} store conflict ({reason}): trying the group of {n} again",
                          store=store, reason=describe(failure), n=len(group))  # fmt: skip
                self.reactor.callLater(0, again, group)
                return
        self.conflicts = 0
        if not is_rejection(failure):
            self._retry(group, store, failure, again)
            return
        if len(group) > 1:
            # Redis halves are counted under names of their own: the whole was not counted.
            step = self._store if store == "SQL" else self._record
            middle = len(group) // 2
            self.halves.extendleft([(group[middle:], step), (group[:middle], step)])
            log.debug("{store} store rejects a group of {n}: trying its halves", store=store,
                      n=len(group))  # fmt: skip
        else:
            entry = group[0]
            self._settle(group)
            entry.done.errback(RejectedError(f"the {store} store refuses it: {describe(failure)}"))
        # At once, but from the reactor: a store failing synchronously must not recurse.
        self.reactor.callLater(0, self._next)

    def _retry(
        self,
        group: list[_Entry],
        store: str,
        failure: Failure,
        again: Callable[[list[_Entry]], None],
    ) -> None:
        self.failures += 1
        self.trouble.say(f"{store} store unavailable: {describe(failure)}", n=self.unsettled)
        delay = _retry_delay(self.failures - 1)
        self.reactor.callLater(delay, again, group)

    def _done(self, group: list[_Entry]) -> None:
        self.trouble.ended(n=self.failures)
        self.failures = 0
        self.conflicts = 0
        self._settle(group)
        for e in group:
            e.done.callback(e.received.sha256 if isinstance(e.received, Received) else "")
        self._next()

    def _settle(self, group: list[_Entry]) -> None:
        self.pending_bytes -= sum(e.size for e in group)
        self.unsettled -= len(group)
        if self.paused and self.pending_bytes <= self.high_water_bytes // 2:
            self.paused = False
            log.info("resuming {n} readers", n=len(self.producers))
            for producer in self.producers:
                producer.resumeProducing()

    def idle(self) -> Deferred[None]:
        """
        Fire once nothing is pending any more.
        """
        if not self.busy:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d
