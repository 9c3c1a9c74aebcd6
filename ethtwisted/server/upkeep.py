"""
What an eth-server does on a timer beside the collecting: prune old sightings (whole days, or
in small batches) and old payloads no gap proof needs (L{SightingPruner}), and say in one line
how it is doing (L{Summary}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel

from ethtwisted.interfaces import IBlockReader, IFleet, ILedger
from ethtwisted.logs import Logger, Trouble, describe
from ethtwisted.records import Received
from ethtwisted.states import STATES

log = Logger(namespace="ethtwisted.server")

PRUNE_INTERVAL = 60.0
PRUNE_BATCH = 500
"""Sightings deleted per transaction: short, so the group commits never wait long for one."""
MAX_PRUNE_BATCHES = 20
"""Batches per run at most; what is left waits for the next run."""
DEFAULT_KEEP_SIGHTINGS = 30
DEFAULT_SUMMARY_INTERVAL = 60.0
MAX_NAMED = 5
"""Clients named in a summary line as not current; the rest are counted."""


class SightingPruner:
    """
    Deletes the sightings of the payloads first seen over C{keep_days} days ago (the days
    before that one, whole where the store keeps them by day), L{PRUNE_BATCH} at a time
    otherwise, one transaction after another, at most L{MAX_PRUNE_BATCHES} per L{run}; with
    C{keep_blocks}, then the payloads first seen over that many days ago that no gap proof
    needs, reading L{PRUNE_BATCH} a transaction and at most L{MAX_PRUNE_BATCHES} per run, on
    from where the last run got to.
    """

    def __init__(
        self,
        ledger: ILedger,
        reactor: IReactorTime,
        keep_days: int,
        ready: Callable[[], bool] = lambda: True,
        keep_blocks: int | None = None,
    ) -> None:
        self.ledger = ledger
        self.ready = ready
        self.reactor = reactor
        self.keep = keep_days * 86400.0
        self.keep_blocks = None if keep_blocks is None else keep_blocks * 86400.0
        self.cursor: tuple[float, str] | None = None
        """The last payload read for pruning (first seen, SHA256): the next run goes on after
        it; from the first again after a restart."""
        self.trouble = Trouble(log, LogLevel.warn, "cannot prune old sightings: {reason}",
                               "pruning old sightings again")  # fmt: skip

    def run(self) -> Deferred[None]:
        """
        One run, once C{ready} says the stores are; never fails (a failing timer would stop
        for good).
        """
        if not self.ready():
            return succeed(None)
        return Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        now = self.reactor.seconds()
        deleted = blocks = 0
        try:
            for _ in range(MAX_PRUNE_BATCHES):
                n = await self.ledger.prune_sightings(now - self.keep, PRUNE_BATCH)
                deleted += n
                if n < PRUNE_BATCH:
                    break
            if self.keep_blocks is not None:
                for _ in range(MAX_PRUNE_BATCHES):
                    before = now - self.keep_blocks
                    n, cursor = await self.ledger.prune_blocks(before, self.cursor, PRUNE_BATCH)
                    blocks += n
                    if cursor == self.cursor:
                        break
                    self.cursor = cursor
        except Exception as e:
            self.trouble.say(describe(e))
            return
        self.trouble.ended()
        if deleted or blocks:
            log.debug("pruned {n} sightings and {blocks} payloads", n=deleted, blocks=blocks)


class Summary:
    """
    One log line per run: payloads stored since the last line, clients connected, the best
    head of each chain and the clients not current, with their states (L{ethtwisted.states}).
    """

    def __init__(
        self,
        reads: IBlockReader,
        fleet: IFleet,
        connected: Callable[[], int],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.reads = reads
        self.fleet = fleet
        self.ready = ready
        self.connected = connected
        self.stored = 0
        self.trouble = Trouble(log, LogLevel.warn,
                               "no summary: the store does not answer: {reason}")  # fmt: skip

    def committed(self, group: Sequence[Received], new: int) -> None:
        """An L{Ingest} observer: count what each commit stored."""
        self.stored += new

    def run(self) -> Deferred[None]:
        """
        Log the line, once C{ready} says the stores are; never fails.
        """
        if not self.ready():
            return succeed(None)
        return Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        stored, self.stored = self.stored, 0
        try:
            heads = await self.reads.heads(10)
            states = await self.fleet.states()
        except Exception as e:
            self.trouble.say(describe(e))
            return
        self.trouble.ended()
        # In the order of STATES, as everywhere the states are listed.
        behind = [
            f"{client} ({', '.join(s for s in STATES if s in states[client])})"
            for client in sorted(states)
            if states[client]
        ]
        lagging = ", ".join(behind[:MAX_NAMED]) or "none"
        if len(behind) > MAX_NAMED:
            lagging += f" and {len(behind) - MAX_NAMED} more"
        chains = ", ".join(
            f"chain {h.chain_id if h.chain_id is not None else '?'} at {h.number}" for h in heads
        )
        log.info(
            "stored {stored} new payloads; {connected} clients connected; heads: {heads};"
            " not current: {lagging}",
            stored=stored,
            connected=self.connected(),
            heads=chains or "none yet",
            lagging=lagging,
        )
