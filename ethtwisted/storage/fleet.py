"""
The fleet view in SQL (L{IFleet}): which server holds each client's connection
(C{eth_presence}), the states each client is in (C{eth_states}) and each change of them
(C{eth_state_events}); who delivers the changes to the webhooks is
L{ethtwisted.storage.deliveries}.

Every server decides the states once a second, in one transaction that first updates the one
row of C{eth_fleet}: on one MySQL (or SQLite) server the decisions of several eth-servers so
wait for one another, each reading what the one before wrote; on Galera two at once conflict
and one is rolled back.  A change is therefore recorded, and returned to be told (logs,
webhooks), by exactly one server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from zope.interface import implementer

from ethtwisted.interfaces import IFleet
from ethtwisted.records import StateEvent
from ethtwisted.states import (
    FORK_WINDOW,
    STATES,
    ChainFacts,
    ClientFacts,
    State,
    Thresholds,
    behind_height,
    decide,
    describe_change,
    fleet_head,
)
from ethtwisted.storage.heads import sql_best_head

TABLES = ("eth_presence", "eth_states", "eth_state_events", "eth_fleet")
PRESENCE_KEEP = 86400.0
"""Seconds a row of C{eth_presence} that is not its client's newest is kept (the rows a
restarted or replaced server left behind)."""
FORGET_AFTER = 7 * 86400.0
"""Seconds after which a client that no server holds is no longer watched (a node taken out
of the fleet): its presence and states go, with no event."""
EVENT_COLUMNS = "id, client, chain_id, state, event, head, best_head, since, at, text"


class _Statements:
    def __init__(self, dialect: str) -> None:
        self.placeholder = p = "?" if dialect == "sqlite" else "%s"
        columns = ("last_frame", "connected", "updated")
        if dialect == "sqlite":
            update = "ON CONFLICT (client, server) DO UPDATE SET " + ", ".join(
                f"{c} = excluded.{c}" for c in columns
            )
        else:
            update = "ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in columns)
        self.upsert_presence = (
            "INSERT INTO eth_presence (client, server, last_frame, connected, updated)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}) {update}"
        )
        self.insert_state = (
            "INSERT INTO eth_states (client, state, chain_id, since, head, best_head)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}, {p})"
        )
        self.delete_state = f"DELETE FROM eth_states WHERE client = {p} AND state = {p}"
        self.insert_event = (
            "INSERT INTO eth_state_events (client, chain_id, state, event, head, best_head,"
            f" since, at, text) VALUES ({', '.join([p] * 9)})"
        )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def event_from_row(row: Sequence[Any]) -> StateEvent:
    i, client, chain_id, state, event, head, best, since, at, text = row
    return StateEvent(int(i), client, _int(chain_id), state, event, _int(head), _int(best),
                      float(since), float(at), text)  # fmt: skip


@implementer(IFleet)
class SQLFleet:
    """
    L{IFleet} over an adbapi pool (the store's).
    """

    def __init__(self, pool: adbapi.ConnectionPool, dialect: str) -> None:
        self.pool = pool
        self.statements = _Statements(dialect)

    def decide(
        self,
        server: str,
        now: float,
        connected: Mapping[str, float],
        gone: Mapping[str, float],
        thresholds: Thresholds,
    ) -> Deferred[list[StateEvent]]:
        return self.pool.runInteraction(self._decide, server, now, connected, gone, thresholds)

    def _execute(self, txn: Any, statement: str, *args: Any) -> list[Any]:
        txn.execute(statement.replace("?", self.statements.placeholder), args)
        return list(txn.fetchall())

    def _decide(
        self,
        txn: Any,
        server: str,
        now: float,
        connected: Mapping[str, float],
        gone: Mapping[str, float],
        thresholds: Thresholds,
    ) -> list[StateEvent]:
        s = self.statements
        # First, so that deciders queue here (or conflict here, on Galera).
        txn.execute(
            f"UPDATE eth_fleet SET decided = {s.placeholder}, server = {s.placeholder}"
            " WHERE id = 1",
            (now, server),
        )
        rows = [(c, server, t, 1, now) for c, t in connected.items()]
        rows += [(c, server, t, 0, now) for c, t in gone.items() if c not in connected]
        if rows:
            txn.executemany(s.upsert_presence, sorted(rows))
        clients = self._clients(txn, now, thresholds)
        chains = self._chains(txn, clients, thresholds)
        decided = decide(clients, chains, thresholds, now)
        stored = self._stored_states(txn, {})
        facts = {c.client: c for c in clients}
        events = []
        for client in sorted(set(decided) | set(stored)):
            want, have = decided.get(client, {}), stored.get(client, {})
            for state in STATES:
                if state in want and state not in have:
                    entered = want[state]
                    txn.execute(s.insert_state, (client, state, entered.chain_id,
                                entered.since, entered.head, entered.best_head))  # fmt: skip
                    events.append(self._record(txn, client, entered, "entered", now))
                elif state in have and state not in want:
                    txn.execute(s.delete_state, (client, state))
                    left = have[state]
                    current = facts.get(client)
                    if current is not None:
                        chain = chains.get(current.chain_id or -1)
                        left = State(state, left.since, current.chain_id, current.head,
                                     chain.best if chain is not None else None)  # fmt: skip
                    events.append(self._record(txn, client, left, "left", now))
        return events

    def _record(self, txn: Any, client: str, state: State, event: str, at: float) -> StateEvent:
        text = describe_change(client, state, event, at)
        txn.execute(
            self.statements.insert_event,
            (client, state.chain_id, state.state, event, state.head, state.best_head,
             state.since, at, text),
        )  # fmt: skip
        return StateEvent(int(txn.lastrowid), client, state.chain_id, state.state, event,
                          state.head, state.best_head, state.since, at, text)  # fmt: skip

    def _clients(self, txn: Any, now: float, thresholds: Thresholds) -> list[ClientFacts]:
        """
        The facts of every watched client: its presence rows put together, what it last
        reported and what its node last said; the presence rows no longer needed deleted.
        """
        fresh = now - thresholds.silent_seconds
        presence: dict[str, list[tuple[str, float, bool, float]]] = {}
        for client, server, last_frame, on, updated in self._execute(
            txn, "SELECT client, server, last_frame, connected, updated FROM eth_presence"
        ):
            presence.setdefault(client, []).append(
                (server, float(last_frame), bool(on), float(updated))
            )
        stale, forgotten = [], []
        for client, rows in presence.items():
            newest = max(r[3] for r in rows)
            if newest < now - FORGET_AFTER:
                forgotten.append(client)
                continue
            stale += [(client, r[0]) for r in rows if r[3] < min(newest, now - PRESENCE_KEEP)]
        for client, server in sorted(stale):
            self._execute(txn, "DELETE FROM eth_presence WHERE client = ? AND server = ?",
                          client, server)  # fmt: skip
        for client in sorted(forgotten):
            del presence[client]
            self._execute(txn, "DELETE FROM eth_presence WHERE client = ?", client)
            self._execute(txn, "DELETE FROM eth_states WHERE client = ?", client)
        reported = {
            r[0]: r[1:]
            for r in self._execute(
                txn,
                "SELECT c.client, c.chain_id, c.last_block, c.last_seen FROM eth_clients c"
                " WHERE c.client IN (SELECT p.client FROM eth_presence p)",
            )
        }
        syncing = {
            r[0]: bool(r[1])
            for r in self._execute(
                txn,
                "SELECT s.client, s.syncing FROM eth_node_status s"
                " WHERE s.client IN (SELECT p.client FROM eth_presence p)",
            )
        }
        facts = []
        for client in sorted(presence):
            rows = presence[client]
            on = any(r[2] and r[3] >= fresh for r in rows)
            chain_id, head, head_at = reported.get(client, (None, None, None))
            facts.append(
                ClientFacts(
                    client=client,
                    last_frame=max(r[1] for r in rows),
                    connected=on,
                    gone_at=None if on else max(r[3] for r in rows),
                    chain_id=_int(chain_id),
                    head=_int(head),
                    head_at=None if head_at is None else float(head_at),
                    syncing=syncing.get(client, False),
                )
            )
        return facts

    def _chains(
        self, txn: Any, clients: Sequence[ClientFacts], thresholds: Thresholds
    ) -> dict[int, ChainFacts]:
        """
        The facts of each chain the clients follow: its best head, when the fleet reached the
        heights that would make a client behind, and who reported which block at the heights
        of its last L{FORK_WINDOW} where more than one block is stored.
        """
        chains = {}
        ids = sorted({c.chain_id for c in clients if c.chain_id is not None})
        for chain_id in ids:
            head = sql_best_head(txn, self.statements.placeholder, chain_id)
            if head is None:
                continue
            best = head.number
            contested: dict[int, dict[str, tuple[str, float]]] = {}
            heights = [
                int(r[0])
                for r in self._execute(
                    txn,
                    "SELECT number FROM eth_blocks WHERE chain_id = ? AND number > ?"
                    " GROUP BY number HAVING COUNT(DISTINCT block_hash) > 1",
                    chain_id,
                    best - FORK_WINDOW,
                )
            ]
            if heights:
                contested = self._contested(txn, chain_id, heights)
            on_chain = [c for c in clients if c.chain_id == chain_id]
            best = fleet_head(on_chain, contested, best)
            targets = {
                h
                for c in on_chain
                if (h := behind_height(c, thresholds)) is not None and h <= best
            }
            reached = {h: self._reached(txn, chain_id, h) for h in sorted(targets)}
            best_at = self._reached(txn, chain_id, best)
            chains[chain_id] = ChainFacts(chain_id, best, best_at, reached, contested)
        return chains

    def _contested(
        self, txn: Any, chain_id: int, heights: Sequence[int]
    ) -> dict[int, dict[str, tuple[str, float]]]:
        """
        Who reported which block at C{heights}, and when: the blocks there first (an index
        look-up), then their sightings, in the sightings' key (one range each).
        """
        marks = ", ".join(["?"] * len(heights))
        blocks = {
            int(block_id): (int(number), block_hash)
            for block_id, number, block_hash in self._execute(
                txn,
                "SELECT id, number, block_hash FROM eth_blocks WHERE chain_id = ?"
                f" AND number IN ({marks})",
                chain_id,
                *heights,
            )
        }
        contested: dict[int, dict[str, tuple[str, float]]] = {}
        marks = ", ".join(["?"] * len(blocks))
        for client, block_id, seen_at_ms in self._execute(
            txn,
            "SELECT c.client, s.block_id, s.seen_at_ms FROM eth_sightings s"
            f" JOIN eth_client_ids c ON c.id = s.client_id WHERE s.block_id IN ({marks})",
            *blocks,
        ):
            number, block_hash = blocks[int(block_id)]
            seen_at = int(seen_at_ms) / 1000
            reports = contested.setdefault(number, {})
            # What a client reported last at a height is what its node has there.
            if client not in reports or reports[client][1] < seen_at:
                reports[client] = (block_hash, seen_at)
        return contested

    def _reached(self, txn: Any, chain_id: int, height: int) -> float:
        """
        When the fleet first stored a block at the lowest stored height at or above
        C{height} (two index look-ups; the caller knows one is stored).
        """
        (lowest,) = self._execute(
            txn,
            "SELECT MIN(number) FROM eth_blocks WHERE chain_id = ? AND number >= ?",
            chain_id,
            height,
        )[0]
        (first,) = self._execute(
            txn,
            "SELECT MIN(first_seen) FROM eth_blocks WHERE chain_id = ? AND number = ?",
            chain_id,
            lowest,
        )[0]
        return float(first)

    # -- reading back -------------------------------------------------------------------------

    def states(self) -> Deferred[dict[str, dict[str, State]]]:
        return self.pool.runInteraction(self._states)

    def _states(self, txn: Any) -> dict[str, dict[str, State]]:
        watched = self._execute(txn, "SELECT DISTINCT client FROM eth_presence")
        return self._stored_states(txn, {r[0]: {} for r in watched})

    def _stored_states(
        self, txn: Any, states: dict[str, dict[str, State]]
    ) -> dict[str, dict[str, State]]:
        """
        C{states} with the rows of C{eth_states} added: client → state → L{State}.
        """
        for client, state, chain_id, since, head, best in self._execute(
            txn, "SELECT client, state, chain_id, since, head, best_head FROM eth_states"
        ):
            states.setdefault(client, {})[state] = State(
                state, float(since), _int(chain_id), _int(head), _int(best)
            )
        return states

    def events(
        self, since: float | None, client: str | None, limit: int
    ) -> Deferred[list[StateEvent]]:
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        if client is not None:
            where.append("client = ?")
            args.append(client)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        statement = (
            f"SELECT {EVENT_COLUMNS} FROM eth_state_events{clause} ORDER BY id DESC LIMIT ?"
        )
        return events_of(self.pool, self.statements.placeholder, statement, *args, limit)


def events_of(
    pool: adbapi.ConnectionPool, placeholder: str, statement: str, *args: Any
) -> Deferred[list[StateEvent]]:
    """The events a query of C{EVENT_COLUMNS} reads, in its order."""
    d: Deferred[list[Any]] = pool.runQuery(statement.replace("?", placeholder), args)
    return d.addCallback(lambda rows: [event_from_row(r) for r in rows])
