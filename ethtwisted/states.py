"""
The fleet view's states: which clients are C{behind}, C{stalled}, C{silent}, C{syncing} or on a
C{fork}, decided from what the stores hold (L{Facts}) at one moment.  L{decide} is a pure
function of its arguments, so every server that runs it on the same facts decides the same;
L{ethtwisted.storage.fleet} gathers the facts and keeps the states in SQL, where several
servers agree on each change (docs/stats.md, "States").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

STATES = ("behind", "stalled", "silent", "syncing", "fork")
"""Every state a client may be in; several at once.  In none of them, it is C{current}."""

DEFAULT_BEHIND_BLOCKS = 3
DEFAULT_BEHIND_SECONDS = 30.0
DEFAULT_STALL_SECONDS = 60.0
DEFAULT_SILENT_SECONDS = 60.0
DEFAULT_FORK_SECONDS = 30.0

RECONNECT_GRACE = 3.0
"""Seconds a client may be without a connection before it is silent: one that comes back
within them (a restart, a failover to another server) is not."""
FORK_WINDOW = 64
"""Heights below each chain's best head where the fleet's blocks are compared."""


@dataclass(frozen=True)
class Thresholds:
    """
    When each state begins (the C{--behind-blocks}, ... options of eth-server).
    """

    behind_blocks: int = DEFAULT_BEHIND_BLOCKS
    behind_seconds: float = DEFAULT_BEHIND_SECONDS
    stall_seconds: float = DEFAULT_STALL_SECONDS
    silent_seconds: float = DEFAULT_SILENT_SECONDS
    fork_seconds: float = DEFAULT_FORK_SECONDS


@dataclass(frozen=True)
class ClientFacts:
    """
    What the stores know of one watched client (one that has held a connection of today's
    protocol).
    """

    client: str
    last_frame: float
    """When a frame of it last arrived, at any server."""
    connected: bool
    """Whether a server holds its connection now."""
    gone_at: float | None
    """When its last connection ended (L{None} while connected)."""
    chain_id: int | None = None
    head: int | None = None
    """The number of the last block it reported."""
    head_at: float | None = None
    """When its last block arrived."""
    syncing: bool = False
    """Whether its node said it is syncing, in its latest status."""


@dataclass(frozen=True)
class ChainFacts:
    """
    What the stores know of one chain: its best head, when the fleet reached each height that
    a client needs to be measured against, and who reported which block at the heights where
    the fleet stored more than one.
    """

    chain_id: int
    best: int
    """The highest number stored."""
    best_at: float
    """When the fleet first reached it."""
    reached: Mapping[int, float] = field(default_factory=dict)
    """Height → when the fleet first stored a block at the lowest stored height at or above
    it (for the heights asked)."""
    contested: Mapping[int, Mapping[str, tuple[str, float]]] = field(default_factory=dict)
    """Height (with more than one block stored) → client → (the block it reported last
    there, when it saw it)."""
    forked: Mapping[str, float] | None = None
    """L{forks} of C{contested}, when the caller knows them already."""


@dataclass(frozen=True)
class State:
    """
    A client in one state: since when, and where it and its chain were when it began.
    """

    state: str
    since: float
    chain_id: int | None
    head: int | None
    best_head: int | None


@dataclass(frozen=True)
class FleetView:
    """
    What a decision read and decided, for the per-client metrics: every client's chain, last
    block and when it was last heard from (watched or not), and every watched client's states.
    """

    decided: float
    clients: Mapping[str, tuple[int | None, int | None, float]]
    """Client → (chain id, number of its last block, when its last message arrived)."""
    states: Mapping[str, Mapping[str, State]]
    """Watched client → the states it is in (empty: current)."""


def behind_height(facts: ClientFacts, thresholds: Thresholds) -> int | None:
    """
    The height whose arrival made (or will make) C{facts}' client behind: C{behind_blocks}
    past its head, plus one.
    """
    if facts.head is None:
        return None
    return facts.head + thresholds.behind_blocks + 1


def fleet_block(reports: Mapping[str, tuple[str, float]]) -> str | None:
    """
    The block that strictly the most clients reported at one height; L{None} on a tie (no
    side can be called the fork).
    """
    counts: dict[str, int] = {}
    for block, _ in reports.values():
        counts[block] = counts.get(block, 0) + 1
    ranked = sorted(counts.values(), reverse=True)
    if len(ranked) > 1 and ranked[0] == ranked[1]:
        return None
    return max(counts, key=counts.__getitem__)


def fleet_head(clients: Iterable[ClientFacts], forked: Mapping[str, float], stored: int) -> int:
    """
    The best head of a chain that its clients are measured against: C{stored} (the highest
    block a client is on), unless clients on a fork (C{forked}: L{forks}) are on it; then the
    highest head of the others, so that a node on blocks of its own ahead of the fleet does
    not put the fleet behind.
    """
    heads = [c.head for c in clients if c.head is not None and c.client not in forked]
    if len(heads) == sum(c.head is not None for c in clients):
        return stored
    return max(heads, default=stored)


def decide(
    clients: Iterable[ClientFacts],
    chains: Mapping[int, ChainFacts],
    thresholds: Thresholds,
    now: float,
) -> dict[str, dict[str, State]]:
    """
    The states each client is in at C{now}: client → state → L{State}.  A client in none is
    left out.
    """
    decided: dict[str, dict[str, State]] = {}
    forked = {
        chain_id: chain.forked if chain.forked is not None else forks(chain.contested)
        for chain_id, chain in chains.items()
    }
    for facts in clients:
        chain = chains.get(facts.chain_id) if facts.chain_id is not None else None
        best = chain.best if chain is not None else None
        on_fork = forked[chain.chain_id].get(facts.client) if chain is not None else None
        states = {
            state: State(state, since, facts.chain_id, facts.head, best)
            for state, since in _causes(facts, chain, on_fork, thresholds, now)
        }
        if states:
            decided[facts.client] = states
    return decided


def _causes(
    facts: ClientFacts,
    chain: ChainFacts | None,
    forked: float | None,
    thresholds: Thresholds,
    now: float,
) -> Iterator[tuple[str, float]]:
    """
    Each state C{facts}' client is in, with since when (C{forked}: since when it has been on
    a fork, L{forks}).
    """
    gone = not facts.connected and (facts.gone_at is None or now - facts.gone_at > RECONNECT_GRACE)
    if gone or now - facts.last_frame > thresholds.silent_seconds:
        yield "silent", facts.last_frame
    if facts.syncing:
        yield "syncing", now
    if chain is None or facts.head is None:
        return
    height = behind_height(facts, thresholds)
    reached = chain.reached.get(height) if height is not None else None
    if (
        chain.best > facts.head + thresholds.behind_blocks
        and reached is not None
        and now - reached > thresholds.behind_seconds
    ):
        yield "behind", reached
    if (
        facts.head_at is not None
        and chain.best > facts.head
        and chain.best_at > facts.head_at
        and now - facts.head_at > thresholds.stall_seconds
    ):
        yield "stalled", facts.head_at
    if forked is not None and now - forked > thresholds.fork_seconds:
        yield "fork", forked


def forks(contested: Mapping[int, Mapping[str, tuple[str, float]]]) -> dict[str, float]:
    """
    The clients that have reported, at some height of C{contested}, a block other than the
    fleet's there (L{fleet_block}): client → the earliest such sighting.
    """
    since: dict[str, float] = {}
    for reports in contested.values():
        block = fleet_block(reports)
        if block is None:
            continue
        for client, (own, seen) in reports.items():
            if own != block and (client not in since or seen < since[client]):
                since[client] = seen
    return since


def _time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_change(client: str, state: State, event: str, at: float) -> str:
    """
    One line for people: C{client} C{event} (C{entered} or C{left}) C{state}.
    """
    where = ""
    if state.head is not None:
        where = f" at block {state.head}"
        if state.best_head is not None:
            where += f", the best head of chain {state.chain_id} at {state.best_head}"
    lasted = f"{at - state.since:.0f} s"
    if event == "left":
        return f"{client} is no longer {state.state}{where}, after {lasted}"
    cause = {
        "behind": f"{(state.best_head or 0) - (state.head or 0)} blocks behind since"
        f" {_time(state.since)}",
        "stalled": f"no new head since {_time(state.since)}",
        "silent": f"nothing heard since {_time(state.since)}",
        "syncing": "its node says it is syncing",
        "fork": f"its blocks differ from the fleet's since {_time(state.since)}",
    }[state.state]
    return f"{client} is {state.state}{where}: {cause}"
