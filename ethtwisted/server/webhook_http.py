"""
One webhook request over HTTP (L{post}, through L{bounded_agent}): the receiver's answer
bounded in its status line and headers (L{MAX_HEADER_BYTES}, L{MAX_HEADER_LINES}, 1xx answers
included: Twisted's parser bounds only each line, and keeps every header) and in its body
(L{MAX_RESPONSE_BYTES}); a cancelled request (its attempt timed out) closes its connection
whatever it was waiting for; and why an attempt failed said without the receiver's bytes
(L{failure_reason}).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web._newclient import HEADER, STATUS, HTTP11ClientProtocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from ethtwisted.logs import Logger, describe

log = Logger(namespace="ethtwisted.server")

MAX_RESPONSE_BYTES = 64 * 1024
"""The most of a receiver's answer read (and thrown away) before hanging up on it."""
MAX_HEADER_BYTES = 16 * 1024
"""The most bytes of status line and headers taken from a receiver (1xx answers included)."""
MAX_HEADER_LINES = 100
"""The most lines of status and headers taken from a receiver."""


class _Discard(Protocol):
    """
    Reads a response's body into nothing, hanging up past L{MAX_RESPONSE_BYTES}, or when
    C{done} is cancelled (the attempt timed out).
    """

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred(lambda _: self._hang_up())
        self.size = 0

    def _hang_up(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_RESPONSE_BYTES and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # The answer's status is what counts; how its body ended does not.
        if not reason.check(ResponseDone):
            log.debug("a webhook answer's body ended after {size} bytes: {reason}",
                      size=self.size, reason=type(reason.value).__name__)  # fmt: skip
        if not self.done.called:
            self.done.callback(None)


class HeadersTooLargeError(Exception):
    """
    The receiver's status line and headers went past L{MAX_HEADER_BYTES} or
    L{MAX_HEADER_LINES}.
    """


class _BoundedClientProtocol(HTTP11ClientProtocol):
    """
    An HTTP/1.1 client connection that hangs up on a receiver whose status line and headers
    (of the answer and of any 1xx before it) go past L{MAX_HEADER_BYTES} bytes or
    L{MAX_HEADER_LINES} lines: Twisted's parser bounds only each line, and keeps every header.
    """

    header_bytes = 0
    header_lines = 0

    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        super().dataReceived(data)
        # What the parser took while still in the headers counts, all of it: a chunk is at
        # most one read from the socket, so the headers held stay within the bound and a read.
        if parser is None or self._parser is not parser or parser.state not in (STATUS, HEADER):
            return
        self.header_bytes += len(data)
        self.header_lines += data.count(b"\n")
        if self.header_bytes > MAX_HEADER_BYTES or self.header_lines > MAX_HEADER_LINES:
            self._giveUp(Failure(HeadersTooLargeError(
                f"headers over {MAX_HEADER_BYTES} bytes or {MAX_HEADER_LINES} lines"
                f" ({self.header_bytes} bytes, {self.header_lines} lines)"
            )))  # fmt: skip


class _QuietFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory: bounded connections, without a log line for each.
    """

    noisy = False

    def buildProtocol(self, addr: object) -> HTTP11ClientProtocol:
        return _BoundedClientProtocol(self._quiescentCallback)


class RetryableStatusError(Exception):
    """
    The receiver answered with a status worth trying again (5xx, 408, 429, 3xx).
    """


_SAID_AS_IS = (
    ConnectError,
    ConnectionLost,
    ConnectionDone,
    HeadersTooLargeError,
    RetryableStatusError,
)
"""Errors whose message holds nothing the receiver sent (ours, and the system's)."""


def failure_reason(failure: Failure) -> str:
    """
    Why an attempt failed, for the log: the message of an error of ours or of the system's,
    only the type's name of any other (a parser's error quotes the receiver's bytes).
    """
    # The agent's errors wrap their reasons in a list.
    reasons = getattr(failure.value, "reasons", None)
    value = reasons[0].value if reasons and isinstance(reasons[0], Failure) else failure.value
    if isinstance(value, _SAID_AS_IS):
        return describe(value)
    return f"a bad answer ({type(value).__name__})"


@implementer(IBodyProducer)
class _Body:
    """
    A request body of a few bytes, written at once.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def bounded_agent(reactor: IReactorTime, connect_timeout: float) -> IAgent:
    """
    An agent whose connections are bounded as this module says, one per request, and not
    logged one by one.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = _QuietFactory
    return Agent(reactor, connectTimeout=connect_timeout, pool=pool)


async def post(agent: IAgent, url: bytes, headers: Headers, body: bytes) -> int:
    """
    POST C{body} to C{url}; the answer's status, once its body is read (or dropped).
    """
    response: IResponse = await agent.request(b"POST", url, headers, _Body(body))
    discard = _Discard()
    response.deliverBody(discard)
    await discard.done
    return int(response.code)
