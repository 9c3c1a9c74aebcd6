"""
Who may be whom: tokens bind names (C{--tokens-file} lines of C{TOKEN NAME}), and a name held
by a live connection is not taken by another, but a client connecting again takes over its
own.  Real eth-servers on loopback ports (127.0.0.1 and ::1), real connections.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from ethtwisted.frames import Hello, encode_control
from ethtwisted.protocol import Block, block_json, payload_hash
from ethtwisted.server.factory import ClientTokens, ServerFactory
from ethtwisted.server.ingest import Ingest
from ethtwisted.server_tap import Options
from ethtwisted.storage.chains import chain_reader
from ethtwisted.storage.memory_store import MemoryStore
from tests.blocks import block
from tests.e2e import drops, sqlite_rows
from tests.helpers import Peer, Server, connect, start_server, the_reactor, wait_for
from tests.wire import netstring

TOKENS = "# the fleet\ntok-alice alice\ntok-mallory mallory\ntok-any\ntok-zurich Zürich 1\n"


class Said(Peer):
    """A peer whose hello carries a token."""

    def __init__(self, name: str, token: str | None = None) -> None:
        super().__init__(None)
        self.hello = Hello(name, token)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.send_control(self.hello)


@pytest_twisted.async_yield_fixture
async def servers() -> AsyncIterator[list[Server]]:
    """Servers the test starts; all stopped afterwards."""
    made: list[Server] = []
    yield made
    for server in made:
        await server.stop()


async def started(made: list[Server], tmp_path: Path, *args: str) -> tuple[Server, Path]:
    db = tmp_path / "t.sqlite"
    server = await start_server(["--db", f"sqlite:///{db}", *args])
    made.append(server)
    return server, db


async def refused(peer: Peer) -> str:
    """The reason of the refusal C{peer} gets before its connection is closed."""
    await peer.lost.addTimeout(10, the_reactor())
    assert len(peer.refusals) == 1, peer.refusals
    return peer.refusals[0].reason


@pytest_twisted.ensureDeferred
async def test_a_token_binds_its_name(servers: list[Server], tmp_path: Path) -> None:
    """
    A token bound to a name may say hello only as that name; another client's token, bound to
    its own name or to none, is refused that name with a refusal frame, before any of its
    payloads is stored; a token alone on its line may use any name no token binds.
    """
    (tmp_path / "tokens").write_text(TOKENS)
    server, db = await started(servers, tmp_path, "--tokens-file", str(tmp_path / "tokens"))
    alice = await connect(server.port, Said("alice", "tok-alice"))
    await alice.send([b"from alice"])
    with capturedLogs() as events:
        for token in ("tok-mallory", "tok-any"):
            mallory = await connect(server.port, Said("alice", token))
            mallory.sendString(b"forged by " + token.encode())
            assert await refused(mallory) == "client 'alice': this token may not use that name"
    assert len(drops(events)) == 2
    carol = await connect(server.port, Said("carol", "tok-any"))
    zurich = await connect(server.port, Said("Zürich 1", "tok-zurich"))
    await carol.send([b"from carol"])
    await zurich.send([b"from zurich"])
    await alice.send([b"from alice again"])
    sent = (b"from alice", b"from carol", b"from zurich", b"from alice again")
    assert set(sqlite_rows(db)) == {payload_hash(p) for p in sent}
    store = server.collector.factory.ingest.store
    clients = {c.client: c.messages for c in await store.clients(10)}  # type: ignore[attr-defined]
    assert clients == {"alice": 2, "carol": 1, "Zürich 1": 1}
    for peer in (alice, carol, zurich):
        peer.close()


async def connect6(port: int, peer: Peer) -> Peer:
    endpoint = TCP6ClientEndpoint(cast(Any, the_reactor()), "::1", port, timeout=5)
    return cast(Peer, await connectProtocol(endpoint, peer))


@pytest_twisted.ensureDeferred
async def test_a_live_name_is_not_taken_from_another_address(
    servers: list[Server], tmp_path: Path
) -> None:
    """
    Without tokens, a hello naming a client that a live connection from another address is
    (here ::1 against 127.0.0.1) is refused, saying the name is in use; the live one goes on
    undisturbed; once it has gone, the name is free for whoever says it.
    """
    server, db = await started(servers, tmp_path, "--listen", "tcp:0:interface=127.0.0.1",
                               "--listen", "tcp6:0:interface=\\:\\:1")  # fmt: skip
    port6 = cast(Any, server.collector.ports[1].getHost()).port
    honest = await connect(server.port, Peer("honest-1"))
    await honest.send([b"honest block"])
    impostor = await connect6(port6, Peer("honest-1"))
    impostor.sendString(b"impostor block")
    assert (
        await refused(impostor) == "client 'honest-1': that name is in use by another connection"
    )
    await honest.send([b"honest again"])
    assert not honest.lost.called
    assert set(sqlite_rows(db)) == {payload_hash(b"honest block"), payload_hash(b"honest again")}
    honest.close()
    factory = server.collector.factory
    await wait_for(lambda: "honest-1" not in factory.named, what="the name given up")
    later = await connect6(port6, Peer("honest-1"))
    await later.send([b"after the honest one left"])
    later.close()


@pytest.mark.parametrize("token", [None, "tok-alice"])
@pytest_twisted.ensureDeferred
async def test_the_same_client_connecting_again_takes_its_name_over(
    servers: list[Server], tmp_path: Path, token: str | None
) -> None:
    """
    A client whose old connection still looks alive (a network loss the server has not
    noticed) connects again: with the same token (or, without tokens, from the same address)
    the new connection takes the name, and the old one is closed, said once.
    """
    (tmp_path / "tokens").write_text(TOKENS)
    args = ["--tokens-file", str(tmp_path / "tokens")] if token else []
    server, _ = await started(servers, tmp_path, *args)
    old = await connect(server.port, Said("alice", token))
    await old.send([b"before the loss"])
    with capturedLogs() as events:
        new = await connect(server.port, Said("alice", token))
        await new.send([b"after the loss"])
        await old.lost.addTimeout(10, the_reactor())
    assert old.refusals == [] and new.refusals == []
    reasons = drops(events)
    assert len(reasons) == 1 and reasons[0].startswith("client 'alice' connected again, from")
    assert server.collector.factory.named["alice"].hello == new.hello
    new.close()


def test_the_tokens_file_binds_names_and_old_files_still_work(tmp_path: Path) -> None:
    """
    A line of C{TOKEN NAME} binds the rest of the line (spaces inside it kept) to the token; a
    token alone, as every line of an older file, may use any name no line binds; a token may
    be listed with several names.  A name that breaks the rule for names is a one-line usage
    error naming the entry by its position, never the token.
    """
    tokens = ClientTokens.parse(["tok-a alice", "tok-any", "tok-z   Zürich 1", "tok-a bob"])
    assert tokens.problem("tok-a", "alice") is None and tokens.problem("tok-a", "bob") is None
    assert tokens.problem("tok-z", "Zürich 1") is None
    assert tokens.problem("tok-any", "carol") is None
    assert tokens.problem("tok-any", "alice") == "this token may not use that name"
    assert tokens.problem("tok-a", "carol") == "this token may not use that name"
    assert tokens.problem("tok-b", "carol") == "missing or invalid token"
    assert tokens.problem(None, "carol") == "missing or invalid token"
    older = ClientTokens.parse(["secret-one", "secret-two"])
    assert older.problem("secret-two", "anything at all") is None

    bad = tmp_path / "tokens"
    bad.write_text("tok-fine alice\n# a comment\nsecret-token-xyz bad\u202ename\n")
    options = Options()
    options.environ = {}
    with pytest.raises(SystemExit) as raised:
        options.parseOptions(["--tokens-file", str(bad)])
    error = str(raised.value)
    assert "--tokens-file: token 2: the name must not contain invisible" in error
    assert "secret-token-xyz" not in error and "\n" not in error


# -- a hostile client among honest ones: generated lies about names and blocks -----------------

HONEST = "honest"
BOOK = ClientTokens.parse(["tok-honest honest", "tok-mallory mallory", "tok-any"])
HONEST_BLOCKS = [block(1, n, fork=0xABC) for n in range(1, 4)]


def _spoiled(name: str, how: int, where: int) -> str:
    """C{name} made to look like itself: an invisible or other character in it, decomposed."""
    where %= len(name) + 1
    if how == 0:
        return name
    if how == 5:
        return name.replace("o", "o\u0308")  # a diaeresis, decomposed
    extra = ["\u200b", "\u202e", "\u00a0", "\u3164"][how - 1]
    return name[:where] + extra + name[where:]


def _variant(block_: Block, how: int) -> bytes:
    """The honest block in JSON that is not its canonical message (or the message itself)."""
    canonical = block_json(block_)
    if how == 0:
        return canonical
    if how in (1, 2):
        value = block_.hash if how == 1 else block_.parent_hash
        return canonical.replace(value.encode(), b"0x" + value[2:].upper().encode())
    return json.dumps(json.loads(canonical)).encode()  # with spaces


lies = st.tuples(
    st.sampled_from(["honest", "mallory", "carol"]),
    st.integers(0, 5),
    st.integers(0, 10),
    st.sampled_from([None, "tok-mallory", "tok-any", "tok-wrong"]),
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), max_size=4),
)
"""A hostile connection: the name it claims (spoiled how and where), its token, and which
honest block it sends again in which spelling."""


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


@pytest.mark.property
@given(st.lists(lies, min_size=1, max_size=5), st.booleans())
def test_a_hostile_client_cannot_speak_for_an_honest_one(
    hostile: list[tuple[str, int, int, str | None, list[tuple[int, int]]]], tokens: bool
) -> None:
    """
    Whatever hellos a hostile client says (the honest client's name as it is, spoiled with an
    invisible character or decomposed, another name; a wrong, unbound or other client's token,
    or none) and whatever spellings of the honest blocks it sends after, from another
    address: the honest client keeps its connection and its name, its record (messages, last
    block, address) and the chain (head, forks, reorgs) are what they were.
    """
    clock, store = Clock(), MemoryStore()
    factory = ServerFactory(
        Ingest(store, None, clock), clock, 65536, 60.0, BOOK if tokens else None
    )

    def connection(host: str) -> tuple[Any, StringTransport]:
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 4000))
        protocol.makeConnection(transport)
        return protocol, transport

    honest, honest_transport = connection("127.0.0.1")
    hello = Hello(HONEST, "tok-honest" if tokens else None)
    honest.dataReceived(netstring(encode_control(hello)))
    for b in HONEST_BLOCKS:
        honest.dataReceived(netstring(block_json(b)))
    clock.advance(1)
    chains = chain_reader(store)
    before = (
        result(store.clients(10, names=[HONEST])),
        result(chains.chain(1, 1, 4, finalized=None)),
    )
    assert before[0] and before[0][0].messages == 3

    for name, how, where, token, sends in hostile:
        liar, _ = connection("127.0.0.9")
        data = netstring(encode_control(Hello(_spoiled(name, how, where), token)))
        data += b"".join(netstring(_variant(HONEST_BLOCKS[n], spelling)) for n, spelling in sends)
        liar.dataReceived(data)
        clock.advance(1)
    after = (
        result(store.clients(10, names=[HONEST])),
        result(chains.chain(1, 1, 4, finalized=None)),
    )
    assert after == before
    assert not honest_transport.disconnecting and factory.named[HONEST] is honest
    for protocol in list(factory.connections):
        protocol.transport.loseConnection()
        protocol.connectionLost(connectionDone)
    clock.advance(60)
