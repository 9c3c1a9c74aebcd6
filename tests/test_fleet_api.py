"""
The fleet view in the stats API: C{/api/v1/events}, the states in the clients' entries and the
C{ethtwisted_client_state} gauge, over real stores (SQLite, and MariaDB where the SQL differs)
whose states are decided through the store's own fleet view at chosen times; then over real
sockets through eth-server and eth-stats.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from ethtwisted.frames import Status, SyncProgress
from ethtwisted.interfaces import IFleet
from ethtwisted.protocol import payload_hash
from ethtwisted.records import Received, StateEvent, StatusReport
from ethtwisted.server.webhooks import event_body
from ethtwisted.states import STATES, State, Thresholds
from ethtwisted.storage.memory_store import MemoryStore
from ethtwisted.storage.sql_store import SQLStore
from ethtwisted.web.reads import Reads
from ethtwisted.web.site import StatsRoot
from tests.blocks import T0
from tests.fleet_reports import Opener, T, received, started
from tests.helpers import connect_peer
from tests.web import TOKEN, Client, above_debug, metric, open_sqlite, start_stats, stats_server


def site(store: SQLStore, fleet: IFleet | None = None) -> Client:
    """The stats site over C{store} and its fleet view (or C{fleet})."""
    return Client(StatsRoot(Reads(reactor, store, store, fleet=fleet or store.fleet)))


def bodies(events: list[StateEvent]) -> list[Any]:
    """The webhook bodies of C{events}, as JSON values."""
    return [json.loads(event_body(e)) for e in events]


def older(client: str, at: float) -> Received:
    """A payload of an older client: it sends no hello, so the fleet view never watches it."""
    payload = b"an older client's page"
    return Received(payload_hash(payload), payload.decode(), "10.0.0.9", client, at, None)


async def history(store: SQLStore) -> list[StateEvent]:
    """
    Clients b and c run to block 20 and a to 10, all three watched; "old" is an older client.
    At T0 + 45, a enters behind (the fleet reached 14 at T0 + 14); at T0 + 46, b's node says it
    is syncing.  The events, in the order they happened.
    """
    await store.store([received(c, n, T0 + n) for c in "bc" for n in range(0, 21)])
    await store.store([received("a", n, T0 + n) for n in range(0, 11)])
    await store.store([older("old", T0 + 20)])
    heard = {c: T0 + 44 for c in "abc"}
    told = await store.fleet.decide("s1", T0 + 45, heard, {}, T)
    assert [(e.client, e.state) for e in told] == [("a", "behind")]
    await store.store([StatusReport("b", T0 + 46, Status(syncing=SyncProgress(19, 25)))])
    told += await store.fleet.decide("s1", T0 + 46, heard, {}, T)
    assert [(e.client, e.state, e.event) for e in told] == [
        ("a", "behind", "entered"),
        ("b", "syncing", "entered"),
    ]
    return told


@pytest_twisted.ensureDeferred
async def test_events_newest_first_as_the_webhooks_have_them(open_store: Opener) -> None:
    """
    /api/v1/events lists the changes of state newest first, each with exactly the fields
    of the body the webhooks POST; C{since} keeps those at or after a unix time, C{client} one
    client's, C{limit} (default 100, at most 1,000) the latest that many.
    """
    store = await started(open_store)
    told = await history(store)
    await store.store([received("a", n, T0 + 47) for n in range(11, 21)])
    told += await store.fleet.decide("s1", T0 + 48, {c: T0 + 47 for c in "abc"}, {}, T)
    assert [(e.client, e.event) for e in told][-1] == ("a", "left")
    client = site(store)

    body = (await client.get("/api/v1/events")).json()
    assert body["events"] == bodies(told[::-1])
    assert set(body["events"][0]) == {"id", "client", "chain_id", "state", "event", "head",
                                      "best_head", "since", "at", "text"}  # fmt: skip
    assert (body["since"], body["client"], body["limit"]) == (None, None, 100)
    assert isinstance(body["now"], float)
    left = body["events"][0]
    assert (left["head"], left["best_head"], left["since"], left["at"]) == (20, 20, T0 + 14,
                                                                            T0 + 48)  # fmt: skip

    body = (await client.get(f"/api/v1/events?since={T0 + 46:.3f}")).json()
    assert body["events"] == bodies(told[:0:-1]) and body["since"] == T0 + 46
    assert (await client.get(f"/api/v1/events?since={T0 + 48:.0f}")).json()["events"] == bodies(
        told[-1:]
    )
    assert (await client.get("/api/v1/events?since=1800000000")).json()["events"] == []
    body = (await client.get("/api/v1/events?client=a")).json()
    assert body["events"] == bodies([told[2], told[0]]) and body["client"] == "a"
    body = (await client.get(f"/api/v1/events?client=a&since={T0 + 46}")).json()
    assert body["events"] == bodies([told[2]])
    assert (await client.get("/api/v1/events?client=nobody")).json()["events"] == []
    body = (await client.get("/api/v1/events?limit=1")).json()
    assert body["events"] == bodies([told[2]]) and body["limit"] == 1
    assert (await client.get("/api/v1/events?limit=99999")).json()["limit"] == 1000
    index = (await client.get("/api/v1")).json()["endpoints"]
    assert "/api/v1/events?since=&client=&limit=" in index


@pytest_twisted.ensureDeferred
async def test_bad_event_arguments_are_a_400_in_words(sqlite_store: SQLStore) -> None:
    """
    A C{since} that is not a unix time in plain decimals, a C{client} that cannot be a
    client's name, a C{limit} that is not a positive integer: each a JSON 400 saying what is
    wrong, and nothing logged; a path below /api/v1/events is a 404.
    """
    client = site(sqlite_store)
    time = "since must be a unix time: seconds, like 1732525000.5"
    limit = "limit must be a positive integer of at most 9 digits"
    with capturedLogs() as events:
        for query, message in [
            ("since=-1", time),
            ("since=1e9", time),
            ("since=nan", time),
            ("since=inf", time),
            ("since=1.", time),
            ("since=0x10", time),
            ("since=" + "9" * 13, time),
            ("since=1." + "5" * 10, time),
            ("since=%D9%A3", time),  # an Arabic-Indic digit three
            ("since=", time),
            ("since=" + "9" * 2000, "since is too long"),
            ("since=%FF", "since is not UTF-8"),
            ("client=", "client must be 1 to 255 characters"),
            ("client=" + "x" * 256, "client must be 1 to 255 characters"),
            ("client=a%0Ab", "client must not contain control characters, line breaks or lone"
             " surrogates"),
            ("client=%20a", "client must not begin or end with spaces"),
            ("limit=0", limit),
            ("limit=-5", limit),
            ("limit=" + "9" * 10, limit),
        ]:  # fmt: skip
            reply = await client.get(f"/api/v1/events?{query}")
            assert (reply.status, reply.json()) == (400, {"error": message, "status": 400}), query
        reply = await client.get("/api/v1/events/more")
        assert (reply.status, reply.json()["error"]) == (404, "not found")
        assert (await client.get("/api/v1/events?since=0&client=%C3%A9")).status == 200
    assert above_debug(events) == []


class CountingFleet:
    """A store's fleet view that counts how often its states are read."""

    def __init__(self, fleet: IFleet) -> None:
        self.fleet = fleet
        self.reads = 0

    def states(self, clients: Any = None) -> Deferred[dict[str, dict[str, State]]]:
        self.reads += 1
        return self.fleet.states(clients)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fleet, name)


@pytest_twisted.ensureDeferred
async def test_clients_carry_their_states_from_one_read(open_store: Opener) -> None:
    """
    Each client's entry in /api/v1/clients and /api/v1/clients/<name> says its states (since
    when, its head and its chain's best head then) and its C{state}: C{current} in none, the
    one that explains the others in several, C{null} with its C{states} for a client the
    fleet view does not watch.  One read of the states serves all the clients.
    """
    store = await started(open_store)
    await history(store)
    # Nothing heard of c for over 60 s: silent; a's head stalled 60 s after its last block.
    told = await store.fleet.decide("s1", T0 + 106, {"a": T0 + 105, "b": T0 + 105}, {}, T)
    assert [(e.client, e.state) for e in told] == [("a", "stalled"), ("c", "silent")]
    counting = CountingFleet(store.fleet)
    client = site(store, counting)  # type: ignore[arg-type]
    body = (await client.get("/api/v1/clients")).json()
    assert counting.reads == 1
    entries = {c["client"]: c for c in body["clients"]}
    assert set(entries) == {"a", "b", "c", "old"}
    assert (entries["a"]["state"], entries["a"]["states"]) == (
        "stalled",
        {
            "behind": {"since": T0 + 14, "chain_id": 1, "head": 10, "best_head": 20},
            "stalled": {"since": T0 + 10, "chain_id": 1, "head": 10, "best_head": 20},
        },
    )
    assert (entries["b"]["state"], entries["b"]["states"]) == (
        "syncing",
        {"syncing": {"since": T0 + 46, "chain_id": 1, "head": 20, "best_head": 20}},
    )
    assert entries["c"]["state"] == "silent"
    assert set(entries["c"]["states"]) == {"silent"}
    assert (entries["old"]["state"], entries["old"]["states"]) == (None, None)

    # b's node is synced again: b is current.
    await store.store([StatusReport("b", T0 + 107, Status(syncing=False))])
    await store.fleet.decide("s1", T0 + 107, {"a": T0 + 107, "b": T0 + 107}, {}, T)
    one = (await client.get("/api/v1/clients/b")).json()
    assert (one["state"], one["states"]) == ("current", {})
    one = (await client.get("/api/v1/clients/a")).json()
    assert one["state"] == "stalled" and one["states"] == entries["a"]["states"]
    assert (await client.get("/api/v1/clients/old")).json()["state"] is None
    assert counting.reads == 4


@pytest_twisted.ensureDeferred
async def test_clients_page_by_name_with_state_and_chain_filters(open_store: Opener) -> None:
    """
    /api/v1/clients lists a page of C{limit} clients in the order of their names, C{next}
    naming the last when there are more (C{after} continues there) and C{null} on the last
    page; C{state} keeps the clients in that state (C{current}: watched and in none),
    C{chain_id} those on that chain, together too; each bad argument is a 400 in words, with
    nothing logged.
    """
    store = await started(open_store)
    await history(store)
    await store.fleet.decide("s1", T0 + 106, {"a": T0 + 105, "b": T0 + 105}, {}, T)
    client = site(store)

    async def listed(query: str) -> tuple[list[str], str | None, int]:
        body = (await client.get(f"/api/v1/clients?{query}")).json()
        return [c["client"] for c in body["clients"]], body["next"], body["limit"]

    assert await listed("") == (["a", "b", "c", "old"], None, 100)
    assert await listed("limit=2") == (["a", "b"], "b", 2)
    assert await listed("limit=2&after=b") == (["c", "old"], None, 2)
    assert await listed("limit=3&after=a") == (["b", "c", "old"], None, 3)
    assert await listed("after=zz") == ([], None, 100)
    assert await listed("limit=99999") == (["a", "b", "c", "old"], None, 1000)
    assert (await listed("state=stalled"))[0] == ["a"]
    assert (await listed("state=silent"))[0] == ["c"]
    assert (await listed("state=syncing&chain_id=1"))[0] == ["b"]
    assert (await listed("state=current"))[0] == []
    assert (await listed("chain_id=1&limit=1&after=a")) == (["b"], "b", 1)
    assert (await listed("chain_id=2"))[0] == []
    await store.store([StatusReport("b", T0 + 107, Status(syncing=False))])
    await store.fleet.decide("s1", T0 + 107, {"a": T0 + 107, "b": T0 + 107}, {}, T)
    assert (await listed("state=current"))[0] == ["b"]
    limit = "limit must be a positive integer of at most 9 digits"
    with capturedLogs() as events:
        for query, message in [
            ("limit=0", limit),
            ("limit=x", limit),
            ("after=", "after is a client's name: it must be 1 to 255 characters"),
            ("after=%20a", "after is a client's name: it must not begin or end with spaces"),
            ("after=%FF", "after is not UTF-8"),
            ("chain_id=-1", f"chain_id must be an integer from 0 to {2**63 - 1}"),
            ("chain_id=" + "9" * 19, f"chain_id must be an integer from 0 to {2**63 - 1}"),
            ("state=lost", "state must be one of current, behind, stalled, silent, syncing,"
             " fork"),
            ("state=", "state must be one of current, behind, stalled, silent, syncing, fork"),
        ]:  # fmt: skip
            reply = await client.get(f"/api/v1/clients?{query}")
            assert (reply.status, reply.json()) == (400, {"error": message, "status": 400}), query
    assert above_debug(events) == []


@pytest_twisted.ensureDeferred
async def test_state_gauges_for_every_watched_client(tmp_path: Path) -> None:
    """
    /metrics has ethtwisted_client_state{client,state} for each watched client and each of
    the five states: 1 for those it is in, 0 for the others; nothing for a client not watched,
    and, read again at each scrape, nothing left of a client the store no longer watches.
    """
    store = await open_sqlite(tmp_path / "eth.sqlite")
    try:
        await history(store)
        client = site(store)
        text = (await client.get("/metrics")).text
        gauge = "ethtwisted_client_state"
        for name, current in {"a": {"behind"}, "b": {"syncing"}, "c": set()}.items():
            for state in STATES:
                labels = f'{{client="{name}",state="{state}"}}'
                assert metric(text, gauge, labels) == (1 if state in current else 0), labels
        samples = re.findall(rf"^{gauge}{{.*$", text, re.MULTILINE)
        assert len(samples) == 3 * len(STATES)
        assert 'client="old"' not in "".join(samples)

        with sqlite3.connect(tmp_path / "eth.sqlite") as db:
            db.execute("DELETE FROM eth_presence WHERE client = 'c'")
        text = (await client.get("/metrics")).text
        samples = re.findall(rf"^{gauge}{{.*$", text, re.MULTILINE)
        assert len(samples) == 2 * len(STATES)
        assert 'client="c"' not in "".join(samples)
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_metrics_take_the_clients_from_the_last_decision(open_store: Opener) -> None:
    """
    Within 5 s of this process's last decision, a scrape takes every client's last block, lag,
    last message and states from what that decision read, and shows the same series as a
    scrape that reads them from the stores (later, or in eth-stats).
    """
    store = await started(open_store)
    await history(store)  # the last decision at T0 + 46
    assert store.fleet.view(T0 + 45) is None and store.fleet.view(T0 + 52) is None
    view = store.fleet.view(T0 + 47)
    assert view is not None and set(view.states) == {"a", "b", "c"}
    assert view.clients["old"] == (None, None, T0 + 20)
    texts = []
    for at in (T0 + 47, T0 + 60):
        clock = Clock()
        clock.advance(at)
        text = (
            await Client(StatsRoot(Reads(clock, store, store, fleet=store.fleet))).get("/metrics")
        ).text
        texts.append(sorted(re.findall(r"^ethtwisted_client_(?:last|lag|state).*$", text, re.M)))
    assert texts[0] == texts[1]
    assert 'ethtwisted_client_lag_blocks{chain_id="1",client="a"} 10.0' in texts[0]
    assert len(texts[0]) == 4 + 3 * 2 + 3 * len(STATES)


@pytest_twisted.ensureDeferred
async def test_a_store_without_a_fleet_view() -> None:
    """
    Over a store without a fleet view (the memory store): /api/v1/events is a JSON 404 saying
    so, every client's state is C{null}, and /metrics has no state gauge.
    """
    store = MemoryStore()
    await store.start()
    await store.store([received("a", n, T0 + n) for n in range(3)])
    client = Client(StatsRoot(Reads(reactor, store, store)))
    reply = await client.get("/api/v1/events")
    assert (reply.status, reply.json()) == (
        404,
        {"error": "this store keeps no fleet view", "status": 404},
    )
    (entry,) = (await client.get("/api/v1/clients")).json()["clients"]
    assert (entry["state"], entry["states"]) == (None, None)
    text = (await client.get("/metrics")).text
    assert "ethtwisted_client_state{" not in text


@pytest_twisted.ensureDeferred
async def test_server_and_stats_serve_the_fleet_view(tmp_path: Path) -> None:
    """
    eth-server with --stats and eth-stats (read-only) on the same SQLite file answer the same
    events, states and state gauges over real sockets: a watched client whose node says it
    is syncing, decided through the store (the server's own decider agrees), beside a client
    that sent no hello, which is not watched.
    """
    path = tmp_path / "eth.sqlite"
    db = f"sqlite:///{path}"
    server = await stats_server(["--db", db, "--stats-token", TOKEN])
    writer = await open_sqlite(path)
    reader = await start_stats(["--db", db], {"ETH_STATS_TOKEN": TOKEN})
    try:
        assert server.collector_port is not None
        anonymous = await connect_peer(server.collector_port)
        await anonymous.send([b"an older client's payload"])
        anonymous.close()
        now = reactor.seconds()
        await writer.store([StatusReport("node-s", now, Status(syncing=SyncProgress(1, 9)))])
        told = await writer.fleet.decide("elsewhere", now, {"node-s": now}, {}, Thresholds())
        assert [(e.client, e.state, e.event) for e in told] == [("node-s", "syncing", "entered")]
        for running in (server, reader):
            body = (await running.get("/api/v1/events", TOKEN)).json()
            assert body["events"] == bodies(told)
            clients = (await running.get("/api/v1/clients", TOKEN)).json()["clients"]
            assert [(c["client"], c["state"]) for c in clients] == [("127.0.0.1", None)]
            text = (await running.get("/metrics", TOKEN)).text
            labels = '{client="node-s",state="syncing"}'
            assert metric(text, "ethtwisted_client_state", labels) == 1
            labels = '{client="node-s",state="silent"}'
            assert metric(text, "ethtwisted_client_state", labels) == 0
            assert (await running.get("/api/v1/events")).status == 401
    finally:
        await reader.stop()
        await writer.close()
        await server.stop()
