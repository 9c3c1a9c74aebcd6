"""
What every endpoint of ours shares: an error that becomes a response, the response, the
bearer token, the security headers, and query arguments bounded where they enter.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from ethtwisted.logs import Logger
from ethtwisted.protocol import MAX_BLOCK_INT

log = Logger()

MAX_DIGITS = 9
"""The most digits a number in a query argument may have (C{?limit=}, C{?minutes=})."""
MAX_ARG_BYTES = 1024
"""The longest query argument value read at all: a cursor is 64 characters, a token fits."""
MAX_HEIGHT_DIGITS = len(str(MAX_BLOCK_INT))
"""The most digits of a block height or chain id (L{MAX_BLOCK_INT} has 19)."""
_SHA256 = re.compile(r"[0-9a-fA-F]{64}\Z")
_UNIX_TIME = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?\Z")


class HTTPError(Exception):
    """
    A request that cannot be answered as asked: the status code and what to tell the caller.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def json_response(obj: Any, status: int = 200) -> Response:
    body = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return Response(status, body, "application/json")


def text_response(text: str, status: int = 200) -> Response:
    return Response(status, text.encode("utf-8"), "text/plain; charset=utf-8")


def valid_sha256(text: str) -> str | None:
    """
    C{text} as a lowercase SHA256 hex, or L{None} if it is not one.
    """
    return text.lower() if _SHA256.match(text) else None


_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class Endpoint(Resource):
    """
    A leaf resource answering GET (and HEAD) with an async handler of the remaining path;
    with a token, only to requests that present it.
    """

    isLeaf = True
    protected = False
    json_errors = True

    def __init__(self, token: str | None) -> None:
        super().__init__()
        self.token = token.encode("utf-8") if token else None

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        # As bytes: a header need not be UTF-8, and one that is not is simply not the token.
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(given.strip(), self.token)

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            response = self.error(405, "method not allowed")
            response.headers["Allow"] = "GET, HEAD"
            return write(request, response)
        if self.protected and not self.authorized(request):
            return write(request, self.unauthorized(request))
        try:
            path = [p.decode("utf-8") for p in request.postpath or []]
        except UnicodeDecodeError:
            return write(request, self.error(400, "bad path"))
        d = Deferred.fromCoroutine(self._handle(request, path))
        lost: list[Failure] = []

        def gone(reason: Failure) -> None:
            # The client went away: answer no one, and stop working for it.
            lost.append(reason)
            d.cancel()

        request.notifyFinish().addErrback(gone)
        d.addCallback(lambda response: NOT_DONE_YET if lost else write(request, response))
        d.addErrback(lambda f: f.trap(CancelledError))
        d.addErrback(lambda f: log.failure("writing a stats response", f))
        return NOT_DONE_YET

    async def _handle(self, request: Request, path: list[str]) -> Response:
        try:
            return await self.handle(request, [p for p in path if p])
        except HTTPError as e:
            return self.error(e.status, e.message)
        except CancelledError:
            raise
        except Exception:
            log.failure("answering {path}", path=request.path.decode("utf-8", "replace"))
            return self.error(500, "internal error")

    async def handle(self, request: Request, path: list[str]) -> Response:
        raise NotImplementedError

    def error(self, status: int, message: str) -> Response:
        if self.json_errors:
            return json_response({"error": message, "status": status}, status)
        return text_response(message + "\n", status)

    def unauthorized(self, request: Request) -> Response:
        response = self.error(401, "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="ethtwisted"'
        return response


def write(request: Request, response: Response) -> int:
    if request.finished:
        return NOT_DONE_YET
    request.setResponseCode(response.status)
    for name, value in {**_SECURITY_HEADERS, **response.headers}.items():
        request.setHeader(name, value)
    request.setHeader("Content-Type", response.content_type)
    request.setHeader("Content-Length", str(len(response.body)))
    request.write(response.body)
    request.finish()
    return NOT_DONE_YET


def query_arg(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    if len(values[-1]) > MAX_ARG_BYTES:
        raise HTTPError(400, f"{name} is too long")
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"{name} is not UTF-8") from None


def int_arg(request: Request, name: str, default: int, cap: int) -> int:
    """
    A positive integer query argument of at most L{MAX_DIGITS} digits, capped at C{cap}.
    """
    text = query_arg(request, name)
    if text is None:
        return default
    if len(text) > MAX_DIGITS or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise HTTPError(400, f"{name} must be a positive integer of at most {MAX_DIGITS} digits")
    return min(int(text), cap)


def time_arg(request: Request, name: str) -> float | None:
    """
    An optional query argument that is a unix time: seconds, at most 12 digits, with at most
    9 decimals.
    """
    text = query_arg(request, name)
    if text is None:
        return None
    if not _UNIX_TIME.match(text):
        raise HTTPError(400, f"{name} must be a unix time: seconds, like 1732525000.5")
    return float(text)


def height(text: str, name: str) -> int:
    """
    C{text} as a chain id or a block height: a decimal integer from 0 to L{MAX_BLOCK_INT}
    (2**63 - 1), the largest that the wire and the store take (a signed 64-bit column).  Every
    endpoint that takes a chain id or a height reads it here, in the path or the query.
    """
    if not (0 < len(text) <= MAX_HEIGHT_DIGITS and text.isascii() and text.isdigit()) or (
        int(text) > MAX_BLOCK_INT
    ):
        raise HTTPError(400, f"{name} must be an integer from 0 to {MAX_BLOCK_INT}")
    return int(text)


def height_arg(request: Request, name: str, default: int | None = None) -> int:
    """
    A query argument that is a chain id or a block height (L{height}); required unless
    C{default}.
    """
    text = query_arg(request, name)
    if text is None:
        if default is None:
            raise HTTPError(400, f"{name} is required")
        return default
    return height(text, name)


class NotFound(Endpoint):
    async def handle(self, request: Request, path: list[str]) -> Response:
        raise HTTPError(404, "not found")


class Root(Resource):
    """
    The root of a site of ours: unknown paths are a JSON 404 with the usual headers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.not_found = NotFound(None)

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self.not_found
