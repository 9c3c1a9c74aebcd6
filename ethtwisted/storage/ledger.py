"""
The ledger in SQL: each client's sightings of each payload (C{eth_sightings}), its node's latest
status (C{eth_node_status}) and the changes that status shows (C{eth_events}).  L{write} runs in
L{SQLStore<ethtwisted.storage.sql_store.SQLStore>}'s group commit, so a payload, its sightings
and the statuses that came with it are committed together; L{SQLLedger} reads them back over
the store's pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from ethtwisted.frames import Status, SyncProgress
from ethtwisted.interfaces import ILedger
from ethtwisted.protocol import Block
from ethtwisted.records import EventRecord, NodeRecord, Received, SightingRecord, StatusReport
from ethtwisted.storage import fleet_finalized, status_events

TABLES = ("eth_sightings", "eth_node_status", "eth_events")
PROPAGATION_CLIENTS = 100
"""The most clients the statements of L{SQLLedger.propagation} read at once (SQLite allows 500
SELECTs in one)."""
_STATUS_COLUMNS = (
    "updated, client_version, chain_id, peers, syncing, sync_current, sync_highest,"
    " gas_price, base_fee, safe, finalized, pending, queued, rtt_ms"
)


class Statements:
    """
    The ledger's statements that differ between SQLite (C{"sqlite"}) and MySQL.
    """

    def __init__(self, dialect: str) -> None:
        sqlite = dialect == "sqlite"
        self.placeholder = p = "?" if sqlite else "%s"
        values = ", ".join([p] * 8)
        skip = (
            "ON CONFLICT (client, hash) DO NOTHING"
            if sqlite
            else ("ON DUPLICATE KEY UPDATE client = client")
        )
        self.insert_sighting = (
            "INSERT INTO eth_sightings (client, hash, chain_id, number, block_hash, seen_at,"
            f" received, via) VALUES ({values}) {skip}"
        )
        columns = [c.strip() for c in _STATUS_COLUMNS.split(",")]
        values = ", ".join([p] * (len(columns) + 1))
        if sqlite:
            update = "ON CONFLICT (client) DO UPDATE SET " + ", ".join(
                f"{c} = excluded.{c}" for c in columns
            )
        else:
            update = "ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in columns)
        self.upsert_status = (
            f"INSERT INTO eth_node_status (client, {_STATUS_COLUMNS}) VALUES ({values}) {update}"
        )
        self.insert_event = (
            f"INSERT INTO eth_events (client, at, kind, detail) VALUES ({p}, {p}, {p}, {p})"
        )


def _status_row(report: StatusReport) -> tuple[Any, ...]:
    s = report.status
    syncing = None if s.syncing is None else int(s.syncing is not False)
    progress = s.syncing if isinstance(s.syncing, SyncProgress) else None
    return (
        report.client,
        report.received,
        s.client_version,
        s.chain_id,
        s.peers,
        syncing,
        progress.current if progress else None,
        progress.highest if progress else None,
        s.gas_price,
        s.base_fee,
        s.safe,
        s.finalized,
        s.pending,
        s.queued,
        s.rtt_ms,
    )


def _status(row: Sequence[Any]) -> Status:
    """The L{Status} of a row of C{_STATUS_COLUMNS} after C{updated}."""
    version, chain_id, peers, syncing, current, highest, *ints, rtt = row
    sync: SyncProgress | bool | None = None
    if syncing is not None:
        sync = SyncProgress(int(current), int(highest)) if syncing else False
    gas_price, base_fee, safe, finalized, pending, queued = (_int(v) for v in ints)
    return Status(
        client_version=version,
        chain_id=_int(chain_id),
        peers=_int(peers),
        syncing=sync,  # type: ignore[arg-type]
        gas_price=gas_price,
        base_fee=base_fee,
        safe=safe,
        finalized=finalized,
        pending=pending,
        queued=queued,
        rtt_ms=None if rtt is None else float(rtt),
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def write(txn: Any, statements: Statements, batch: Sequence[Received | StatusReport]) -> None:
    """
    Write the sightings and statuses of C{batch}, in the transaction C{txn}: the first sighting
    of each (client, payload), and each client's last status with the changes from the one
    stored before.
    """
    sightings: dict[tuple[str, str], tuple[Any, ...]] = {}
    reports: dict[str, list[StatusReport]] = {}
    for item in batch:
        if isinstance(item, StatusReport):
            reports.setdefault(item.client, []).append(item)
            continue
        key = (item.client, item.sha256)
        if key in sightings:
            continue
        b = item.block
        chain_id, number, block_hash = (
            (b.chain_id, b.number, b.hash.lower()) if isinstance(b, Block) else (None, b, None)
        )
        sightings[key] = (*key, chain_id, number, block_hash, item.seen_at, item.received,
                          item.via)  # fmt: skip
    # Sorted keys take row locks in one order, so concurrent servers cannot deadlock.
    if sightings:
        txn.executemany(statements.insert_sighting, [sightings[k] for k in sorted(sightings)])
    if not reports:
        return
    p = statements.placeholder
    clients = sorted(reports)
    txn.execute(
        f"SELECT client, {_STATUS_COLUMNS} FROM eth_node_status"
        f" WHERE client IN ({', '.join([p] * len(clients))})",
        clients,
    )
    stored = {row[0]: _status(row[2:]) for row in txn.fetchall()}
    events = []
    for client in clients:
        old = stored.get(client)
        for report in reports[client]:
            for kind, detail in status_events(old, report.status):
                events.append((client, report.received, kind, detail))
            old = report.status
    if events:
        txn.executemany(statements.insert_event, events)
    txn.executemany(statements.upsert_status, [_status_row(reports[c][-1]) for c in clients])


@implementer(ILedger)
class SQLLedger:
    """
    L{ILedger} read back over an adbapi pool (the store's).
    """

    def __init__(self, pool: adbapi.ConnectionPool, dialect: str) -> None:
        self.pool = pool
        self.statements = Statements(dialect)

    def _query(self, statement: str, *args: Any) -> Deferred[list[Any]]:
        d: Deferred[list[Any]] = self.pool.runQuery(
            statement.replace("?", self.statements.placeholder), args
        )
        return d.addCallback(list)

    def node_statuses(self, clients: Sequence[str]) -> Deferred[dict[str, NodeRecord]]:
        names = sorted(set(clients))
        if not names:
            return succeed({})
        d = self._query(
            f"SELECT client, {_STATUS_COLUMNS} FROM eth_node_status"
            f" WHERE client IN ({', '.join(['?'] * len(names))})",
            *names,
        )
        return d.addCallback(
            lambda rows: {r[0]: NodeRecord(r[0], float(r[1]), _status(r[2:])) for r in rows}
        )

    def finalized(self, limit: int, since: float) -> Deferred[dict[int, int]]:
        d = self._query(
            "SELECT chain_id, finalized FROM eth_node_status"
            " WHERE updated >= ? AND chain_id IS NOT NULL AND finalized IS NOT NULL",
            since,
        )
        return d.addCallback(fleet_finalized, limit)

    def propagation(self, clients: Sequence[str], limit: int) -> Deferred[dict[str, list[float]]]:
        names = sorted(set(clients))
        if not names:
            return succeed({})
        return self.pool.runInteraction(self._propagation, names, limit)

    def _propagation(self, txn: Any, names: list[str], limit: int) -> dict[str, list[float]]:
        p = self.statements.placeholder
        delays: dict[str, list[float]] = {name: [] for name in names}
        if limit < 1:
            return delays
        for start in range(0, len(names), PROPAGATION_CLIENTS):
            chunk = names[start : start + PROPAGATION_CLIENTS]
            # First the time of each client's limit-th block sighting, newest first: in the
            # order of the (client, seen_at) index, which stops there.  Without it, the order
            # by hash too would sort all the sightings a client ever had.
            txn.execute(
                " UNION ALL ".join(
                    "SELECT * FROM (SELECT client, seen_at FROM eth_sightings"
                    f" WHERE client = {p} AND number IS NOT NULL"
                    f" ORDER BY seen_at DESC LIMIT 1 OFFSET {p}) AS t{n}"
                    for n in range(len(chunk))
                ),
                [value for name in chunk for value in (name, limit - 1)],
            )
            since = dict(txn.fetchall())
            # Then the sightings from that time on (all of a client's with fewer), each with the
            # first sighting of its payload by the (hash, seen_at) index.
            last, args = [], []
            for n, name in enumerate(chunk):
                after = f" AND seen_at >= {p}" if name in since else ""
                last.append(
                    "SELECT * FROM (SELECT client, hash, seen_at FROM eth_sightings"
                    f" WHERE client = {p} AND number IS NOT NULL{after}"
                    f" ORDER BY seen_at DESC, hash DESC LIMIT {p}) AS c{n}"
                )
                args += [name, since[name], limit] if name in since else [name, limit]
            txn.execute(
                "SELECT s.client, s.seen_at - (SELECT MIN(f.seen_at) FROM eth_sightings f"
                f" WHERE f.hash = s.hash) FROM ({' UNION ALL '.join(last)}) AS s"
                " ORDER BY s.client, s.seen_at DESC, s.hash DESC",
                args,
            )
            for client, delay in txn.fetchall():
                delays[client].append(float(delay) * 1000)
        return delays

    def sightings(self, sha256: str, limit: int) -> Deferred[list[SightingRecord]]:
        d = self._query(
            "SELECT client, seen_at, received, via FROM eth_sightings WHERE hash = ?"
            " ORDER BY seen_at, client LIMIT ?",
            sha256,
            limit,
        )
        return d.addCallback(_with_delays)

    def events(self, client: str, limit: int) -> Deferred[list[EventRecord]]:
        d = self._query(
            "SELECT id, client, at, kind, detail FROM eth_events WHERE client = ?"
            " ORDER BY id DESC LIMIT ?",
            client,
            limit,
        )
        return d.addCallback(
            lambda rows: [EventRecord(int(i), c, float(a), k, t) for i, c, a, k, t in rows]
        )

    def missing(
        self, client: str, chain_id: int, low: int, high: int, limit: int
    ) -> Deferred[list[int]]:
        # Per height, the blocks stored there (an index look-up), then whether this client
        # reported one of them (a look-up of its unique key).
        d = self._query(
            "SELECT DISTINCT b.number FROM eth_blocks b"
            " WHERE b.chain_id = ? AND b.number >= ? AND b.number <= ? AND NOT EXISTS ("
            "SELECT 1 FROM eth_blocks o JOIN eth_sightings s ON s.hash = o.hash"
            " WHERE o.chain_id = b.chain_id AND o.number = b.number AND s.client = ?)"
            " ORDER BY b.number LIMIT ?",
            chain_id,
            low,
            high,
            client,
            limit,
        )
        return d.addCallback(lambda rows: [int(r[0]) for r in rows])

    def prune_sightings(self, before: float, limit: int) -> Deferred[int]:
        return self.pool.runInteraction(self._prune, before, limit)

    def _prune(self, txn: Any, before: float, limit: int) -> int:
        p = self.statements.placeholder
        txn.execute(
            f"SELECT id FROM eth_sightings WHERE received < {p} ORDER BY received LIMIT {p}",
            (before, limit),
        )
        ids = [row[0] for row in txn.fetchall()]
        if ids:
            txn.execute(
                f"DELETE FROM eth_sightings WHERE id IN ({', '.join([p] * len(ids))})", ids
            )
        return len(ids)


def _with_delays(rows: Sequence[Sequence[Any]]) -> list[SightingRecord]:
    if not rows:
        return []
    first = float(rows[0][1])
    return [
        SightingRecord(c, float(t), float(r), via, (float(t) - first) * 1000)
        for c, t, r, via in rows
    ]
