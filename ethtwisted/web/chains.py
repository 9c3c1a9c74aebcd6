"""
C{/api/v1/chains...}: the chains as the fleet saw them (L{IChainReader}), each read bounded to
L{MAX_CHAIN_RANGE} heights.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from ethtwisted.interfaces import CHAIN_WINDOW, MAX_CHAIN_RANGE
from ethtwisted.records import ChainBlock, ChainRange, Reorg
from ethtwisted.web.reads import MAX_CHAINS, Reads
from ethtwisted.web.resource import HTTPError, Response, height, height_arg, int_arg, json_response

MAX_FORKS = 1000
"""The most fork heights one answer lists; C{next} says where to go on."""
MAX_LISTED = 256
"""The most heights C{/blocks} lists every block of."""


def _reorg(reorg: Reorg) -> dict[str, Any]:
    return {
        "number": reorg.number,
        "depth": reorg.depth,
        "orphaned": reorg.orphaned,
        "canonical": reorg.canonical,
    }


def _block(block: ChainBlock) -> dict[str, Any]:
    return {
        "hash": block.block_hash,
        "parent_hash": block.parent_hash,
        "sha256": block.sha256,
        "client": block.client,
        "first_seen": block.first_seen,
        "canonical": block.canonical,
        "finalized": block.finalized,
        "timestamp": block.timestamp,
    }


def _summary(chain: ChainRange) -> dict[str, Any]:
    return {
        "chain_id": chain.chain_id,
        "head": chain.head,
        "finalized": chain.finalized,
        "from": chain.low,
        "to": chain.high,
        "blocks": chain.blocks,
        "canonical": chain.canonical,
        "orphaned": chain.blocks - chain.canonical,
        "gaps": len(chain.gaps),
        "missing": chain.missing,
        "forks": len(chain.forks),
        "reorgs": len(chain.reorgs),
        "deepest_reorg": max((r.depth for r in chain.reorgs), default=0),
    }


async def chains(reads: Reads, request: Request, rest: list[str]) -> Response:
    """
    C{/api/v1/chains}, C{/api/v1/chains/<id>/gaps?from=&to=},
    C{/api/v1/chains/<id>/forks?from=&to=&limit=}, C{/api/v1/chains/<id>/blocks?from=&to=}.
    """
    if not rest:
        finalized = await reads.read(reads.finalized())
        summaries = await reads.read(reads.chains.chains(MAX_CHAINS, finalized))
        return json_response(
            {
                "now": reads.reactor.seconds(),
                "window": CHAIN_WINDOW,
                "chains": [_summary(c) for c in summaries],
            }
        )
    if len(rest) != 2 or rest[1] not in ("gaps", "forks", "blocks"):
        raise HTTPError(404, "not found")
    chain_id = height(rest[0], "the chain id")
    low, high = height_arg(request, "from"), height_arg(request, "to")
    if high < low:
        raise HTTPError(400, "from must not be above to")
    if high - low >= MAX_CHAIN_RANGE:
        raise HTTPError(400, f"a range is at most {MAX_CHAIN_RANGE} heights")
    limit = int_arg(request, "limit", MAX_FORKS, MAX_FORKS)
    body: dict[str, Any] = {"chain_id": chain_id, "from": low, "to": high}
    if rest[1] == "blocks":
        return await _listed(reads, body, chain_id, low, high)
    if rest[1] == "gaps":
        gaps = await reads.read(reads.chains.gaps(chain_id, low, high))
        if gaps is None:
            raise HTTPError(404, "no block of this chain is stored")
        body["head"] = gaps[0]
        body["gaps"] = [[a, b] for a, b in gaps[1]]
        return json_response(body)
    finalized = (await reads.read(reads.finalized())).get(chain_id)
    chain = await reads.read(reads.chains.chain(chain_id, low, high, finalized))
    if chain is None:
        raise HTTPError(404, "no block of this chain is stored")
    body["head"] = chain.head
    forks = chain.forks[:limit]
    body["finalized"] = chain.finalized
    body["forks"] = [{"number": f[0].number, "blocks": [_block(b) for b in f]} for f in forks]
    following = chain.forks[limit][0].number if len(chain.forks) > limit else None
    body["reorgs"] = [_reorg(r) for r in chain.reorgs if following is None or r.number < following]
    body["next"] = following
    return json_response(body)


async def _listed(
    reads: Reads, body: dict[str, Any], chain_id: int, low: int, high: int
) -> Response:
    """
    C{/api/v1/chains/<id>/blocks?from=&to=}: every block stored at those heights (at most
    L{MAX_LISTED}), canonical or orphaned, with who reported it first and its timestamp; the
    range's gaps and reorgs.
    """
    if high - low >= MAX_LISTED:
        raise HTTPError(400, f"blocks are listed for at most {MAX_LISTED} heights")
    finalized = (await reads.read(reads.finalized())).get(chain_id)
    chain = await reads.read(reads.chains.blocks(chain_id, low, high, finalized))
    if chain is None:
        raise HTTPError(404, "no block of this chain is stored")
    body["head"] = chain.head
    body["finalized"] = chain.finalized
    body["gaps"] = [[a, b] for a, b in chain.gaps]
    body["reorgs"] = [_reorg(r) for r in chain.reorgs]
    body["blocks"] = [{"number": b.number, **_block(b)} for b in chain.listed]
    return json_response(body)
