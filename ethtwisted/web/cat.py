"""
C{/_cat}: the older stats service's plain-text tables, from the counters (Redis when it is
configured, else SQL), and one block's payload from SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.web.server import Request

from ethtwisted.web.reads import Reads
from ethtwisted.web.resource import Endpoint, HTTPError, Response, text_response, valid_sha256

CAT_HASHES = 100
"""How many hashes C{/_cat/hashes} lists, as the older service did."""
CAT_CLIENTS = 1000


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """
    Rows under a header line, columns separated by two spaces and padded to their widest
    cell: numbers to the right, text to the left (C{tabulate}'s "plain" layout).
    """
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)]) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class CatResource(Endpoint):
    """
    The older stats service's plain-text tables.
    """

    json_errors = False

    def __init__(self, reads: Reads) -> None:
        super().__init__(None)
        self.reads = reads

    async def handle(self, request: Request, path: list[str]) -> Response:
        if not path:
            return text_response("=^.^=\n/_cat/hashes\n/_cat/hashes/{hash}\n/_cat/clients\n")
        if path == ["hashes"]:
            rows = await self.reads.read(self.reads.counters.latest_hashes(CAT_HASHES))
            return text_response(plain_table(["hash", "timestamp"], rows))
        if path[0] == "hashes" and len(path) == 2:
            sha256 = valid_sha256(path[1])
            if sha256 is None:
                return text_response("Hash not found", 400)
            payload = await self.reads.read(self.reads.sql.payload(sha256))
            if payload is None:
                return text_response("Hash not found", 404)
            return text_response(payload)
        if path == ["clients"]:
            rows = await self.reads.read(self.reads.counters.address_counts(CAT_CLIENTS))
            return text_response(plain_table(["client", "count"], rows))
        raise HTTPError(404, "not found")
