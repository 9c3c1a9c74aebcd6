"""
C{/api/v1/...}: the JSON API over the durable store (blocks, one block and who saw it when,
clients with their nodes' status, propagation and states, one client with its events and the
heights it missed, heads, arrivals, the changes of state), what the dashboard polls.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.web.server import Request

from ethtwisted.frames import SyncProgress, name_problem
from ethtwisted.protocol import MAX_BLOCK_INT
from ethtwisted.records import (
    BlockRecord,
    ClientRecord,
    EventRecord,
    Head,
    NodeRecord,
    SightingRecord,
)
from ethtwisted.states import STATES, State
from ethtwisted.web.chains import chains
from ethtwisted.web.fleet import events, state_fields
from ethtwisted.web.reads import (
    MAX_CHAINS,
    PROPAGATION_BLOCKS,
    PROPAGATION_PERCENTILES,
    Reads,
    percentile,
)
from ethtwisted.web.resource import (
    Endpoint,
    HTTPError,
    Response,
    height,
    height_arg,
    int_arg,
    json_response,
    query_arg,
    valid_sha256,
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_MINUTES = 24 * 60
MAX_SIGHTINGS = 1000
MAX_EVENTS = 100
MAX_MISSING = 1000
RATE_SECONDS = 600.0
"""Arrivals' rate is over this long, or the time since the first payload when that is less."""
CLIENT_STATES = ("current", *STATES)
"""What C{/api/v1/clients?state=} may ask for: the clients in none of L{STATES}, or in one."""


def _node(record: NodeRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    s = record.status
    syncing: Any = s.syncing
    if isinstance(syncing, SyncProgress):
        syncing = {"current": syncing.current, "highest": syncing.highest}
    return {
        "client_version": s.client_version,
        "chain_id": s.chain_id,
        "peers": s.peers,
        "syncing": syncing,
        "gas_price": s.gas_price,
        "base_fee": s.base_fee,
        "pending": s.pending,
        "queued": s.queued,
        "safe": s.safe,
        "finalized": s.finalized,
        "rtt_ms": s.rtt_ms,
        "updated": record.updated,
    }


def _propagation(delays: list[float]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        f"p{p}_ms": percentile(delays, p / 100) for p in PROPAGATION_PERCENTILES
    }
    entry["blocks"] = len(delays)
    return entry


def _sighting(record: SightingRecord) -> dict[str, Any]:
    return {
        "client": record.client,
        "seen_at": record.seen_at,
        "delay_ms": record.delay_ms,
        "via": record.via,
    }


def _event(record: EventRecord) -> dict[str, Any]:
    return {"id": record.id, "at": record.at, "kind": record.kind, "detail": record.detail}


def _block(record: BlockRecord) -> dict[str, Any]:
    return {
        "sha256": record.sha256,
        "first_seen": record.first_seen,
        "client": record.client,
        "chain_id": record.chain_id,
        "number": record.number,
        "hash": record.block_hash,
        "parent_hash": record.parent_hash,
        "timestamp": record.block_time,
    }


def _client(record: ClientRecord, best: Mapping[int | None, int]) -> dict[str, Any]:
    head = best.get(record.chain_id)
    lag = None
    if head is not None and record.last_block is not None:
        lag = max(head - record.last_block, 0)
    return {
        "client": record.client,
        "address": record.address,
        "messages": record.messages,
        "first_seen": record.first_seen,
        "last_seen": record.last_seen,
        "chain_id": record.chain_id,
        "last_block": record.last_block,
        "lag": lag,
    }


def _head(head: Head) -> dict[str, Any]:
    return {
        "chain_id": head.chain_id,
        "number": head.number,
        "hash": head.block_hash,
        "first_seen": head.first_seen,
    }


class ApiResource(Endpoint):
    """
    C{/api/v1/...}: JSON from the durable store.
    """

    protected = True

    def __init__(self, reads: Reads, token: str | None) -> None:
        super().__init__(token)
        self.reads = reads

    async def handle(self, request: Request, path: list[str]) -> Response:
        if path[:1] != ["v1"]:
            raise HTTPError(404, "not found")
        path = path[1:]
        if not path:
            return json_response(
                {
                    "endpoints": [
                        "/api/v1/blocks",
                        "/api/v1/blocks/{sha256}",
                        "/api/v1/clients?limit=&after=&state=&chain_id=",
                        "/api/v1/clients/{name}",
                        "/api/v1/clients/{name}/missing?chain_id=&from=&to=",
                        "/api/v1/head",
                        "/api/v1/arrivals",
                        "/api/v1/chains",
                        "/api/v1/chains/{chain_id}/gaps?from=&to=",
                        "/api/v1/chains/{chain_id}/forks?from=&to=",
                        "/api/v1/chains/{chain_id}/blocks?from=&to=",
                        "/api/v1/events?since=&client=&limit=",
                    ]
                }
            )
        handler = {
            "blocks": self.blocks,
            "clients": self.clients,
            "head": self.head,
            "arrivals": self.arrivals,
            "chains": self.chains,
            "events": self.events,
        }.get(path[0])
        if handler is None:
            raise HTTPError(404, "not found")
        return await handler(request, path[1:])

    async def blocks(self, request: Request, rest: list[str]) -> Response:
        sql = self.reads.sql
        if len(rest) == 1:
            sha256 = valid_sha256(rest[0])
            if sha256 is None:
                raise HTTPError(400, "a block is named by the SHA256 of its payload: 64 hex")
            record, payload = await self.reads.read(
                gatherResults([sql.block(sha256), sql.payload(sha256)], consumeErrors=True)
            )
            if record is None and payload is None:
                raise HTTPError(404, "Hash not found")
            body: dict[str, Any] = _block(record) if record is not None else {"sha256": sha256}
            body["payload"] = payload
            sightings = await self.reads.read(sql.ledger.sightings(sha256, MAX_SIGHTINGS))
            body["sightings"] = [_sighting(s) for s in sightings]
            return json_response(body)
        if rest:
            raise HTTPError(404, "not found")
        limit = int_arg(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        before = query_arg(request, "before")
        if before is not None:
            before = valid_sha256(before)
            if before is None:
                raise HTTPError(400, "before must be the sha256 of a block: 64 hex")
        records = await self.reads.read(sql.blocks(limit, before))
        if records is None:
            raise HTTPError(400, "before names no stored block")
        following = records[-1].sha256 if len(records) == limit else None
        return json_response(
            {"blocks": [_block(r) for r in records], "next": following, "limit": limit}
        )

    async def clients(self, request: Request, rest: list[str]) -> Response:
        if rest:
            return await self.one_client(request, rest)
        limit = int_arg(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        after = query_arg(request, "after")
        if after is not None and (problem := name_problem(after)) is not None:
            raise HTTPError(400, f"after is a client's name: it {problem}")
        chain_text = query_arg(request, "chain_id")
        chain_id = None if chain_text is None else height(chain_text, "chain_id")
        state = query_arg(request, "state")
        if state is not None and state not in CLIENT_STATES:
            raise HTTPError(400, f"state must be one of {', '.join(CLIENT_STATES)}")
        states, names = None, None
        if state is not None:
            # The filter needs every client's states; else the page's alone are read.
            states = await self.reads.read(self.reads.states())
            names = [
                c for c, now in states.items() if state in now or (state == "current" and not now)
            ]
        entries = await self._clients(limit + 1, states, after, chain_id, names)
        following = entries[limit - 1]["client"] if len(entries) > limit else None
        return json_response(
            {
                "now": self.reads.reactor.seconds(),
                "clients": entries[:limit],
                "next": following,
                "limit": limit,
            }
        )

    async def _clients(
        self,
        limit: int,
        states: Mapping[str, Mapping[str, State]] | None,
        after: str | None = None,
        chain_id: int | None = None,
        names: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """
        The entries of the clients L{IBlockReader.clients} lists, with their nodes,
        propagation and C{states} (read for them alone when not given).
        """
        sql = self.reads.sql
        clients, heads = await self.reads.read(
            gatherResults(
                [sql.clients(limit, after, chain_id, names), sql.heads(MAX_CHAINS)],
                consumeErrors=True,
            )
        )
        listed = [c.client for c in clients]
        if states is None:
            states = await self.reads.read(self.reads.states(listed))
        nodes, delays = await self.reads.read(
            gatherResults(
                [
                    sql.ledger.node_statuses(listed),
                    sql.ledger.propagation(listed, PROPAGATION_BLOCKS),
                ],
                consumeErrors=True,
            )
        )
        best = {h.chain_id: h.number for h in heads}
        entries = []
        for client in clients:
            entry = _client(client, best)
            entry["node"] = _node(nodes.get(client.client))
            entry["propagation"] = _propagation(delays[client.client])
            entry.update(state_fields(states.get(client.client)))
            entries.append(entry)
        return entries

    async def one_client(self, request: Request, rest: list[str]) -> Response:
        name = rest[0]
        if name_problem(name) is not None or len(rest) > 2:
            raise HTTPError(404, "not found")
        if len(rest) == 2:
            if rest[1] != "missing":
                raise HTTPError(404, "not found")
            return await self.missing(request, name)
        entries = await self._clients(1, None, names=[name])
        if not entries:
            raise HTTPError(404, "no such client")
        events = await self.reads.read(self.reads.sql.ledger.events(name, MAX_EVENTS))
        entry = entries[0]
        entry["events"] = [_event(e) for e in events]
        return json_response({"now": self.reads.reactor.seconds(), **entry})

    async def missing(self, request: Request, name: str) -> Response:
        chain_id = height_arg(request, "chain_id")
        low = height_arg(request, "from", 0)
        high = height_arg(request, "to", MAX_BLOCK_INT)
        if high < low:
            raise HTTPError(400, "to must not be below from")
        heights = await self.reads.read(
            self.reads.sql.ledger.missing(name, chain_id, low, high, MAX_MISSING)
        )
        return json_response(
            {
                "client": name,
                "chain_id": chain_id,
                "from": low,
                "to": high,
                "missing": heights,
                "limit": MAX_MISSING,
            }
        )

    async def chains(self, request: Request, rest: list[str]) -> Response:
        return await chains(self.reads, request, rest)

    async def events(self, request: Request, rest: list[str]) -> Response:
        return await events(self.reads, request, rest)

    async def head(self, request: Request, rest: list[str]) -> Response:
        if rest:
            raise HTTPError(404, "not found")
        heads = await self.reads.read(self.reads.sql.heads(MAX_CHAINS))
        return json_response(
            {"now": self.reads.reactor.seconds(), "heads": [_head(h) for h in heads]}
        )

    async def arrivals(self, request: Request, rest: list[str]) -> Response:
        if rest:
            raise HTTPError(404, "not found")
        minutes = int_arg(request, "minutes", 60, MAX_MINUTES)
        now = self.reads.reactor.seconds()
        since = (int(now) // 60 - minutes + 1) * 60
        sql = self.reads.sql
        counts, first = await self.reads.read(
            gatherResults([sql.arrivals(since, 60), sql.first_seen()], consumeErrors=True)
        )
        # The rate is over what was observed: the last RATE_SECONDS, or less since the first.
        span = RATE_SECONDS if first is None else min(RATE_SECONDS, max(now - first, 1.0))
        recent = await self.reads.read(sql.arrivals(now - span, 1))
        blocks = sum(n for _, n in recent)
        return json_response(
            {
                "now": now,
                "since": since,
                "bucket": 60,
                "counts": [[int(start), n] for start, n in counts],
                "first": first,
                "rate": {"seconds": span, "blocks": blocks, "per_minute": blocks * 60 / span},
            }
        )
