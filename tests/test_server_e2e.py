"""
eth-server for real: TCP sockets on loopback, SQLite files, and the private MariaDB and Redis
servers of conftest.py, including their restarts.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.internet.tcp import Connection
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from ethtwisted.frames import Hello, encode_control
from ethtwisted.protocol import payload_hash as sha
from ethtwisted.server.flow import MAX_IN_FLIGHT, MAX_UNREAD_ACK_BYTES
from ethtwisted.server.ingest import MAX_BATCH
from tests.e2e import drops, sqlite_rows
from tests.helpers import (
    ROLLBACK_FAILED,
    TIMEOUT,
    Peer,
    Server,
    connect,
    connect_peer,
    start_server,
    wait_for,
)
from tests.services import MySQLDatabase, Redis

FLOOD = 20_000


@pytest_twisted.async_yield_fixture
async def sqlite_server(tmp_path: Path) -> AsyncIterator[tuple[Server, Path]]:
    path = tmp_path / "eth.sqlite"
    server = await start_server(["--db", f"sqlite:///{path}", "--idle-timeout", "2"])
    yield server, path
    await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_dedup_across_connections_and_ack_after_commit(
    sqlite_server: tuple[Server, Path],
) -> None:
    """
    Payloads sent over several connections are stored once each; every ack arrives when its
    row is already committed.
    """
    server, path = sqlite_server
    payloads = [f"block {i}".encode() for i in range(60)]
    peers = [await connect_peer(server.port) for _ in range(3)]
    missing_at_ack: list[str] = []

    def check(sha256: str) -> None:
        if sha256 not in sqlite_rows(path):
            missing_at_ack.append(sha256)

    peers[0].on_ack = check
    await DeferredList([p.send(payloads[i * 20 : i * 20 + 40]) for i, p in enumerate(peers)])
    rows = sqlite_rows(path)
    assert rows == {sha(p): p.decode() for p in payloads}
    assert missing_at_ack == []
    for peer in peers:
        peer.close()


@pytest_twisted.ensureDeferred
async def test_oneshot_clients_are_all_stored(sqlite_server: tuple[Server, Path]) -> None:
    """
    Fifty older clients at once, each sending one page and closing at once without reading,
    are all stored.
    """
    server, path = sqlite_server

    class OneShot(Protocol):
        def __init__(self, payload: bytes) -> None:
            self.payload = payload

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(b"%d:%s," % (len(self.payload), self.payload))
            self.transport.loseConnection()

    payloads = [f"<p>{i}</p>".encode() for i in range(50)]
    await DeferredList([connect(server.port, OneShot(p)) for p in payloads])
    await wait_for(lambda: len(sqlite_rows(path)) == 50)
    assert set(sqlite_rows(path)) == {sha(p) for p in payloads}


@pytest_twisted.ensureDeferred
async def test_bad_clients_cost_only_their_connections(sqlite_server: tuple[Server, Path]) -> None:
    """
    Broken framing, an oversized message, non-UTF-8 and an empty message each lose their
    own connection while a good client on another connection keeps being served.
    """
    server, path = sqlite_server
    good = await connect_peer(server.port)
    await good.send([b"before"])

    class Raw(Protocol):
        def __init__(self, data: bytes) -> None:
            self.data = data
            self.lost: Deferred[None] = Deferred()

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(self.data)

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            self.lost.callback(None)

    bad_inputs = [b"GET / HTTP/1.0\r\n\r\n", b"70000:" + b"x" * 1000, b"2:\xc3(,", b"0:,"]
    bad = [await connect(server.port, Raw(data)) for data in bad_inputs]
    await DeferredList([b.lost for b in bad]).addTimeout(TIMEOUT, reactor)
    await good.send([b"after"])
    assert set(sqlite_rows(path)) == {sha(b"before"), sha(b"after")}
    good.close()


@pytest_twisted.ensureDeferred
async def test_hundreds_of_idle_connections(sqlite_server: tuple[Server, Path]) -> None:
    """
    300 connections that say nothing are dropped after the idle timeout, while a client that
    said hello stays connected and served throughout.
    """
    server, _ = sqlite_server
    persistent = await connect_peer(server.port)
    persistent.sendString(encode_control(Hello("persistent")))
    idle = [await connect(server.port, Peer()) for _ in range(300)]
    await persistent.send([b"while idle ones wait"])
    await DeferredList([p.lost for p in idle]).addTimeout(TIMEOUT, reactor)
    assert not persistent.lost.called
    await persistent.send([b"after they are gone"])
    persistent.close()


@pytest_twisted.ensureDeferred
async def test_mysql_and_redis_store_and_count(mysql_db: MySQLDatabase, redis: Redis) -> None:
    """
    With MySQL and Redis: each payload stored once in ethereum_data, its first sighting in
    eth:hashes, and every send counted per client address in eth:ip_addresses.
    """
    server = await start_server(
        ["--db", mysql_db.url, "--redis", redis.url],
        {"ETH_MYSQL_PASSWORD": mysql_db.password},
    )
    try:
        payloads = [f"payload {i} ✓".encode() for i in range(100)]
        peers = [await connect_peer(server.port) for _ in range(2)]
        await DeferredList([peers[0].send(payloads), peers[1].send(payloads[:30])])
        rows = await deferToThread(mysql_db.query, "SELECT hash, payload FROM ethereum_data")
        assert dict(rows) == {sha(p): p.decode() for p in payloads}
        assert redis.execute("ZCARD", "eth:hashes") == 100
        assert redis.execute("HGET", "eth:ip_addresses", "127.0.0.1") == b"130"
        clients = await deferToThread(mysql_db.query, "SELECT client, messages FROM eth_clients")
        assert clients == [("127.0.0.1", 130)]
        for peer in peers:
            peer.close()
    finally:
        await server.service.stopService()


@pytest.mark.expected_log_errors("^SQL store unavailable: ", ROLLBACK_FAILED)
@pytest_twisted.ensureDeferred
async def test_mysql_restart_mid_stream_loses_nothing_acked(
    mysql_db: MySQLDatabase, redis: Redis
) -> None:
    """
    MariaDB killed (SIGKILL) and restarted while messages stream in: the server holds and
    retries, every message is eventually acknowledged, and every acknowledged one is in SQL.
    """
    server = await start_server(
        ["--db", mysql_db.url, "--redis", redis.url],
        {"ETH_MYSQL_PASSWORD": mysql_db.password},
    )
    try:
        payloads = [f"stream {i}".encode() for i in range(2000)]
        peer = await connect_peer(server.port)
        peer.window = 20
        restarted: list[Deferred[None]] = []

        def restart_once(_: str) -> None:
            if len(peer.acked) == 300 and not restarted:
                restarted.append(deferToThread(mysql_db.server.restart))

        peer.on_ack = restart_once
        with capturedLogs() as events:
            await peer.send(payloads).addTimeout(120, reactor)
            await restarted[0]
        outages = [e for e in events if "holding" in e.get("log_format", "")]
        assert outages and "SQL store unavailable" in outages[0]["reason"]
        rows = await deferToThread(mysql_db.query, "SELECT hash FROM ethereum_data")
        assert {r[0] for r in rows} == {sha(p) for p in payloads}
        assert set(peer.acked) == {sha(p) for p in payloads}
        peer.close()
    finally:
        await server.service.stopService()


@pytest.mark.expected_log_errors("^Redis store unavailable: ")
@pytest_twisted.ensureDeferred
async def test_redis_outage_holds_acks_until_it_is_back(
    mysql_db: MySQLDatabase, redis: Redis
) -> None:
    """
    While Redis is down nothing is acknowledged, even once the server has said that it holds
    the messages; once Redis is back, the held messages are counted and acknowledged without a
    restart of the server.
    """
    server = await start_server(
        ["--db", mysql_db.url, "--redis", redis.url],
        {"ETH_MYSQL_PASSWORD": mysql_db.password},
    )
    try:
        peer = await connect_peer(server.port)
        await peer.send([b"before the outage"])
        await deferToThread(redis.kill)
        with capturedLogs() as events:
            done = peer.send([b"during the outage 1", b"during the outage 2"])

            def holding() -> bool:
                return any("holding" in e.get("log_format", "")
                           and "Redis store unavailable" in str(e.get("reason"))
                           for e in events)  # fmt: skip

            await wait_for(holding, what="the server holding the messages for Redis")
        assert len(peer.acked) == 1
        await deferToThread(redis.start)
        await done.addTimeout(TIMEOUT, reactor)
        assert redis.execute("ZSCORE", "eth:hashes", sha(b"during the outage 2")) is not None
        assert redis.execute("HGET", "eth:ip_addresses", "127.0.0.1") == b"2"
        peer.close()
    finally:
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_tokens_required(tmp_path: Path) -> None:
    """
    With --tokens-file, a client with a valid token is served and an older client without
    one is refused.
    """
    tokens = tmp_path / "tokens"
    tokens.write_text("# fleet tokens\nsecret-one\nsecret-two\n")
    path = tmp_path / "t.sqlite"
    server = await start_server(["--db", f"sqlite:///{path}", "--tokens-file", str(tokens)])
    try:
        good = await connect_peer(server.port)
        good.sendString(encode_control(Hello("node", token="secret-two")))
        await good.send([b"with token"])
        anonymous = await connect_peer(server.port)
        anonymous.sendString(b"no token")
        await anonymous.lost.addTimeout(TIMEOUT, reactor)
        assert [r.reason for r in anonymous.refusals] == [
            "a token is required: send a hello with a token first"
        ]
        assert set(sqlite_rows(path)) == {sha(b"with token")}
        good.close()
    finally:
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_stop_commits_what_was_accepted(tmp_path: Path) -> None:
    """
    Stopping the server stops listening, lets what it accepted be committed before the
    stores close, and then closes the connections of persistent clients.
    """
    path = tmp_path / "s.sqlite"
    server = await start_server(["--db", f"sqlite:///{path}"])
    persistent = await connect_peer(server.port)
    persistent.sendString(encode_control(Hello("persistent")))
    await persistent.send([b"acknowledged before the stop"])

    class OneShot(Protocol):
        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(b"%d:%s," % (len(b"last words"), b"last words"))
            self.transport.loseConnection()

    await connect(server.port, OneShot())
    ingest = server.collector.factory.ingest
    await wait_for(lambda: ingest.unsettled > 0 or sha(b"last words") in sqlite_rows(path))
    await server.service.stopService()
    await persistent.lost.addTimeout(TIMEOUT, reactor)
    assert set(sqlite_rows(path)) == {sha(b"last words"), sha(b"acknowledged before the stop")}


# -- hostile peers over real sockets -------------------------------------------------------------


class Raw(Protocol):
    """
    A peer that writes what it is told and records what happens to its connection.
    """

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.data:
            self.write(self.data)

    def write(self, data: bytes) -> None:
        assert self.transport is not None, "not connected"
        self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


def bugs(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events that log a traceback or a critical error."""
    return [e for e in events if e.get("log_failure") is not None or e.get("isError")]


@pytest_twisted.ensureDeferred
async def test_length_prefix_of_thousands_of_digits(sqlite_server: tuple[Server, Path]) -> None:
    """
    A length prefix of 5,000 digits in one segment costs its connection, with one line and no
    traceback; an honest client is acked right after.
    """
    server, _ = sqlite_server
    with capturedLogs() as events:
        hostile = await connect(server.port, Raw(b"9" * 5000 + b":x"))
        await hostile.lost.addTimeout(TIMEOUT, reactor)
        honest = await connect_peer(server.port)
        await honest.send([b"right after"]).addTimeout(TIMEOUT, reactor)
    assert bugs(events) == [] and len(drops(events)) == 1
    honest.close()


class NeverReads(Raw):
    """
    Sends the same tiny payload as fast as the server takes it, on a 4 KB receive buffer it
    never reads: its acks pile up on the server's side.
    """

    CHUNK = b"3:dup," * 10_000
    LIMIT = 200  # chunks, 12 MB in all: far more acks than the server may hold
    connection: Connection
    sent = 0
    paused = False

    def connectionMade(self) -> None:
        assert isinstance(self.transport, Connection)
        self.connection = self.transport
        handle = self.connection.getHandle()
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.connection.pauseProducing()  # read nothing, ever
        self.sent = 0
        self.connection.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.LIMIT and self.connection.connected:
            self.sent += 1
            self.connection.write(self.CHUNK)

    def stopProducing(self) -> None:
        self.paused = True


@pytest_twisted.ensureDeferred
async def test_peer_that_never_reads_its_acks_is_dropped(
    sqlite_server: tuple[Server, Path],
) -> None:
    """
    A client that floods duplicates and never reads its acks is read from no more once its
    acks back up, and dropped: what the server holds for it stays bounded, it is not served
    the rest of its flood, and an honest client is acked right after.
    """
    server, _ = sqlite_server
    factory = server.collector.factory
    held: list[int] = []
    with capturedLogs() as events:
        hostile = await connect(server.port, NeverReads())
        honest = await connect_peer(server.port)
        honest.sendString(encode_control(Hello("honest")))  # as eth-client does

        def dropped() -> bool:
            held.append(factory.buffered_bytes)
            return hostile.lost.called

        await wait_for(dropped, interval=0.02, what="the peer dropped")
        await honest.send([b"right after"]).addTimeout(TIMEOUT, reactor)
    assert bugs(events) == []
    assert [r for r in drops(events) if "acknowledgement" in r] != []
    assert max(held) <= MAX_UNREAD_ACK_BYTES + factory.max_message_bytes
    assert hostile.sent < NeverReads.LIMIT
    honest.close()


@pytest_twisted.ensureDeferred
async def test_a_flooding_client_does_not_hold_up_an_honest_one(
    sqlite_server: tuple[Server, Path],
) -> None:
    """
    A client that sends 20,000 messages at once (reading its acks) does not hold up another
    client's message for more than its own messages in flight and one transaction: the
    honest ack arrives after at most MAX_IN_FLIGHT + MAX_BATCH of the flood's acks, instead
    of waiting for the ingest's backlog to drain.
    """
    server, _ = sqlite_server
    flooder = await connect(server.port, Peer(window=FLOOD))
    flooded = flooder.send([b"flood %d" % i for i in range(FLOOD)])
    await wait_for(lambda: len(flooder.acked) > 0)
    # Connected only now and closed once acknowledged: the server's idle timeout (2 s) drops
    # a client that says nothing for as long as the flood may take on a loaded machine.
    honest = await connect_peer(server.port)
    with capturedLogs() as events:
        before, start = len(flooder.acked), reactor.seconds()
        await honest.send([b"honest"]).addTimeout(TIMEOUT, reactor)
        ahead, seconds = len(flooder.acked) - before, reactor.seconds() - start
        honest.close()
        await flooded.addTimeout(TIMEOUT, reactor)
    assert bugs(events) == [] and drops(events) == []
    assert ahead <= MAX_IN_FLIGHT + MAX_BATCH, (ahead, seconds)
    flooder.close()


@pytest_twisted.ensureDeferred
async def test_trickling_hello_is_cut_at_the_deadline(tmp_path: Path) -> None:
    """
    With tokens required, a peer trickling a byte every 0.1 s is dropped once the hello
    timeout has passed, although it never fell silent; a client with a token is served.
    """
    tokens = tmp_path / "tokens"
    tokens.write_text("secret\n")
    path = tmp_path / "t.sqlite"
    server = await start_server(
        ["--db", f"sqlite:///{path}", "--tokens-file", str(tokens), "--hello-timeout", "1"]
    )
    endless = iter(b"60000:" + encode_control(Hello("x" * 59_990)))
    try:
        with capturedLogs() as events:
            trickler = await connect(server.port, Raw())
            started = reactor.seconds()
            trickle = LoopingCall(lambda: trickler.write(bytes([next(endless)])))
            trickle.clock = reactor
            trickle.start(0.1)
            await trickler.lost.addTimeout(TIMEOUT, reactor)
            trickle.stop()
            assert reactor.seconds() - started >= 1
            good = await connect_peer(server.port)
            good.sendString(encode_control(Hello("node", token="secret")))
            await good.send([b"with token"]).addTimeout(TIMEOUT, reactor)
        assert bugs(events) == []
        assert [r for r in drops(events) if "no hello within 1 seconds" in r] != []
        good.close()
    finally:
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_connections_beyond_the_cap_are_closed(tmp_path: Path) -> None:
    """
    With --max-connections 3, a fourth connection is closed at once while three clients are
    served; once one leaves, a new one is accepted and acked.
    """
    path = tmp_path / "c.sqlite"
    server = await start_server(["--db", f"sqlite:///{path}", "--max-connections", "3"])
    try:
        with capturedLogs() as events:
            peers = [await connect_peer(server.port) for _ in range(3)]
            for i, peer in enumerate(peers):
                peer.sendString(encode_control(Hello(f"node-{i}")))
                await peer.send([b"served %d" % i]).addTimeout(TIMEOUT, reactor)
            extra = await connect(server.port, Raw())
            await extra.lost.addTimeout(TIMEOUT, reactor)
            await peers[0].send([b"still served"]).addTimeout(TIMEOUT, reactor)
            peers[0].close()
            await peers[0].lost
            await wait_for(lambda: len(server.collector.factory.connections) == 2)
            late = await connect_peer(server.port)
            await late.send([b"late"]).addTimeout(TIMEOUT, reactor)
        assert bugs(events) == []
        warned = [e for e in events if "the most allowed" in e.get("log_format", "")]
        assert len(warned) == 1
        for peer in [*peers[1:], late]:
            peer.close()
    finally:
        await server.service.stopService()


@dataclass
class Backend:
    """eth-server's --db on SQLite or MySQL, and a way to read back what it stored."""

    args: list[str]
    environ: dict[str, str]
    create: Callable[[str], object]
    """Run one statement in the database before the server starts."""
    hashes: Callable[[], set[str]]


@pytest.fixture(params=["sqlite", "mysql"])
def backend(request: Any, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "b.sqlite"

        def create(statement: str) -> None:
            with sqlite3.connect(path) as db:
                db.execute(statement.replace("AUTO_INCREMENT", "AUTOINCREMENT"))

        return Backend(["--db", f"sqlite:///{path}"], {}, create, lambda: set(sqlite_rows(path)))
    db: MySQLDatabase = request.getfixturevalue("mysql_db")
    return Backend(
        ["--db", db.url],
        {"ETH_MYSQL_PASSWORD": db.password},
        db.query,
        lambda: {h for (h,) in db.query("SELECT hash FROM ethereum_data")},
    )


@pytest_twisted.ensureDeferred
async def test_a_message_the_store_rejects_costs_only_its_connection(backend: Backend) -> None:
    """
    A payload the database refuses (here a CHECK constraint of an existing table) arriving in
    the same group as an honest client's message costs only its own connection, logged once;
    the honest client is acknowledged right after, and its messages are stored.
    """
    await deferToThread(
        backend.create,
        "CREATE TABLE ethereum_data (id INTEGER PRIMARY KEY AUTO_INCREMENT,"
        " hash VARCHAR(64) NOT NULL UNIQUE, payload TEXT CHECK (payload NOT LIKE '%poison%'))",
    )
    server = await start_server(backend.args, backend.environ)
    try:
        honest = await connect_peer(server.port)
        await honest.send([b"before"]).addTimeout(TIMEOUT, reactor)
        hostile = await connect_peer(server.port)
        with capturedLogs() as events:
            hostile.sendString(b"a poison pill")
            await honest.send([b"beside it"]).addTimeout(TIMEOUT, reactor)
            await hostile.lost.addTimeout(TIMEOUT, reactor)
            await honest.send([b"after"]).addTimeout(5, reactor)
        assert bugs(events) == []
        reasons = drops(events)
        assert len(reasons) == 1 and "refused" in reasons[0]
        assert hostile.acked == [] and not honest.lost.called
        stored = await deferToThread(backend.hashes)
        assert stored == {sha(b"before"), sha(b"beside it"), sha(b"after")}
        honest.close()
    finally:
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_hello_name_that_cannot_be_stored_costs_only_its_connection(
    backend: Backend,
) -> None:
    """
    A hello naming the client with a lone surrogate (a JSON escape) costs that connection at
    the hello, before any of its payloads reaches the store; an honest client is acknowledged
    right after.
    """
    server = await start_server(backend.args, backend.environ)
    try:
        honest = await connect_peer(server.port)
        await honest.send([b"before"]).addTimeout(TIMEOUT, reactor)
        hostile = await connect_peer(server.port)
        with capturedLogs() as events:
            hostile.sendString(b'\xff{"type":"hello","name":"node-\\ud800"}')
            hostile.sendString(b"from a nameless one")
            await hostile.lost.addTimeout(TIMEOUT, reactor)
            await honest.send([b"after"]).addTimeout(5, reactor)
        assert bugs(events) == []
        reasons = drops(events)
        assert len(reasons) == 1 and "client name" in reasons[0]
        assert await deferToThread(backend.hashes) == {sha(b"before"), sha(b"after")}
        honest.close()
    finally:
        await server.service.stopService()
