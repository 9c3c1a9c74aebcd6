"""
The fleet view in SQL (L{IFleet}): which server holds each client's connection
(C{eth_presence}), the states each client is in (C{eth_states}) and each change of them
(C{eth_state_events}); who delivers the changes to the webhooks is
L{ethtwisted.storage.deliveries}.

Every server asks to decide the states once a second, in one transaction that first updates
the one row of C{eth_fleet}; one server decides at a time (the one that decided last, until it
has not for L{LEASE_SECONDS}), the others only record which clients they hold.  On one MySQL
(or SQLite) server two taking over at once wait for one another at that row; on Galera two at
once conflict and one is rolled back.  A change is therefore recorded, and returned to be told
(logs, webhooks), by exactly one server.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from zope.interface import implementer

from ethtwisted.interfaces import IFleet
from ethtwisted.records import StateEvent
from ethtwisted.states import (
    STATES,
    ClientFacts,
    FleetView,
    State,
    Thresholds,
    decide,
    describe_change,
)
from ethtwisted.storage import chunks
from ethtwisted.storage.fleet_facts import (
    BATCH,
    Memo,
    chain_facts,
    client_ids,
    execute,
    latest_sightings,
    moved,
    read_presence,
    read_reported,
    read_states,
    read_syncing,
    sightings_of,
)

TABLES = ("eth_presence", "eth_states", "eth_state_events", "eth_fleet")
PRESENCE_KEEP = 86400.0
"""Seconds a row of C{eth_presence} that is not its client's newest is kept (the rows a
restarted or replaced server left behind)."""
FORGET_AFTER = 7 * 86400.0
"""Seconds after which a client that no server holds is no longer watched (a node taken out
of the fleet): its presence and states go, with no event."""
PRESENCE_STEPS = 12
"""A server writes the row of C{eth_presence} of a client it holds again once this fraction of
C{--silent-seconds} has passed (5 s of the default 60), not at each decision: the last frame
the decisions know of a client is that much older at most than the last that arrived."""
LEASE_SECONDS = 3.0
"""A server decides while the last decision is its own; another takes over once none has been
made for this long (the others meanwhile only write their rows of C{eth_presence})."""
VIEW_SECONDS = 5.0
"""How old the last decision may be for L{SQLFleet.view} to give what it read."""
EVENT_COLUMNS = "id, client, chain_id, state, event, head, best_head, since, at, text"


Decided = tuple[
    list[StateEvent], Memo | None, FleetView | None, list[tuple[str, str, float, int, float]]
]
"""What a decision returns: the events, what it kept and decided (none when another server
decides), and this server's rows of C{eth_presence} it wrote."""


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
        self.client_ids: dict[str, int] = {}
        """Client name → its id in C{eth_client_ids} (never changed or reused), those asked."""
        self.written: dict[tuple[str, str], tuple[float, bool, float]] = {}
        """(server, client) → the row of C{eth_presence} this server's committed decisions
        wrote."""
        self.memo: Memo | None = None
        self.last_view: FleetView | None = None
        """What the last decision of this process read and decided (L{view})."""
        """What this server's last decision read and wrote (L{ethtwisted.storage.fleet_facts})."""

    def decide(
        self,
        server: str,
        now: float,
        connected: Mapping[str, float],
        gone: Mapping[str, float],
        thresholds: Thresholds,
    ) -> Deferred[list[StateEvent]]:
        # Taken while the decision runs: one that fails leaves none, and the next reads all.
        memo, self.memo = self.memo, None
        d = self.pool.runInteraction(self._decide, memo, server, now, connected, gone, thresholds)
        return d.addCallback(self._keep)

    def _keep(self, decided: Decided) -> list[StateEvent]:
        events, self.memo, view, written = decided
        if view is not None:
            self.last_view = view
        for client, server, heard, on, updated in written:
            self.written[server, client] = (heard, bool(on), updated)
        return events

    def _execute(self, txn: Any, statement: str, *args: Any) -> list[Any]:
        return execute(txn, self.statements.placeholder, statement, *args)

    def _begin(self, txn: Any, memo: Memo | None, server: str, now: float) -> Memo | None:
        """
        Update the row of C{eth_fleet} (first, so that deciders queue here, or conflict here
        on Galera), and give what to decide on: C{memo} when this server's decision was the
        last one (the row still says so), with the other servers' rows of C{eth_presence}
        read again; else everything read again, when this server may decide (the last
        decision is its own or L{LEASE_SECONDS} old, or none was made); else L{None}: another
        server decides.
        """
        p = self.statements.placeholder
        if memo is not None and memo.server == server:
            txn.execute(
                f"UPDATE eth_fleet SET decided = {p} WHERE id = 1 AND server = {p}"
                f" AND decided = {p}",
                (now, server, memo.decided),
            )
            if txn.rowcount == 1:
                memo.decided = now
                presence = {
                    c: {server: r[server]} for c, r in memo.presence.items() if server in r
                }
                for client, rows in read_presence(txn, p, "WHERE server <> ?", server).items():
                    presence.setdefault(client, {}).update(rows)
                memo.presence = presence
                return memo
        txn.execute(
            f"UPDATE eth_fleet SET decided = {p}, server = {p}"
            f" WHERE id = 1 AND (server IN ({p}, '') OR decided < {p})",
            (now, server, server, now - LEASE_SECONDS),
        )
        if txn.rowcount != 1:
            return None
        return Memo(server, now, read_presence(txn, p), read_states(txn, p))

    def _decide(
        self,
        txn: Any,
        memo: Memo | None,
        server: str,
        now: float,
        connected: Mapping[str, float],
        gone: Mapping[str, float],
        thresholds: Thresholds,
    ) -> Decided:
        s = self.statements
        decider = self._begin(txn, memo, server, now)
        written = self._record_presence(txn, server, now, connected, gone, thresholds)
        if decider is None:
            return [], None, None, written
        memo = decider
        for client, _, heard, on, updated in written:
            memo.presence.setdefault(client, {})[server] = (heard, bool(on), updated)
        before = memo.reported
        memo.reported = read_reported(txn, s.placeholder, before, memo.read_at)
        memo.read_at = now
        clients = self._clients(txn, memo, read_syncing(txn, s.placeholder), now, thresholds)
        recent = self._recent(txn, memo, moved(before, memo.reported)) if memo.contested else []
        chains = chain_facts(txn, s.placeholder, memo, clients, recent, thresholds)
        decided = decide(clients, chains, thresholds, now)
        stored = memo.states
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
        # What eth_states holds now: the states kept as they were entered, and those entered.
        memo.states = {
            client: {state: stored.get(client, {}).get(state, entered)
                     for state, entered in states.items()}
            for client, states in decided.items()
        }  # fmt: skip
        view = FleetView(
            now,
            {c: (r.chain_id, r.head, r.head_at) for c, r in memo.reported.items()},
            {c: memo.states.get(c, {}) for c in memo.presence},
        )
        return events, memo, view, written

    def _recent(self, txn: Any, memo: Memo, sent: Mapping[str, int]) -> list[tuple[str, int, int]]:
        """
        The sightings since the last decision of the clients that C{sent} payloads, that can
        be at the contested heights it kept: of a client that sent one, its sighting of the
        blocks at its last block's height, when that height is one of them (its payload was
        that block); of the others, their latest (L{latest_sightings}).
        """
        p = self.statements.placeholder
        ids = client_ids(txn, p, sent, self.client_ids)
        at_head: dict[tuple[int, int], list[int]] = {}
        several: dict[int, int] = {}
        for client, n in sent.items():
            if client not in ids:
                continue
            row = memo.reported[client]
            if n > 1:
                several[ids[client]] = n
            elif row.chain_id is not None and row.head in memo.contested.get(row.chain_id, {}):
                at_head.setdefault((row.chain_id, row.head), []).append(ids[client])
        names = {i: c for c, i in ids.items()}
        rows = latest_sightings(txn, p, several)
        for (chain_id, number), clients in sorted(at_head.items()):
            rows += sightings_of(txn, p, memo.contested[chain_id][number].blocks, clients)
        return [(names[c], b, at) for c, b, at in rows]

    def _record(self, txn: Any, client: str, state: State, event: str, at: float) -> StateEvent:
        text = describe_change(client, state, event, at)
        txn.execute(
            self.statements.insert_event,
            (client, state.chain_id, state.state, event, state.head, state.best_head,
             state.since, at, text),
        )  # fmt: skip
        return StateEvent(int(txn.lastrowid), client, state.chain_id, state.state, event,
                          state.head, state.best_head, state.since, at, text)  # fmt: skip

    def _record_presence(
        self,
        txn: Any,
        server: str,
        now: float,
        connected: Mapping[str, float],
        gone: Mapping[str, float],
        thresholds: Thresholds,
    ) -> list[tuple[str, str, float, int, float]]:
        """
        Write this server's rows of C{eth_presence} that changed since it last wrote them
        (L{written}): a client it holds when new here, back, or last written
        L{PRESENCE_STEPS}th of C{silent_seconds} ago or more; a client gone since the last
        decision.  The rows written.
        """
        step = thresholds.silent_seconds / PRESENCE_STEPS
        rows = []
        for client, heard in connected.items():
            old = self.written.get((server, client))
            if old is None or not old[1] or now - old[2] >= step:
                rows.append((client, server, heard, 1, now))
        rows += [(c, server, t, 0, now) for c, t in gone.items() if c not in connected]
        if rows:
            txn.executemany(self.statements.upsert_presence, sorted(rows))
        return rows

    def _clients(
        self, txn: Any, memo: Memo, syncing: set[str], now: float, thresholds: Thresholds
    ) -> list[ClientFacts]:
        """
        The facts of every watched client: its presence rows put together, what it last
        reported and what its node last said; the presence rows no longer needed deleted.
        """
        fresh = now - thresholds.silent_seconds
        stale, forgotten = [], []
        for client, rows in memo.presence.items():
            newest = max(r[2] for r in rows.values())
            if newest < now - FORGET_AFTER:
                forgotten.append(client)
                continue
            keep = min(newest, now - PRESENCE_KEEP)
            stale += [(client, server) for server, r in rows.items() if r[2] < keep]
        for client, server in sorted(stale):
            self._execute(txn, "DELETE FROM eth_presence WHERE client = ? AND server = ?",
                          client, server)  # fmt: skip
            del memo.presence[client][server]
        for client in sorted(forgotten):
            del memo.presence[client]
            memo.states.pop(client, None)
            self._execute(txn, "DELETE FROM eth_presence WHERE client = ?", client)
            self._execute(txn, "DELETE FROM eth_states WHERE client = ?", client)
        facts = []
        for client in sorted(memo.presence):
            held = list(memo.presence[client].values())
            on = any(r[1] and r[2] >= fresh for r in held)
            reported = memo.reported.get(client)
            facts.append(
                ClientFacts(
                    client=client,
                    last_frame=max(r[0] for r in held),
                    connected=on,
                    gone_at=None if on else max(r[2] for r in held),
                    chain_id=reported.chain_id if reported else None,
                    head=reported.head if reported else None,
                    head_at=reported.head_at if reported else None,
                    syncing=client in syncing,
                )
            )
        return facts

    # -- reading back -------------------------------------------------------------------------

    def view(self, now: float) -> FleetView | None:
        last = self.last_view
        if last is None or not 0 <= now - last.decided <= VIEW_SECONDS:
            return None
        return last

    def states(
        self, clients: Collection[str] | None = None
    ) -> Deferred[dict[str, dict[str, State]]]:
        names = None if clients is None else sorted(set(clients))
        return self.pool.runInteraction(self._states, names)

    def _states(self, txn: Any, names: list[str] | None) -> dict[str, dict[str, State]]:
        p = self.statements.placeholder
        if names is None:
            watched = self._execute(txn, "SELECT DISTINCT client FROM eth_presence")
            states: dict[str, dict[str, State]] = {r[0]: {} for r in watched}
            states.update(read_states(txn, p))
            return states
        states = {}
        for chunk in chunks(names, BATCH):
            marks = ", ".join(["?"] * len(chunk))
            for (client,) in self._execute(
                txn, f"SELECT DISTINCT client FROM eth_presence WHERE client IN ({marks})", *chunk
            ):
                states[client] = {}
            states.update(read_states(txn, p, f"WHERE client IN ({marks})", chunk))
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
