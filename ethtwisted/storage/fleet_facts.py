"""
What a decision of the fleet's states reads (the facts of L{ethtwisted.states}), in the
decision's transaction, and what a server keeps of it from one decision to its next (L{Memo}).

A server whose previous decision was the last one made (L{ethtwisted.storage.fleet} checks the
row of C{eth_fleet}) reads only what changed since: the rows of C{eth_presence} and
C{eth_states} are its own writes, kept; of C{eth_clients} it reads the rows heard from
since, and of the clients whose message count moved, the sightings they can have added at the
contested heights kept; a height newly contested (a second block there), or a block new at a
contested one, has its sightings read once.
Any other server's decision in between, or none of its own yet, makes it read them all, as a
server that starts does.  So a decision costs what changed and the clients' rows, never the
number of stored blocks or sightings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ethtwisted.states import (
    FORK_WINDOW,
    ChainFacts,
    ClientFacts,
    State,
    Thresholds,
    behind_height,
    fleet_block,
    fleet_head,
)
from ethtwisted.storage import chunks

BATCH = 500
"""The most values one statement lists (SQLite allows 32,766 placeholders)."""
UNION = 100
"""The most clients one statement of L{latest_sightings} reads (SQLite allows 500 SELECTs)."""
SLACK = 2
"""Sightings read beyond what each client sent (L{latest_sightings})."""
RECENT = 5.0
"""Seconds before the last decision from which a row of C{eth_clients} is read again: a commit
lands after the arrival it records (L{read_reported} checks that none was missed)."""


@dataclass(frozen=True)
class Reported:
    """One client's row of C{eth_clients}: its messages, and its last block."""

    messages: int
    chain_id: int | None
    head: int | None
    head_at: float


@dataclass
class Height:
    """A contested height of a chain: its blocks, and what each client reported there last."""

    blocks: dict[int, str]
    """The id of each payload stored at this height (C{eth_blocks.id}) → its block's hash."""
    reports: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Client → (the block it reported last here, when it saw it)."""
    off: dict[str, float] | None = None
    """The clients whose report differs from the fleet's block here → when they saw theirs;
    L{None} until L{deviating} finds them again (the reports changed)."""

    def deviating(self) -> dict[str, float]:
        """The clients that reported a block other than the fleet's here (L{fleet_block})."""
        if self.off is None:
            block = fleet_block(self.reports)
            self.off = {} if block is None else {
                c: seen for c, (own, seen) in self.reports.items() if own != block
            }  # fmt: skip
        return self.off


def forks(heights: Iterable[Height]) -> dict[str, float]:
    """L{ethtwisted.states.forks} of C{heights}, from what each found last."""
    since: dict[str, float] = {}
    for height in heights:
        for client, seen in height.deviating().items():
            if client not in since or seen < since[client]:
                since[client] = seen
    return since


@dataclass
class Memo:
    """
    What a server's last decision read and wrote: valid for its next decision while no other
    server decided in between.
    """

    server: str
    decided: float
    """The server and time that decision wrote into C{eth_fleet}."""
    presence: dict[str, dict[str, tuple[float, bool, float]]] = field(default_factory=dict)
    """C{eth_presence}: client → server → (last frame, connected, updated)."""
    states: dict[str, dict[str, State]] = field(default_factory=dict)
    """C{eth_states}: client → state → L{State}."""
    reported: dict[str, Reported] = field(default_factory=dict)
    """C{eth_clients} (every client, watched or not) as last read."""
    read_at: float | None = None
    """When C{reported} was read (the time of that decision)."""
    contested: dict[int, dict[int, Height]] = field(default_factory=dict)
    """Chain id → its contested heights (those of its last L{FORK_WINDOW})."""


def execute(txn: Any, placeholder: str, statement: str, *args: Any) -> list[Any]:
    txn.execute(statement.replace("?", placeholder), args)
    return list(txn.fetchall())


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def read_presence(
    txn: Any, p: str, where: str = "", *args: Any
) -> dict[str, dict[str, tuple[float, bool, float]]]:
    """The rows of C{eth_presence} (those C{where} says): client → server → row."""
    presence: dict[str, dict[str, tuple[float, bool, float]]] = {}
    for client, server, last_frame, on, updated in execute(
        txn,
        p,
        f"SELECT client, server, last_frame, connected, updated FROM eth_presence {where}",
        *args,
    ):
        presence.setdefault(client, {})[server] = (float(last_frame), bool(on), float(updated))
    return presence


def read_states(
    txn: Any, p: str, where: str = "", args: Sequence[Any] = ()
) -> dict[str, dict[str, State]]:
    """The rows of C{eth_states} (those C{where} says): client → state → L{State}."""
    states: dict[str, dict[str, State]] = {}
    for client, state, chain_id, since, head, best in execute(
        txn,
        p,
        f"SELECT client, state, chain_id, since, head, best_head FROM eth_states {where}",
        *args,
    ):
        states.setdefault(client, {})[state] = State(
            state, float(since), _int(chain_id), _int(head), _int(best)
        )
    return states


def read_reported(
    txn: Any, p: str, kept: Mapping[str, Reported], since: float | None
) -> dict[str, Reported]:
    """
    Every client's row of C{eth_clients}: given C{kept}, the rows as read at C{since}, only
    those heard from since then (less L{RECENT}) are read, when the clients and their messages
    then add up to the table's count and sum (a row changes only with more messages); else
    all.
    """
    if since is not None and kept:
        ((count, total),) = execute(txn, p, "SELECT COUNT(*), SUM(messages) FROM eth_clients")
        rows = dict(kept)
        rows.update(_reported(execute(txn, p, f"{REPORTED} WHERE last_seen >= ?", since - RECENT)))
        if len(rows) == int(count) and sum(r.messages for r in rows.values()) == int(total or 0):
            return rows
    return _reported(execute(txn, p, REPORTED))


REPORTED = "SELECT client, messages, chain_id, last_block, last_seen FROM eth_clients"


def _reported(rows: Iterable[Sequence[Any]]) -> dict[str, Reported]:
    return {
        client: Reported(int(messages), _int(chain_id), _int(head), float(last_seen))
        for client, messages, chain_id, head, last_seen in rows
    }


def read_syncing(txn: Any, p: str) -> set[str]:
    """The clients whose node said it is syncing, in its latest status."""
    return {r[0] for r in execute(txn, p, "SELECT client FROM eth_node_status WHERE syncing <> 0")}


def moved(before: Mapping[str, Reported], now: Mapping[str, Reported]) -> dict[str, int]:
    """The clients that sent payloads since C{before}: client → how many."""
    return {
        client: sent
        for client, row in now.items()
        if (sent := row.messages - (before[client].messages if client in before else 0)) > 0
    }


def latest_sightings(txn: Any, p: str, sent: Mapping[int, int]) -> list[tuple[int, int, int]]:
    """
    The last sightings of each client of C{sent} (by its id: how many payloads it sent), as
    many as it sent and a few more (for sightings a corrected clock put out of order), newest
    first by the (client_id, seen_at_ms) index: (client id, payload id, seen_at_ms).
    """
    rows: list[tuple[int, int, int]] = []
    ids = sorted(sent)
    for chunk in chunks(ids, UNION):
        txn.execute(
            " UNION ALL ".join(
                "SELECT * FROM (SELECT client_id, block_id, seen_at_ms FROM eth_sightings"
                f" WHERE client_id = {p} ORDER BY seen_at_ms DESC LIMIT {p}) AS s{n}"
                for n in range(len(chunk))
            ),
            [value for i in chunk for value in (i, sent[i] + SLACK)],
        )
        rows += [(int(c), int(b), int(at)) for c, b, at in txn.fetchall()]
    return rows


def sightings_of(
    txn: Any, p: str, blocks: Iterable[int], clients: Sequence[int]
) -> list[tuple[int, int, int]]:
    """
    The sightings of C{blocks} (payload ids) by C{clients} (client ids), by the sightings'
    key: (client id, payload id, seen_at_ms).
    """
    wanted = sorted(blocks)
    rows: list[tuple[int, int, int]] = []
    for start in range(0, len(clients), BATCH):
        chunk = sorted(clients[start : start + BATCH])
        marks, names = _marks(wanted), _marks(chunk)
        rows += [(int(c), int(b), int(at)) for c, b, at in execute(
            txn, p,
            "SELECT client_id, block_id, seen_at_ms FROM eth_sightings"
            f" WHERE block_id IN ({marks}) AND client_id IN ({names})",
            *wanted, *chunk,
        )]  # fmt: skip
    return rows


def client_ids(txn: Any, p: str, names: Iterable[str], known: dict[str, int]) -> dict[str, int]:
    """
    C{known} (client name → id in C{eth_client_ids}) with the ids of C{names} it lacks added,
    for those that have one.
    """
    wanted = sorted(n for n in set(names) if n not in known)
    for chunk in chunks(wanted, BATCH):
        marks = _marks(chunk)
        known.update(
            (name, int(i))
            for name, i in execute(
                txn, p, f"SELECT client, id FROM eth_client_ids WHERE client IN ({marks})", *chunk
            )
        )
    return known


def window(txn: Any, p: str, chain_id: int, best: int) -> dict[int, dict[int, tuple[str, float]]]:
    """
    The payloads stored at the heights of chain C{chain_id} above C{best} - L{FORK_WINDOW}:
    height → payload id → (its block's hash, when the fleet first saw it).
    """
    at: dict[int, dict[int, tuple[str, float]]] = {}
    for number, block_id, block_hash, first_seen in execute(
        txn,
        p,
        "SELECT number, id, block_hash, first_seen FROM eth_blocks"
        " WHERE chain_id = ? AND number > ?",
        chain_id,
        best - FORK_WINDOW,
    ):
        at.setdefault(int(number), {})[int(block_id)] = (block_hash, float(first_seen))
    return at


def contested_heights(
    txn: Any,
    p: str,
    at: Mapping[int, Mapping[int, tuple[str, float]]],
    kept: Mapping[int, Height],
    recent: Iterable[tuple[str, int, int]],
) -> dict[int, Height]:
    """
    The heights of C{at} (a L{window}) where blocks of more than one hash are stored, with who
    reported which there: from C{kept} (the last decision's) and the C{recent} sightings
    (client, payload id, seen_at_ms: L{latest_sightings}), or, for a height or a block not
    kept, from all its sightings (by the sightings' key).
    """
    heights: dict[int, Height] = {}
    unread: list[int] = []
    for number, stored in at.items():
        blocks = {b: block_hash for b, (block_hash, _) in stored.items()}
        if len(set(blocks.values())) < 2:
            continue
        old = kept.get(number)
        # What is kept is taken over (a failed decision leaves no memo behind).
        if old is not None and old.blocks == blocks:
            heights[number] = old
        else:
            heights[number] = Height(blocks, old.reports if old is not None else {})
        unread += [b for b in blocks if old is None or b not in old.blocks]
    number_of = {b: n for n, height in heights.items() for b in height.blocks}
    for chunk in chunks(unread, BATCH):
        marks = _marks(chunk)
        _merge(heights, number_of, execute(
            txn, p,
            "SELECT c.client, s.block_id, s.seen_at_ms FROM eth_sightings s"
            f" JOIN eth_client_ids c ON c.id = s.client_id WHERE s.block_id IN ({marks})",
            *chunk,
        ))  # fmt: skip
    _merge(heights, number_of, (r for r in recent if r[1] in number_of))
    return heights


def _marks(values: Sequence[Any]) -> str:
    return ", ".join(["?"] * len(values))


def _merge(
    heights: Mapping[int, Height], number_of: Mapping[int, int], rows: Iterable[Sequence[Any]]
) -> None:
    for client, block_id, seen_at_ms in rows:
        height = heights[number_of[int(block_id)]]
        seen = int(seen_at_ms) / 1000
        # What a client reported last at a height is what its node has there.
        if client not in height.reports or height.reports[client][1] < seen:
            height.reports[client] = (height.blocks[int(block_id)], seen)
            height.off = None


def reports(heights: Mapping[int, Height]) -> dict[int, dict[str, tuple[str, float]]]:
    """The contested reports of L{ethtwisted.states.ChainFacts}, of C{heights}."""
    return {number: height.reports for number, height in heights.items()}


def chain_facts(
    txn: Any,
    p: str,
    memo: Memo,
    clients: Sequence[ClientFacts],
    recent: Sequence[tuple[str, int, int]],
    thresholds: Thresholds,
) -> dict[int, ChainFacts]:
    """
    The facts of each chain the clients follow: its best head, when the fleet reached the
    heights that would make a client behind, and who reported which block at the heights of
    its last L{FORK_WINDOW} where more than one block is stored (kept in C{memo}).
    """
    chains = {}
    kept, memo.contested = memo.contested, {}
    highest: dict[int, int] = {}
    for r in memo.reported.values():
        if r.chain_id is not None and r.head is not None:
            highest[r.chain_id] = max(r.head, highest.get(r.chain_id, r.head))
    for chain_id in sorted({c.chain_id for c in clients if c.chain_id is not None}):
        # The best head's height: the highest block a client is on (heads.py).
        stored = highest[chain_id]
        at = window(txn, p, chain_id, stored)
        heights = contested_heights(txn, p, at, kept.get(chain_id, {}), recent)
        memo.contested[chain_id] = heights
        contested, forked = reports(heights), forks(heights.values())
        on_chain = [c for c in clients if c.chain_id == chain_id]
        best = fleet_head(on_chain, forked, stored)
        targets = {
            h for c in on_chain if (h := behind_height(c, thresholds)) is not None and h <= best
        }
        reached = {h: _reached(txn, p, chain_id, h, at) for h in sorted(targets)}
        best_at = _reached(txn, p, chain_id, best, at)
        chains[chain_id] = ChainFacts(chain_id, best, best_at, reached, contested, forked)
    return chains


def _reached(
    txn: Any, p: str, chain_id: int, height: int, at: Mapping[int, Mapping[int, Any]]
) -> float:
    """
    When the fleet first stored a block at the lowest stored height at or above C{height}
    (the caller knows one is stored): from C{at} (a L{window} of the chain) when it holds
    every stored height from C{height} on, else two index look-ups.
    """
    if at and min(at) <= height <= max(at):
        lowest = min(n for n in at if n >= height)
        return min(first for _, first in at[lowest].values())
    ((lowest,),) = execute(
        txn, p, "SELECT MIN(number) FROM eth_blocks WHERE chain_id = ? AND number >= ?",
        chain_id, height,
    )  # fmt: skip
    ((first,),) = execute(
        txn, p, "SELECT MIN(first_seen) FROM eth_blocks WHERE chain_id = ? AND number = ?",
        chain_id, lowest,
    )  # fmt: skip
    return float(first)
