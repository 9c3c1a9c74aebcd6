"""
The ledger in SQL: each client's sightings of each payload (C{eth_sightings}, under the
payload's and the client's small ids), its node's latest status (C{eth_node_status}) and the
changes that status shows (C{eth_events}).  L{SQLLedger.write} runs in
L{SQLStore<ethtwisted.storage.sql_store.SQLStore>}'s group commit, so a payload, its sightings
and the statuses that came with it are committed together; L{SQLLedger} reads them back over
the store's pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ethtwisted.frames import Status, SyncProgress
from ethtwisted.interfaces import ILedger
from ethtwisted.protocol import SOURCES
from ethtwisted.records import EventRecord, NodeRecord, Received, SightingRecord, StatusReport
from ethtwisted.storage import chunks, fleet_finalized, partitions, retention, status_events

TABLES = ("eth_client_ids", "eth_sightings", "eth_node_status", "eth_events")
VIAS = ("unknown", *SOURCES)
"""How a client learnt of a payload, by the number C{eth_sightings.via} holds."""
MAX_CLIENT_IDS = 100_000
"""Client ids a ledger remembers; past that it forgets them all and asks again."""
SECONDS_A_DAY = 86400
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
        self.dialect = dialect
        self.placeholder = p = "?" if sqlite else "%s"
        self.locked = "" if sqlite else " LOCK IN SHARE MODE"
        """What makes a SELECT read the latest committed rows (and keep them) in MySQL."""
        self.day = (
            f"CAST(first_seen / {SECONDS_A_DAY} AS INTEGER)"
            if sqlite
            else f"FLOOR(first_seen / {SECONDS_A_DAY})"
        )
        """The UTC day of C{first_seen}, the partition of its sightings."""
        skip = (
            "ON CONFLICT (block_id, client_id) DO NOTHING"
            if sqlite
            else "ON DUPLICATE KEY UPDATE block_id = block_id"
        )
        self.insert_sighting = (
            "INSERT INTO eth_sightings (block_id, client_id, day, seen_at_ms, via)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}) {skip}"
        )
        skip = "ON CONFLICT (client) DO NOTHING" if sqlite else "ON DUPLICATE KEY UPDATE id = id"
        self.insert_client_id = f"INSERT INTO eth_client_ids (client) VALUES ({p}) {skip}"
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


@implementer(ILedger)
class SQLLedger:
    """
    L{ILedger} read back over an adbapi pool (the store's), and the writing of it in the
    store's group commit.
    """

    def __init__(self, pool: adbapi.ConnectionPool, dialect: str, clock: IReactorTime) -> None:
        self.pool = pool
        self.clock = clock
        self.statements = Statements(dialect)
        self.client_ids: dict[str, int] = {}
        """Client name → its id in C{eth_client_ids}, as read: an id never changes."""

    def write(
        self,
        txn: Any,
        batch: Sequence[Received | StatusReport],
        payloads: Mapping[str, tuple[int, int]],
    ) -> None:
        """
        Write the sightings and statuses of C{batch}, in the transaction C{txn}: the first
        sighting of each (client, payload), and each client's last status with the changes from
        the one stored before.  C{payloads} gives each payload's id and day (SHA256 → both).
        """
        first: dict[tuple[str, str], Received] = {}
        reports: dict[str, list[StatusReport]] = {}
        for item in batch:
            if isinstance(item, StatusReport):
                reports.setdefault(item.client, []).append(item)
            else:
                first.setdefault((item.client, item.sha256), item)
        if first:
            ids = self._client_ids(txn, sorted({client for client, _ in first}))
            rows = sorted(
                (*payloads[sha256][:1], ids[client], payloads[sha256][1],
                 round(r.seen_at * 1000), VIAS.index(r.via) if r.via in VIAS else 0)
                for (client, sha256), r in first.items()
            )  # fmt: skip
            # In the order of the key, so concurrent servers take row locks in one order and
            # cannot deadlock.
            txn.executemany(self.statements.insert_sighting, rows)
        if reports:
            self._write_statuses(txn, reports)

    def _client_ids(self, txn: Any, names: Sequence[str]) -> dict[str, int]:
        """
        The id of each client in C{names}, those not in C{eth_client_ids} yet added.
        """
        known = self.client_ids
        if len(known) > MAX_CLIENT_IDS:
            known.clear()
        unknown = [n for n in names if n not in known]
        if unknown:
            known.update(self._read_client_ids(txn, unknown, ""))
            new = [n for n in unknown if n not in known]
            if new:
                txn.executemany(self.statements.insert_client_id, [(n,) for n in new])
                known.update(self._read_client_ids(txn, new, self.statements.locked))
        return {n: known[n] for n in names}

    def _read_client_ids(self, txn: Any, names: Sequence[str], lock: str) -> dict[str, int]:
        p = self.statements.placeholder
        ids: dict[str, int] = {}
        for chunk in chunks(names, partitions.IN_LIMIT):
            txn.execute(
                f"SELECT client, id FROM eth_client_ids"
                f" WHERE client IN ({', '.join([p] * len(chunk))}){lock}",
                chunk,
            )
            ids.update((c, int(i)) for c, i in txn.fetchall())
        return ids

    def _write_statuses(self, txn: Any, reports: dict[str, list[StatusReport]]) -> None:
        statements = self.statements
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
        ids = {i: name for name, i in self._read_client_ids(txn, names, "").items()}
        clients = sorted(ids)
        # A block sighting is one of a payload with a number (eth_blocks_id has it).
        block = "JOIN eth_blocks b ON b.id = s.block_id AND b.number IS NOT NULL"
        first: dict[int, int] = {}  # block id → its first sighting (ms), read once a call
        for chunk in chunks(clients, PROPAGATION_CLIENTS):
            # First the time of each client's limit-th block sighting, newest first: in the
            # order of the (client_id, seen_at_ms) index, which stops there.  Without it, the
            # order by payload too would sort all the sightings a client ever had.
            txn.execute(
                " UNION ALL ".join(
                    "SELECT * FROM (SELECT s.client_id, s.seen_at_ms FROM eth_sightings s"
                    f" {block} WHERE s.client_id = {p}"
                    f" ORDER BY s.seen_at_ms DESC LIMIT 1 OFFSET {p}) AS t{n}"
                    for n in range(len(chunk))
                ),
                [value for i in chunk for value in (i, limit - 1)],
            )
            since = {int(i): int(t) for i, t in txn.fetchall()}
            # Then the sightings from that time on (all of a client's with fewer; ties by SHA256,
            # which eth_blocks_id holds too).
            last, args = [], []
            for n, i in enumerate(chunk):
                after = f" AND s.seen_at_ms >= {p}" if i in since else ""
                last.append(
                    "SELECT * FROM (SELECT s.client_id, s.block_id, s.seen_at_ms, b.hash"
                    f" FROM eth_sightings s {block} WHERE s.client_id = {p}{after}"
                    f" ORDER BY s.seen_at_ms DESC, b.hash DESC LIMIT {p}) AS c{n}"
                )
                args += [i, since[i], limit] if i in since else [i, limit]
            txn.execute(
                f"SELECT s.client_id, s.block_id, s.seen_at_ms FROM ({' UNION ALL '.join(last)})"
                " AS s ORDER BY s.client_id, s.seen_at_ms DESC, s.hash DESC",
                args,
            )
            rows = [(int(i), int(b), int(t)) for i, b, t in txn.fetchall()]
            _first_sightings(txn, p, {b for _, b, _ in rows} - first.keys(), first)
            for i, b, t in rows:
                delays[ids[i]].append(float(t - first[b]))
        return delays

    def sightings(self, sha256: str, limit: int) -> Deferred[list[SightingRecord]]:
        d = self._query(
            "SELECT c.client, s.seen_at_ms, s.via FROM eth_blocks b"
            " JOIN eth_sightings s ON s.block_id = b.id"
            " JOIN eth_client_ids c ON c.id = s.client_id"
            " WHERE b.hash = ? ORDER BY s.seen_at_ms, c.client LIMIT ?",
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
        # reported one of them (a look-up of the sightings' key).
        d = self._query(
            "SELECT DISTINCT b.number FROM eth_blocks b"
            " WHERE b.chain_id = ? AND b.number >= ? AND b.number <= ? AND NOT EXISTS ("
            "SELECT 1 FROM eth_blocks o JOIN eth_sightings s ON s.block_id = o.id"
            " JOIN eth_client_ids c ON c.id = s.client_id"
            " WHERE o.chain_id = b.chain_id AND o.number = b.number AND c.client = ?)"
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
        """
        The sightings of the payloads first seen on the days before the one of C{before}:
        on MySQL whole partitions, then (and on SQLite only) at most C{limit} more by DELETE.
        """
        day = int(before // SECONDS_A_DAY)
        dropped = 0
        if self.statements.dialect != "sqlite":
            today = int(self.clock.seconds() // SECONDS_A_DAY)
            partitions.ensure(txn, today, today + partitions.DAYS_AHEAD)
            dropped = partitions.drop_before(txn, day)
        return dropped + partitions.delete_before(txn, self.statements.placeholder, day, limit)

    def prune_blocks(
        self, before: float, after: retention.Cursor, limit: int
    ) -> Deferred[tuple[int, retention.Cursor]]:
        p = self.statements.placeholder
        return self.pool.runInteraction(retention.sql_prune_blocks, p, before, after, limit)


def _with_delays(rows: Sequence[Sequence[Any]]) -> list[SightingRecord]:
    if not rows:
        return []
    first = int(rows[0][1])
    return [
        SightingRecord(c, int(t) / 1000, VIAS[int(via)] if int(via) < len(VIAS) else VIAS[0],
                       float(int(t) - first))
        for c, t, via in rows
    ]  # fmt: skip


def _first_sightings(txn: Any, p: str, blocks: set[int], first: dict[int, int]) -> None:
    """
    Put in C{first} the first sighting (ms) of each of C{blocks}: each block's rows once, by
    the key they lead (a look-up per sighting read each block's rows again, once per client).
    """
    ordered = sorted(blocks)
    for chunk in chunks(ordered, PROPAGATION_CLIENTS):
        txn.execute(
            "SELECT block_id, MIN(seen_at_ms) FROM eth_sightings"
            f" WHERE block_id IN ({', '.join([p] * len(chunk))}) GROUP BY block_id",
            chunk,
        )
        first.update((int(b), int(t)) for b, t in txn.fetchall())
