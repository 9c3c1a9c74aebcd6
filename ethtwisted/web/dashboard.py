"""
C{/}: the dashboard, one self-contained page (C{dashboard.html}, with the scripts it names
inlined: C{page.js} what they share, C{pictures.js} the pictures, C{fleet.js} the fleet view,
C{dashboard.js} the polling and the rest) that polls the JSON API, or with a token and none
given, a small page asking for it (C{login.html}); each sent with a Content-Security-Policy
that allows its own inline scripts and style and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from importlib.resources import files

from twisted.web.server import Request

from ethtwisted.web.resource import Endpoint, HTTPError, Response, query_arg


def _inlined(name: str) -> str:
    """
    The page C{name}, each C{<script src="NAME.js"></script>} in it replaced by that script
    of ours, inline.
    """
    here = files("ethtwisted.web")

    def script(found: re.Match[str]) -> str:
        code = here.joinpath(found.group(1)).read_text(encoding="utf-8")
        return "<script>\n" + code + "</script>"

    text = here.joinpath(name).read_text(encoding="utf-8")
    return re.sub(r'<script src="([a-z]+\.js)"></script>', script, text)


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


class _Page:
    """
    An HTML page of ours with its inline script and style allowed, by hash, by its
    Content-Security-Policy and nothing else.
    """

    def __init__(self, name: str) -> None:
        text = _inlined(name)
        self.body = text.encode("utf-8")
        scripts = re.findall(r"<script>(.*?)</script>", text, re.DOTALL)
        styles = re.findall(r"<style>(.*?)</style>", text, re.DOTALL)
        self.policy = "; ".join(
            [
                "default-src 'none'",
                "script-src " + " ".join(_csp_hash(s) for s in scripts or [""]),
                "style-src " + " ".join(_csp_hash(s) for s in styles or [""]),
                "connect-src 'self'",
                "img-src 'self' data:",
                "form-action 'self'",
                "base-uri 'none'",
                "frame-ancestors 'none'",
            ]
        )

    def response(self, status: int = 200) -> Response:
        return Response(
            status,
            self.body,
            "text/html; charset=utf-8",
            {"Content-Security-Policy": self.policy},
        )


class DashboardResource(Endpoint):
    """
    C{/}: the dashboard page.  With a token, the page is sent to requests that carry it
    (header, or C{?token=} once); others get a small page asking for it.
    """

    protected = True

    def __init__(self, token: str | None) -> None:
        super().__init__(token)
        self.page = _Page("dashboard.html")
        self.login = _Page("login.html")

    def authorized(self, request: Request) -> bool:
        if super().authorized(request):
            return True
        try:
            given = query_arg(request, "token")
        except HTTPError:
            return False
        if given is None or self.token is None:
            return False
        return hmac.compare_digest(given.encode("utf-8"), self.token)

    def unauthorized(self, request: Request) -> Response:
        return self.login.response(401)

    async def handle(self, request: Request, path: list[str]) -> Response:
        if path:
            raise HTTPError(404, "not found")
        return self.page.response()
