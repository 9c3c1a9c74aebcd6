"""
Webhooks against hostile receivers: raw Twisted protocols on loopback ports that stream
headers without end, send too many, trickle their answer, redirect, or answer garbage.  What
the server holds is measured from inside this process (its resident memory, its open sockets
in /proc/self/fd), and what it logs is checked for the receiver's bytes.  Then any answer
Hypothesis makes up, fed to the real client protocol over a StringTransport.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web._newclient import Request
from twisted.web.http_headers import Headers
from zope.interface import implementer

from ethtwisted.server.webhook_http import (
    MAX_HEADER_BYTES,
    MAX_HEADER_LINES,
    _Body,
    _BoundedClientProtocol,
    failure_reason,
)
from ethtwisted.server.webhooks import REDIRECT_ATTEMPTS, WebhookService, parse_webhook_url
from tests.helpers import the_reactor, wait_for
from tests.webhooks import FAST_RETRY, event

MARKER = "receiver-bytes-7f3a"
"""Written by the receivers into every answer: it must never reach the log."""
STREAM_LIMIT = 256 * 1024 * 1024
"""A streaming receiver stops there (an unbounded client would hold it all)."""
READ_SIZE = 64 * 1024
"""The most bytes one read from a socket hands a protocol (Twisted's bufferSize)."""


@implementer(IPushProducer)
class Hostile(Protocol):
    """
    One connection of a receiver that, once the request has come, answers as C{mode} says:
    C{endless} headers as fast as the client reads them, C{many} short headers, a status line
    then one byte a tick (C{trickle-headers}), headers then one body byte a tick
    (C{trickle-body}), a C{redirect}, a C{garbage} status line.
    """

    def __init__(self, owner: Receiver) -> None:
        self.owner = owner
        self.request = b""
        self.answering = False
        self.paused = False
        self.written = 0
        self.ticking: IDelayedCall | None = None

    @property
    def clock(self) -> IReactorTime:
        return the_reactor()

    def connectionMade(self) -> None:
        self.owner.open += 1
        self.owner.connections += 1

    def dataReceived(self, data: bytes) -> None:
        self.request += data
        head, _, body = self.request.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if self.answering or not length or len(body) < int(length.group(1)):
            return
        self.answering = True
        self.owner.requests.append(body)
        self.answer()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.written += len(data)
        self.transport.write(data)

    def answer(self) -> None:
        mode = self.owner.mode
        transport = cast(ITransport, self.transport)
        if mode == "endless":
            self.write(b"HTTP/1.1 200 OK\r\n")
            cast(Any, transport).registerProducer(self, True)
            self.resumeProducing()
        elif mode == "many":
            lines = b"".join(b"X-%d: %s\r\n" % (n, MARKER.encode()) for n in range(200))
            self.write(b"HTTP/1.1 200 OK\r\n" + lines)
        elif mode in ("trickle-headers", "trickle-body"):
            self.write(b"HTTP/1.1 200 OK\r\n")
            if mode == "trickle-body":
                self.write(b"Content-Length: 100000\r\n\r\n")
            self.tick()
        elif mode == "redirect":
            location = f"http://127.0.0.1:1/{MARKER}".encode()
            self.write(b"HTTP/1.1 302 " + MARKER.encode() + b"\r\nLocation: " + location
                       + b"\r\nContent-Length: 19\r\nConnection: close\r\n\r\n"
                       + MARKER.encode())  # fmt: skip
        else:
            assert mode == "garbage", mode
            self.write(f"HTTP/1.1 {MARKER} {MARKER}\r\n\r\n".encode())

    def tick(self) -> None:
        self.write(b"x")
        self.ticking = self.clock.callLater(0.05, self.tick)

    def resumeProducing(self) -> None:
        self.paused = False
        line = b"X-Pad: " + MARKER.encode() * 100 + b"\r\n"
        while not self.paused and self.written < STREAM_LIMIT and self.transport is not None:
            self.write(line * 64)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.owner.open -= 1
        self.owner.written.append(self.written)
        if self.ticking is not None and self.ticking.active():
            self.ticking.cancel()


@dataclass
class Receiver:
    """
    A hostile receiver listening on a free loopback port: how many connections it has open
    and had, the request bodies it got, the bytes it wrote on each closed connection.
    """

    mode: str
    open: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    listening: IListeningPort | None = None
    live: list[Hostile] = field(default_factory=list)

    async def start(self) -> None:
        endpoint = TCP4ServerEndpoint(cast(Any, the_reactor()), 0, interface="127.0.0.1")
        factory = Factory.forProtocol(lambda: self.track(Hostile(self)))
        factory.noisy = False
        self.listening = await endpoint.listen(factory)

    def track(self, protocol: Hostile) -> Hostile:
        self.live.append(protocol)
        return protocol

    @property
    def url(self) -> str:
        assert self.listening is not None
        return f"http://127.0.0.1:{cast(Any, self.listening.getHost()).port}/hook"

    @property
    def ids(self) -> list[int]:
        return [int(m.group(1)) for b in self.requests if (m := re.search(rb'"id":(\d+)', b))]

    async def stop(self) -> None:
        for protocol in self.live:
            if protocol.transport is not None:
                cast(Any, protocol.transport).abortConnection()
        if self.listening is not None:
            await maybeDeferred(self.listening.stopListening)
        await wait_for(lambda: self.open == 0, what="the receiver's connections to close")


@pytest_twisted.async_yield_fixture
async def hostile() -> AsyncIterator[list[Receiver]]:
    """Receivers the test starts; all stopped afterwards."""
    made: list[Receiver] = []
    yield made
    for receiver in made:
        await receiver.stop()


async def started(made: list[Receiver], mode: str) -> Receiver:
    receiver = Receiver(mode)
    made.append(receiver)
    await receiver.start()
    return receiver


def service_for(receiver: Receiver, timeout: float = 10.0) -> WebhookService:
    return WebhookService(
        the_reactor(), [parse_webhook_url(receiver.url)], timeout=timeout,
        retry_policy=lambda _: FAST_RETRY,
    )  # fmt: skip


async def stopped(service: WebhookService) -> None:
    service.stopService()
    await wait_for(lambda: all(t.sending is None for t in service.targets), what="stopped")


def resident_bytes() -> int:
    """This process's resident memory, from /proc/self/statm."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_sockets() -> int:
    """How many sockets this process has open, from /proc/self/fd."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own descriptor)
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def texts(logged: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in logged]


def no_receiver_bytes(logged: Sequence[LogEvent]) -> None:
    everything = "\n".join(formatEvent(e) + repr(e) for e in logged)
    assert MARKER not in everything


@pytest_twisted.ensureDeferred
async def test_endless_headers_are_cut_off_at_the_bound(hostile: list[Receiver]) -> None:
    """
    A receiver streaming headers without end (as fast as they are read, up to 256 MB a
    connection) is hung up on once the status line and headers pass MAX_HEADER_BYTES:
    each attempt is said failed for its headers, the server has taken at most the bound and
    one read, its memory grows by less than 32 MB over three attempts, and nothing the
    receiver sent is logged.
    """
    receiver = await started(hostile, "endless")
    service = service_for(receiver)
    before = resident_bytes()
    with capturedLogs() as logged:
        service.startService()
        service.publish(event(1))
        await wait_for(lambda: len(receiver.written) >= 3, what="three attempts hung up on")
    await stopped(service)
    grown = resident_bytes() - before
    assert grown < 32 * 1024 * 1024, grown
    said = [t for t in texts(logged) if "headers over" in t]
    assert len(said) == 1, texts(logged)  # said once while it goes on
    taken = int(re.search(r"\((\d+) bytes", said[0]).group(1))  # type: ignore[union-attr]
    assert MAX_HEADER_BYTES < taken <= MAX_HEADER_BYTES + READ_SIZE
    assert max(receiver.written) < STREAM_LIMIT
    no_receiver_bytes(logged)


@pytest_twisted.ensureDeferred
async def test_too_many_headers_are_cut_off_at_the_count(hostile: list[Receiver]) -> None:
    """
    Two hundred short header lines (under the byte bound) are hung up on past
    MAX_HEADER_LINES, without waiting for the attempt's deadline.
    """
    receiver = await started(hostile, "many")
    service = service_for(receiver, timeout=30.0)
    with capturedLogs() as logged:
        service.startService()
        service.publish(event(1))
        await wait_for(lambda: len(receiver.written) >= 2, timeout=10.0, what="two attempts")
    await stopped(service)
    said = [t for t in texts(logged) if "headers over" in t]
    assert said and f"{MAX_HEADER_LINES} lines" in said[0], texts(logged)
    no_receiver_bytes(logged)


@pytest.mark.parametrize("mode", ["trickle-headers", "trickle-body"])
@pytest_twisted.ensureDeferred
async def test_a_trickling_receiver_leaks_no_socket(hostile: list[Receiver], mode: str) -> None:
    """
    A receiver that trickles its answer (its headers, or its body after the headers) keeps
    each attempt until the deadline, and then the connection is closed: after five attempts
    the receiver has at most the current one open, and this process at most that one pair of
    sockets more than before.
    """
    receiver = await started(hostile, mode)
    baseline = open_sockets()
    service = service_for(receiver, timeout=0.2)
    with capturedLogs() as logged:
        service.startService()
        service.publish(event(1))
        await wait_for(lambda: receiver.connections >= 5, what="five attempts")
        await wait_for(
            lambda: receiver.open <= 1 and open_sockets() <= baseline + 2,
            timeout=5.0,
            what=lambda: f"{receiver.open} open, {open_sockets()} sockets, {baseline} before",
        )
    await stopped(service)
    assert any("timed out after 0.2 s" in t for t in texts(logged)), texts(logged)
    await wait_for(lambda: open_sockets() <= baseline, what="every socket closed once stopped")
    no_receiver_bytes(logged)


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_tried_a_bounded_number_of_times(hostile: list[Receiver]) -> None:
    """
    Redirects are not followed: an event answered 302 is sent REDIRECT_ATTEMPTS times in
    all, then given up (said with its status, not its location), and the next event gets as
    many; neither the status phrase, the location nor the body reaches the log.
    """
    receiver = await started(hostile, "redirect")
    service = service_for(receiver)
    with capturedLogs() as logged:
        service.startService()
        service.publish(event(1))
        service.publish(event(2))
        await wait_for(lambda: not service.targets[0].queue, what="both events given up")
    await stopped(service)
    assert receiver.ids == [1] * REDIRECT_ATTEMPTS + [2] * REDIRECT_ATTEMPTS
    given_up = [t for t in texts(logged) if "giving it up" in t]
    assert len(given_up) == 2 and "status 302" in given_up[0], texts(logged)
    assert service.settled() == 2
    no_receiver_bytes(logged)


@pytest_twisted.ensureDeferred
async def test_a_garbage_answer_is_said_without_its_bytes(hostile: list[Receiver]) -> None:
    """
    A status line the parser refuses is a failed attempt, retried; the log says it was a bad
    answer and never quotes it (Twisted's error would).
    """
    receiver = await started(hostile, "garbage")
    service = service_for(receiver)
    with capturedLogs() as logged:
        service.startService()
        service.publish(event(1))
        await wait_for(lambda: receiver.connections >= 3, what="three attempts")
    await stopped(service)
    assert any("a bad answer (ParseError)" in t for t in texts(logged)), texts(logged)
    no_receiver_bytes(logged)


# -- any answer, in memory: the real client protocol over a StringTransport -------------------

header_value = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
header_line = st.builds(
    b"%s: %s".__mod__,
    st.tuples(st.from_regex(rb"X-[A-Za-z0-9-]{1,20}", fullmatch=True), header_value),
) | header_value.filter(lambda line: line[:1] not in (b" ", b"\t"))
header_lines = st.lists(header_line, max_size=20) | st.tuples(
    header_line, st.integers(0, 400)
).map(lambda repeated: [repeated[0]] * repeated[1])
"""A few header lines of any bytes, or one line many times (up to 120 KB)."""
statuses = st.sampled_from(
    [b"HTTP/1.1 200 OK", b"HTTP/1.1 100 Continue", b"HTTP/1.1 302 Found", b"HTTP/1.0 204",
     b"HTTP/1.1 " + MARKER.encode(), b"garbage"]
)  # fmt: skip
REASONS = re.compile(
    rf"headers over {MAX_HEADER_BYTES} bytes or {MAX_HEADER_LINES} lines"
    r" \(\d+ bytes, \d+ lines\)|a bad answer \(\w+\)|Connection was closed cleanly\."
)


@pytest.mark.property
@given(st.lists(st.tuples(statuses, header_lines), min_size=1, max_size=4), st.booleans(),
       st.integers(1, 70_000))  # fmt: skip
def test_any_answer_is_bounded_and_said_without_its_bytes(
    answers: list[tuple[bytes, list[bytes]]], ends: bool, read: int
) -> None:
    """
    Whatever a receiver answers (1xx answers before the last, any header lines of any bytes,
    a bad status line, headers that end or not), handed over in reads of any size: the
    connection takes at most MAX_HEADER_BYTES and one read of status and headers, and
    MAX_HEADER_LINES lines and those of one read, before it has the answer or hangs up; and a
    failed attempt is said in one of a few phrases of ours, never with the receiver's bytes.
    """
    protocol = _BoundedClientProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    headers = Headers({b"Host": [b"127.0.0.1"]})
    request = Request(b"POST", b"/hook", headers, _Body(b"{}"), persistent=False)
    outcome: list[Any] = []
    protocol.request(request).addBoth(outcome.append)
    data = b"".join(s + b"\r\n" + b"".join(h + b"\r\n" for h in hs) + b"\r\n" for s, hs in answers)
    if not ends:
        data = data[:-2]
    for i in range(0, len(data), read):
        if transport.disconnecting or outcome:
            break
        protocol.dataReceived(data[i : i + read])
        assert protocol.header_bytes <= MAX_HEADER_BYTES + read
        assert protocol.header_lines <= MAX_HEADER_LINES + data[i : i + read].count(b"\n")
    if not outcome:
        protocol.connectionLost(Failure(ConnectionDone()))
    assert len(outcome) == 1
    if isinstance(outcome[0], Failure):
        reason = failure_reason(outcome[0])
        assert REASONS.fullmatch(reason), reason
        assert MARKER not in reason
