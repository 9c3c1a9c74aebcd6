"""
Webhooks: each event of the fleet view (L{StateEvent}) POSTed as JSON to every C{--webhook}
URL, at least once and in order (one event at a time per URL), retried with backoff while the
receiver is down or answers 5xx, 408 or 429, each attempt bounded by a timeout.  A URL's queue
is bounded: when full, the oldest event goes, said once until the queue is empty again.  With
a secret, C{X-Ethtwisted-Signature: sha256=<hex>} is the HMAC-SHA256 of the body.

A receiver's answer is bounded too (L{ethtwisted.server.webhook_http}): its status line and
headers in bytes and lines, its body in bytes, and here the whole attempt in time; the
connection is closed whichever bound it reaches.  Redirects are not followed: a 3xx is tried
again, L{REDIRECT_ATTEMPTS} times in all, then the event is given up.

A URL may carry secrets (user and password, a path or a query): logs name a URL by its
position and origin only (C{webhook 2 (https://hooks.example)}); of an answer they say the
status and sizes, never the receiver's bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from ethtwisted.interfaces import IEventSink
from ethtwisted.logs import Logger, Trouble
from ethtwisted.records import StateEvent
from ethtwisted.server.webhook_http import (
    RetryableStatusError,
    bounded_agent,
    failure_reason,
)
from ethtwisted.server.webhook_http import post as post_once

log = Logger(namespace="ethtwisted.server")

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_QUEUE = 10_000
REDIRECT_ATTEMPTS = 3
"""Attempts at an event answered with a 3xx (redirects are not followed) before giving it up."""
SIGNATURE_HEADER = b"X-Ethtwisted-Signature"
MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class WebhookURL:
    """
    A parsed C{--webhook}: what is requested, its user and password as a Basic
    authorization, and its origin, the only part of it ever logged.
    """

    url: bytes
    origin: str
    authorization: bytes | None


def parse_webhook_url(text: str) -> WebhookURL:
    """
    An C{http://} or C{https://} URL with a host; raise L{ValueError} saying what is wrong,
    never quoting the URL.
    """
    if len(text) > MAX_URL_LENGTH or not text.isascii() or any(c.isspace() for c in text):
        raise ValueError(f"a webhook is an ASCII URL of at most {MAX_URL_LENGTH} characters")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a webhook is an http:// or https:// URL with a host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the webhook URL has a bad port") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    authorization = None
    if parts.username is not None:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = b"Basic " + base64.b64encode(user.encode("utf-8"))
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return WebhookURL(url.encode("ascii"), f"{parts.scheme}://{netloc}", authorization)


def event_body(event: StateEvent) -> bytes:
    """
    The JSON body POSTed for C{event}: its fields, sorted keys, no spaces.
    """
    return json.dumps(asdict(event), sort_keys=True, separators=(",", ":")).encode("utf-8")


def signature(secret: bytes, body: bytes) -> bytes:
    """
    The value of the signature header: C{sha256=} and the HMAC-SHA256 of C{body}, in hex.
    """
    return b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")


class _Target:
    """
    One URL: its queue and the one delivery under way or waiting to be retried.
    """

    def __init__(self, owner: WebhookService, index: int, url: WebhookURL) -> None:
        self.owner = owner
        self.url = url
        self.name = f"webhook {index} ({url.origin})"
        self.queue: deque[tuple[int, bytes]] = deque()
        """(event id, body), oldest first."""
        self.done = 0
        """The id of the last event settled: delivered, refused by the receiver, or dropped."""
        self.sending: Deferred[int] | None = None
        self.timer: IDelayedCall | None = None
        self.timed_out = False
        self.retry: IDelayedCall | None = None
        self.attempt = 0
        self.redirected = 0
        """Attempts at the first event in the queue answered with a 3xx."""
        self.dropped = 0
        self.failing = Trouble(
            log,
            LogLevel.warn,
            "{name}: delivery failed ({reason}); retrying with backoff",
            "{name}: delivering again",
        )

    def enqueue(self, event_id: int, body: bytes) -> None:
        if len(self.queue) >= self.owner.max_queue:
            self.done = self.queue.popleft()[0]
            self.redirected = 0
            if self.dropped == 0:
                log.warn("{name}: {size} events wait, the most kept: dropping the oldest",
                         name=self.name, size=len(self.queue) + 1)  # fmt: skip
            self.dropped += 1
        self.queue.append((event_id, body))
        self.next()

    def next(self) -> None:
        if not self.owner.running or self.sending is not None or self.retry is not None:
            return
        if not self.queue:
            return
        entry = self.queue[0]
        body = entry[1]
        self.timed_out = False
        self.timer = self.owner.reactor.callLater(self.owner.timeout, self._time_out)
        self.sending = Deferred.fromCoroutine(self.owner.post(self.url, body))
        self.sending.addCallbacks(self._answered, self._failed, callbackArgs=(entry,))
        self.sending.addErrback(lambda f: log.failure("{name}: delivering", f, name=self.name))

    def _time_out(self) -> None:
        self.timer = None
        self.timed_out = True
        if self.sending is not None:
            self.sending.cancel()
        self._settled()

    def _settled(self) -> None:
        self.sending = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _answered(self, status: int, entry: tuple[int, bytes]) -> None:
        self._settled()
        if 200 <= status < 300:
            self._recovered()
        elif 400 <= status < 500 and status not in (408, 429):
            # The receiver refuses this event: trying it again cannot help, the next can.
            log.warn("{name}: the receiver refused an event with status {status}",
                     name=self.name, status=status)  # fmt: skip
        elif 300 <= status < 400 and self.redirected + 1 >= REDIRECT_ATTEMPTS:
            log.warn("{name}: the receiver answered an event {attempts} times with status"
                     " {status} (redirects are not followed): giving it up",
                     name=self.name, attempts=REDIRECT_ATTEMPTS, status=status)  # fmt: skip
        else:
            if 300 <= status < 400:
                self.redirected += 1
            self._failed(Failure(RetryableStatusError(f"status {status}")))
            return
        if self.queue and self.queue[0] is entry:
            self.done = self.queue.popleft()[0]
            self.redirected = 0
        if not self.queue and self.dropped:
            log.info("{name}: caught up; {dropped} events were dropped while the queue was full",
                     name=self.name, dropped=self.dropped)  # fmt: skip
            self.dropped = 0
        self.next()

    def _recovered(self) -> None:
        self.attempt = 0
        self.failing.ended(name=self.name)

    def _failed(self, failure: Failure) -> None:
        self._settled()
        if not self.owner.running:
            return  # stopped: the event stays queued
        if self.timed_out:
            reason = f"timed out after {self.owner.timeout:g} s"
        else:
            reason = failure_reason(failure)
        self.failing.say(reason, name=self.name)
        delay = self.owner.retry_policy(self.attempt)
        self.attempt += 1
        self.retry = self.owner.reactor.callLater(delay, self._again)

    def _again(self) -> None:
        self.retry = None
        self.next()

    def restart(self, done: int) -> None:
        """
        Forget the queue: the events after C{done} come again.  A delivery under way ends as
        it will, and settles nothing.
        """
        self.queue.clear()
        self.done = done
        self.redirected = 0

    def stop(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        if self.sending is not None:
            self.sending.cancel()
        self._settled()


@implementer(IEventSink)
class WebhookService(Service):
    """
    Delivers every published event to each of C{urls}; events published before the service
    starts wait in its queues.  C{retry_policy} maps the attempt (0 first) to the seconds to
    wait before the next; C{secret} signs each body.
    """

    name = "webhooks"

    def __init__(
        self,
        reactor: IReactorTime,
        urls: Sequence[WebhookURL],
        secret: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_queue: int = DEFAULT_MAX_QUEUE,
        retry_policy: Callable[[int], float] | None = None,
        agent: IAgent | None = None,
    ) -> None:
        self.reactor = reactor
        self.secret = secret
        self.timeout = timeout
        self.max_queue = max_queue
        self.retry_policy = retry_policy or backoffPolicy(initialDelay=1.0, maxDelay=60.0)
        self.agent = agent or bounded_agent(reactor, timeout)
        self.targets = [_Target(self, n, url) for n, url in enumerate(urls, 1)]

    def publish(self, event: StateEvent) -> None:
        body = event_body(event)
        for target in self.targets:
            target.enqueue(event.id, body)

    def settled(self) -> int:
        """
        The id of the last event that every URL has settled (delivered, refused, dropped).
        """
        return min(target.done for target in self.targets)

    def restart(self, done: int) -> None:
        """
        Forget every queue: the events after C{done} are published again (by another server,
        or by this one when it delivers again).
        """
        for target in self.targets:
            target.restart(done)

    async def post(self, url: WebhookURL, body: bytes) -> int:
        """
        POST C{body} to C{url}; the response's status, once its body is read (or dropped).
        """
        headers = Headers({b"Content-Type": [b"application/json"], b"User-Agent": [b"ethtwisted"]})
        if self.secret is not None:
            headers.addRawHeader(SIGNATURE_HEADER, signature(self.secret, body))
        if url.authorization is not None:
            headers.addRawHeader(b"Authorization", url.authorization)
        return await post_once(self.agent, url.url, headers, body)

    def startService(self) -> None:
        super().startService()
        for target in self.targets:
            target.next()

    def stopService(self) -> None:
        super().stopService()
        for target in self.targets:
            target.stop()
