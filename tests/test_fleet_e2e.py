"""
The fleet view for real: anvil nodes, eth-clients and eth-servers on loopback, thresholds of
seconds, and a webhook receiver (twisted.web).  A client whose node stops answering is behind,
then stalled, then current again; a client whose node has blocks of its own is on a fork; a
client process stopped or killed is silent; two servers on one MySQL database record and tell
each change once.  Events are read where users get them: at the receiver, and in the store.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import connectionDone
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols import portforward
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ethtwisted import client_tap
from ethtwisted.client import EthClient
from ethtwisted.records import StateEvent
from ethtwisted.server.clock import MAX_OUTSTANDING
from ethtwisted.server.fleet import FleetService
from ethtwisted.server.webhooks import WebhookService
from ethtwisted.states import RECONNECT_GRACE, State
from ethtwisted.storage.sql_pool import parse_db_url
from ethtwisted.storage.sql_store import SQLStore
from tests.helpers import TIMEOUT, Server, start_server, wait_for
from tests.services import Anvil, AnvilFactory, MySQLDatabase
from tests.twistd import twistd_client

BEHIND_BLOCKS, BEHIND_SECONDS, STALL_SECONDS, SILENT_SECONDS, FORK_SECONDS = 2, 2.0, 4.0, 6.0, 2.0
THRESHOLDS = [
    "--behind-blocks", str(BEHIND_BLOCKS), "--behind-seconds", f"{BEHIND_SECONDS:g}",
    "--stall-seconds", f"{STALL_SECONDS:g}", "--silent-seconds", f"{SILENT_SECONDS:g}",
    "--fork-seconds", f"{FORK_SECONDS:g}",
]  # fmt: skip
FIELDS = {"id", "client", "chain_id", "state", "event", "head", "best_head", "since", "at", "text"}
ANVIL_CHAIN = 31337

Change = tuple[str, str, str]
"""(client, state, event) of an event."""


def changes(events: Sequence[Mapping[str, Any]]) -> list[Change]:
    return [(e["client"], e["state"], e["event"]) for e in events]


# -- a webhook receiver -----------------------------------------------------------------------


class Hooks(Resource):
    """
    A webhook receiver: keeps each event POSTed to it, in order of arrival, and fires the
    Deferreds of L{got} once the events they wait for are among them.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self.url = ""
        self._waiting: list[tuple[Sequence[Change], Deferred[None]]] = []

    def _arrived(self, wanted: Sequence[Change]) -> bool:
        return not Counter(wanted) - Counter(changes(self.events))

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.events.append(json.loads(request.content.read()))
        waiting, self._waiting = self._waiting, []
        for wanted, d in waiting:
            if self._arrived(wanted):
                reactor.callLater(0, d.callback, None)  # the test goes on after this request
            else:
                self._waiting.append((wanted, d))
        return b"ok"

    async def got(self, *wanted: Change, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """
        Wait (at most C{timeout} seconds) until each of C{wanted} has arrived, as many times
        as it is listed; return the events, the n-th arrival of a change for its n-th listing.
        """
        d: Deferred[None] = Deferred()
        if self._arrived(wanted):
            d.callback(None)
        else:
            self._waiting.append((wanted, d))

        def late(failure: Failure) -> None:
            failure.trap(defer.TimeoutError)
            raise AssertionError(
                f"not received within {timeout:g} s: {wanted}; received: {changes(self.events)}"
            )

        await d.addTimeout(timeout, reactor).addErrback(late)
        arrivals: dict[Change, list[dict[str, Any]]] = {}
        for event in self.events:
            arrivals.setdefault(changes([event])[0], []).append(event)
        return [arrivals[w].pop(0) for w in wanted]


# -- a TCP proxy in front of a node -----------------------------------------------------------


class _Forwarding(portforward.ProxyServer):
    """One connection through L{NodeProxy}, known to it while open."""

    factory: _ProxyFactory

    def connectionMade(self) -> None:
        self.factory.open.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.open.discard(self)
        super().connectionLost(reason)


class _ProxyFactory(portforward.ProxyFactory):
    protocol = _Forwarding
    noisy = False

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.open: set[_Forwarding] = set()


class NodeProxy:
    """
    A TCP proxy on a loopback port in front of a node's port (anvil's HTTP and WebSocket):
    L{stop} closes it and every connection through it (the node, seen through it, no longer
    answers), L{start} opens it again on the same port.
    """

    def __init__(self, upstream: int) -> None:
        self.factory = _ProxyFactory("127.0.0.1", upstream)
        self.port = 0
        self.listening: IListeningPort | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        endpoint = TCP4ServerEndpoint(cast(Any, reactor), self.port, interface="127.0.0.1")
        self.listening = await endpoint.listen(self.factory)
        address = self.listening.getHost()
        assert isinstance(address, IPv4Address)
        self.port = address.port

    async def stop(self) -> None:
        if self.listening is not None:
            await maybeDeferred(self.listening.stopListening)
            self.listening = None
        for forwarding in list(self.factory.open):
            for protocol in (forwarding, forwarding.peer):
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.abortConnection()  # type: ignore[attr-defined]


# -- what a test runs, stopped at its end -----------------------------------------------------


@dataclass
class Fleet:
    """
    The servers, clients and proxies a test starts, all stopped at its end (clients first);
    the webhook receiver every server is given; and a store of the servers' database, opened
    on it to read the fleet view as it is recorded.
    """

    hooks: Hooks
    db: str = ""
    environ: dict[str, str] = field(default_factory=dict)
    servers: list[Server] = field(default_factory=list)
    clients: list[EthClient] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    proxies: list[NodeProxy] = field(default_factory=list)
    observer: SQLStore | None = None

    async def server(self) -> Server:
        """An eth-server on the database, with the thresholds and the webhook."""
        args = ["--db", self.db, *THRESHOLDS, "--webhook", self.hooks.url]
        server = await start_server(args, self.environ)
        self.servers.append(server)
        if self.observer is None:
            url = parse_db_url(self.db).with_password(self.environ.get("ETH_MYSQL_PASSWORD"))
            self.observer = SQLStore(url, reactor, read_only=True)
            await self.observer.start()
        return server

    def client(self, node: str, server: Server, name: str, *args: str) -> EthClient:
        """An eth-client in this process named C{name}, following C{node}."""
        options = client_tap.Options()
        options.environ = {}
        options.parseOptions(["--node", node, "--server", server.client_endpoint, "--name",
                              name, "--interval", "0.1", *args])  # fmt: skip
        client = client_tap.makeService(options, reactor)
        assert isinstance(client, EthClient)
        client.startService()
        self.clients.append(client)
        return client

    @property
    def store(self) -> SQLStore:
        assert self.observer is not None, "no server started"
        return self.observer

    async def query(self, statement: str, *args: object) -> list[tuple[Any, ...]]:
        """The rows of C{statement}, with C{?} for each of C{args}."""
        placeholder = self.store.dialect.placeholder
        rows = await self.store.pool.runQuery(statement.replace("?", placeholder), args)
        return [tuple(r) for r in rows]

    async def states(self) -> dict[str, dict[str, State]]:
        return await self.store.fleet.states()

    async def recorded(self) -> list[StateEvent]:
        """Every event in C{eth_state_events}, oldest first."""
        return list(reversed(await self.store.fleet.events(None, None, 1000)))

    async def heads(self) -> dict[str, int]:
        """Each client's last reported block, as stored."""
        rows = await self.query("SELECT client, last_block FROM eth_clients")
        return {c: int(n) for c, n in rows if n is not None}

    async def decided_after(self, moment: float) -> None:
        """Wait until some server has decided the states at a moment after C{moment}."""

        async def later() -> bool:
            ((decided,),) = await self.query("SELECT decided FROM eth_fleet")
            return float(decided) > moment

        await wait_for(later, what=f"a decision after {moment}")

    async def told(self) -> None:
        """Wait until every server's webhooks have delivered all they were given."""

        def delivered() -> bool:
            for server in self.servers:
                hooks = server.service.getServiceNamed("webhooks")
                assert isinstance(hooks, WebhookService)
                if any(t.queue or t.sending is not None for t in hooks.targets):
                    return False
            return True

        await wait_for(delivered, what="the webhooks delivered")

    async def stop(self) -> None:
        for client in self.clients:
            if client.running:
                await client.stopService()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(TIMEOUT)
            if process.stdout is not None:
                process.stdout.close()
        for server in self.servers:
            if server.service.running:
                await server.stop()
        for proxy in self.proxies:
            await proxy.stop()
        if self.observer is not None:
            await self.observer.close()


@pytest_twisted.async_yield_fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """
    A webhook receiver on a free loopback port, and what the test starts, on a SQLite file
    unless the test names another database; all stopped at the end.
    """
    hooks = Hooks()
    site = Site(hooks)
    site.noisy = False
    endpoint = TCP4ServerEndpoint(cast(Any, reactor), 0, interface="127.0.0.1")
    listening = await endpoint.listen(site)
    address = listening.getHost()
    assert isinstance(address, IPv4Address)
    hooks.url = f"http://127.0.0.1:{address.port}/hook"
    running = Fleet(hooks, db=f"sqlite:///{tmp_path / 'eth.sqlite'}")
    try:
        yield running
    finally:
        await running.stop()
        await maybeDeferred(listening.stopListening)


async def heads_stored(fleet: Fleet, expected: Mapping[str, int]) -> None:
    async def stored() -> bool:
        heads = await fleet.heads()
        return all(heads.get(c) == n for c, n in expected.items())

    await wait_for(stored, what=lambda: f"the heads {dict(expected)} stored")


async def watched(fleet: Fleet, *names: str) -> None:
    """Wait until a decision has seen each of C{names} held by a server, in no state."""

    async def held() -> bool:
        states = await fleet.states()
        return all(states.get(n) == {} for n in names)

    await wait_for(held, what=f"{names} watched, in no state")


def check_fields(event: Mapping[str, Any]) -> None:
    assert set(event) == FIELDS, event
    assert event["chain_id"] == ANVIL_CHAIN
    assert event["client"] in event["text"] and event["state"] in event["text"]
    assert event["since"] <= event["at"]


async def assert_told_once(fleet: Fleet, expected: Sequence[Change]) -> list[StateEvent]:
    """
    Once every webhook has delivered all it had, the receiver holds exactly C{expected}, in
    order, and those are exactly the events recorded, with the same fields.
    """
    await fleet.told()
    recorded = await fleet.recorded()
    assert changes(fleet.hooks.events) == list(expected), "\n".join(map(str, fleet.hooks.events))
    assert [asdict(e) for e in recorded] == fleet.hooks.events
    return recorded


# -- the tests --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_node_that_stops_answering_makes_its_client_behind_then_stalled(
    anvil: Anvil, fleet: Fleet
) -> None:
    """
    Two clients on one anvil node, one of them through a proxy: while the proxy is closed and
    the other goes on, the first is C{behind} once the fleet has had 3 more blocks for over
    2 s, then C{stalled} 4 s after its last head; once the proxy is open again it catches up
    and leaves both.  The receiver gets each of these four events once, in order, with every
    field, and they are what the store recorded; the other client is never in a state.
    """
    server = await fleet.server()
    proxy = NodeProxy(anvil.port)
    fleet.proxies.append(proxy)
    await proxy.start()
    fleet.client(proxy.url, server, "lagging")
    fleet.client(anvil.ipc_path, server, "steady")
    await watched(fleet, "lagging", "steady")
    # Its last head just before the proxy closes: stalled (4 s after it) comes after behind
    # (2 s after the fleet's next 3 blocks).
    head = anvil.mine(2)
    await heads_stored(fleet, {"lagging": head, "steady": head})
    ((last_head_at,),) = await fleet.query(
        "SELECT last_seen FROM eth_clients WHERE client = ?", "lagging"
    )

    await proxy.stop()
    best = anvil.mine(BEHIND_BLOCKS + 1)
    behind, stalled = await fleet.hooks.got(
        ("lagging", "behind", "entered"), ("lagging", "stalled", "entered")
    )
    ((reached,),) = await fleet.query(
        "SELECT MIN(first_seen) FROM eth_blocks WHERE number = ?", best
    )
    await proxy.start()
    left = await fleet.hooks.got(("lagging", "behind", "left"), ("lagging", "stalled", "left"))
    await fleet.decided_after(left[-1]["at"])

    recorded = await assert_told_once(fleet, [
        ("lagging", "behind", "entered"), ("lagging", "stalled", "entered"),
        ("lagging", "behind", "left"), ("lagging", "stalled", "left"),
    ])  # fmt: skip
    for event in fleet.hooks.events:
        check_fields(event)
    assert (behind["head"], behind["best_head"], behind["since"]) == (head, best, reached)
    assert behind["at"] - behind["since"] > BEHIND_SECONDS
    assert (stalled["head"], stalled["best_head"], stalled["since"]) == (head, best, last_head_at)
    assert stalled["at"] - stalled["since"] > STALL_SECONDS
    for event, entered in zip(left, (behind, stalled), strict=True):
        assert event["since"] == entered["since"]
        assert head < event["head"] <= best and event["best_head"] == best
        assert event["at"] > stalled["at"]
    assert [e.id for e in recorded] == sorted(e.id for e in recorded)
    assert await fleet.states() == {"lagging": {}, "steady": {}}


@pytest_twisted.ensureDeferred
async def test_a_node_with_blocks_of_its_own_makes_its_client_fork(
    anvil_factory: AnvilFactory, fleet: Fleet
) -> None:
    """
    Two clients on one anvil node and one on another node of the same chain id but its own
    blocks (another genesis), all at the same heights: the lone one enters C{fork} once it has
    reported other blocks than the majority's for over 2 s; the majority's clients never do,
    nor is anyone behind or stalled.
    """
    server = await fleet.server()
    a, b = anvil_factory(), anvil_factory("--timestamp", "1700000000")
    assert a.rpc("eth_chainId") == b.rpc("eth_chainId")
    fleet.client(a.ipc_path, server, "a1")
    fleet.client(a.ws_url, server, "a2")
    fleet.client(b.ipc_path, server, "b1")
    head = a.mine(2)
    assert b.mine(2) == head
    assert (
        a.rpc("eth_getBlockByNumber", hex(head), False)["hash"]
        != b.rpc("eth_getBlockByNumber", hex(head), False)["hash"]
    )
    await heads_stored(fleet, {"a1": head, "a2": head, "b1": head})
    ((last_sighting,),) = await fleet.query("SELECT MAX(seen_at_ms) / 1000 FROM eth_sightings")
    (fork,) = await fleet.hooks.got(("b1", "fork", "entered"))
    # Any fork of a1 or a2 would have begun by now: their blocks are older than this.
    await fleet.decided_after(float(last_sighting) + FORK_SECONDS + 1)

    await assert_told_once(fleet, [("b1", "fork", "entered")])
    check_fields(fork)
    assert fork["head"] == fork["best_head"] == head
    assert fork["at"] - fork["since"] > FORK_SECONDS
    states = await fleet.states()
    assert states == {"a1": {}, "a2": {}, "b1": {"fork": states["b1"]["fork"]}}
    assert states["b1"]["fork"].since == fork["since"]


@pytest_twisted.ensureDeferred
async def test_a_client_process_stopped_then_killed_is_silent(
    anvil: Anvil, fleet: Fleet, tmp_path: Path
) -> None:
    """
    C{twistd eth-client} stopped (SIGSTOP) past more pings than the server awaits: once
    nothing has been heard from it for 6 s, it is C{silent} since its last frame; continued
    (SIGCONT), it answers every ping at once, keeps its connection and is no longer silent.
    Killed (SIGKILL), it is silent again once its connection has been gone for the reconnect
    grace.  Each event is told once; the client beside it stays current throughout.
    """
    server = await fleet.server()
    fleet.client(anvil.ipc_path, server, "steady")
    log = tmp_path / "paused.log"
    process = twistd_client(log, "--node", anvil.ipc_path, "--server", server.client_endpoint,
                            "--name", "paused", "--interval", "0.1")  # fmt: skip
    fleet.processes.append(process)
    head = anvil.mine()
    await heads_stored(fleet, {"paused": head, "steady": head})
    await watched(fleet, "paused", "steady")
    connections = server.collector.factory.connections
    (connection,) = [c for c in connections if c.hello is not None and c.hello.name == "paused"]

    pings = connection.sightings.pings_sent
    process.send_signal(signal.SIGSTOP)
    (silent,) = await fleet.hooks.got(("paused", "silent", "entered"))
    assert silent["since"] == connection.last_heard  # nothing heard since
    await wait_for(
        lambda: connection.sightings.pings_sent > pings + MAX_OUTSTANDING,
        what="pings left unanswered",
    )
    continued_at = reactor.seconds()
    process.send_signal(signal.SIGCONT)
    (back,) = await fleet.hooks.got(("paused", "silent", "left"))
    assert connection in connections and connection.dropped is None

    process.send_signal(signal.SIGKILL)
    process.wait(TIMEOUT)
    killed_at = reactor.seconds()
    *_, gone = await fleet.hooks.got(
        ("paused", "silent", "entered"), ("paused", "silent", "left"),
        ("paused", "silent", "entered"),
    )  # fmt: skip
    await fleet.decided_after(gone["at"] + 1)
    await assert_told_once(fleet, [
        ("paused", "silent", "entered"), ("paused", "silent", "left"),
        ("paused", "silent", "entered"),
    ])  # fmt: skip
    for event in (silent, back, gone):
        check_fields(event)
        assert event["head"] == event["best_head"] == head
    assert silent["at"] - silent["since"] > SILENT_SECONDS
    assert back["since"] == silent["since"]
    assert continued_at < gone["since"] <= killed_at < gone["at"] - RECONNECT_GRACE
    states = await fleet.states()
    assert states == {"paused": {"silent": states["paused"]["silent"]}, "steady": {}}
    assert "Traceback" not in log.read_text()


@pytest_twisted.ensureDeferred
async def test_two_servers_on_one_database_record_and_tell_each_change_once(
    anvil: Anvil, fleet: Fleet, mysql_db: MySQLDatabase
) -> None:
    """
    Two eth-servers on one MySQL database, both deciding every second and both with the same
    webhook, a client on each: the first server's client stops, so it is C{silent}, and comes
    back on the second server, so it is no longer.  Each change is recorded once, delivered
    to the receiver once in all and logged once in all; both servers took part.
    """
    fleet.db, fleet.environ = mysql_db.url, {"ETH_MYSQL_PASSWORD": mysql_db.password}
    with capturedLogs() as logged:
        one, two = await fleet.server(), await fleet.server()
        first = fleet.client(anvil.ipc_path, one, "roaming")
        fleet.client(anvil.ws_url, two, "staying")
        head = anvil.mine()
        await heads_stored(fleet, {"roaming": head, "staying": head})
        await watched(fleet, "roaming", "staying")
        await first.stopService()
        (silent,) = await fleet.hooks.got(("roaming", "silent", "entered"))
        fleet.client(anvil.ipc_path, two, "roaming")
        (back,) = await fleet.hooks.got(("roaming", "silent", "left"))
        await fleet.decided_after(back["at"] + 1)
        recorded = await assert_told_once(
            fleet, [("roaming", "silent", "entered"), ("roaming", "silent", "left")]
        )
    for event in (silent, back):
        check_fields(event)
    assert back["since"] == silent["since"]
    texts = [formatEvent(e) for e in logged]
    for change in recorded:
        assert texts.count(change.text) == 1, change.text
    deciders = {
        cast(FleetService, s.service.getServiceNamed("fleet")).server for s in fleet.servers
    }
    presence = await fleet.query("SELECT client, server FROM eth_presence")
    assert {server for _, server in presence} == deciders
    assert await fleet.states() == {"roaming": {}, "staying": {}}
