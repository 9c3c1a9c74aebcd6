"""
C{/api/v1/...}: the JSON API over the durable store (blocks, one block, clients, heads,
arrivals), what the dashboard polls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.web.server import Request

from ethtwisted.interfaces import BlockRecord, ClientRecord, Head
from ethtwisted.web.chains import chains
from ethtwisted.web.reads import MAX_CHAINS, MAX_CLIENTS, Reads
from ethtwisted.web.resource import (
    Endpoint,
    HTTPError,
    Response,
    int_arg,
    json_response,
    query_arg,
    valid_sha256,
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_MINUTES = 24 * 60


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
                        "/api/v1/clients",
                        "/api/v1/head",
                        "/api/v1/arrivals",
                        "/api/v1/chains",
                        "/api/v1/chains/{chain_id}/gaps?from=&to=",
                        "/api/v1/chains/{chain_id}/forks?from=&to=",
                    ]
                }
            )
        handler = {
            "blocks": self.blocks,
            "clients": self.clients,
            "head": self.head,
            "arrivals": self.arrivals,
            "chains": self.chains,
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
            body = _block(record) if record is not None else {"sha256": sha256}
            body["payload"] = payload
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
            raise HTTPError(404, "not found")
        limit = int_arg(request, "limit", MAX_CLIENTS, MAX_CLIENTS)
        clients, heads = await self.reads.read(
            gatherResults(
                [self.reads.sql.clients(limit), self.reads.sql.heads(MAX_CHAINS)],
                consumeErrors=True,
            )
        )
        best = {h.chain_id: h.number for h in heads}
        return json_response(
            {"now": self.reads.reactor.seconds(), "clients": [_client(c, best) for c in clients]}
        )

    async def chains(self, request: Request, rest: list[str]) -> Response:
        return await chains(self.reads, request, rest)

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
        counts = await self.reads.read(self.reads.sql.arrivals(since, 60))
        return json_response(
            {
                "now": now,
                "since": since,
                "bucket": 60,
                "counts": [[int(start), n] for start, n in counts],
            }
        )
