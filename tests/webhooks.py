"""
Webhook receivers on free loopback ports (L{Receiver}, L{Running}), state events to send
them, and their URLs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ethtwisted.records import StateEvent
from ethtwisted.server.webhooks import WebhookURL, parse_webhook_url
from tests.helpers import the_reactor
from tests.services import free_port

FAST_RETRY = 0.05


def event(n: int, client: str = "node-a") -> StateEvent:
    return StateEvent(
        id=n,
        client=client,
        chain_id=1,
        state="behind",
        event="entered" if n % 2 else "left",
        head=100 + n,
        best_head=110 + n,
        since=1_700_000_000.0 + n,
        at=1_700_000_030.0 + n,
        text=f"{client} is 10 blocks behind ({n})",
    )


@dataclass
class Receiver(Resource):
    """
    A webhook receiver: records each POST (headers and body); answers C{statuses} in turn
    (then 200), and leaves the first C{hang} requests unanswered.
    """

    statuses: list[int] = field(default_factory=list)
    hang: int = 0
    requests: list[tuple[dict[bytes, bytes], bytes]] = field(default_factory=list)
    hanging: list[Request] = field(default_factory=list)
    isLeaf = True

    def __post_init__(self) -> None:
        Resource.__init__(self)

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        headers = {k.lower(): v[-1] for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((headers, request.content.read()))
        if self.hang > 0:
            self.hang -= 1
            self.hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.statuses.pop(0) if self.statuses else 200)
        return b"ok"

    @property
    def ids(self) -> list[int]:
        return [json.loads(body)["id"] for _, body in self.requests]


@dataclass
class Running:
    receiver: Receiver
    port: int
    listening: IListeningPort | None = None

    async def start(self) -> None:
        endpoint = TCP4ServerEndpoint(cast(Any, the_reactor()), self.port, interface="127.0.0.1")
        site = Site(self.receiver)
        site.noisy = False
        self.listening = await endpoint.listen(site)

    async def stop(self) -> None:
        if self.listening is not None:
            for request in self.receiver.hanging:
                if request.channel is not None and request.channel.transport is not None:
                    cast(Any, request.channel.transport).abortConnection()
            await maybeDeferred(self.listening.stopListening)
            self.listening = None


def receiver(made: list[Running], **kwargs: object) -> Running:
    running = Running(Receiver(**kwargs), free_port())  # type: ignore[arg-type]
    made.append(running)
    return running


def url(running: Running, path: str = "/hook") -> WebhookURL:
    return parse_webhook_url(f"http://127.0.0.1:{running.port}{path}")
