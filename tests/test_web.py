"""
The stats API: every endpoint in memory (StubTreq) over real SQLite stores, then over real
sockets through eth-server and eth-stats, against SQLite and against MariaDB with Redis.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import prometheus_client
import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from ethtwisted import stats_tap
from ethtwisted.frames import Status, SyncProgress
from ethtwisted.interfaces import IBlockReader, ICounterReader
from ethtwisted.metrics.server import ServerMetrics
from ethtwisted.protocol import Block, block_html, block_json, payload_hash
from ethtwisted.records import ClientRecord, Received, StatusReport
from ethtwisted.server.factory import ServerFactory
from ethtwisted.server.ingest import Ingest
from ethtwisted.server_tap import Options as ServerOptions
from ethtwisted.stats_tap import Options as StatsOptions
from ethtwisted.storage.memory_counters import MemoryCounters
from ethtwisted.storage.memory_ledger import MemoryLedger
from ethtwisted.storage.memory_store import MemoryStore
from ethtwisted.storage.redis_store import RedisCounters, parse_redis_url
from ethtwisted.storage.sql_pool import parse_db_url
from ethtwisted.storage.sql_store import SQLStore
from ethtwisted.web.cat import plain_table
from ethtwisted.web.reads import CHECK_TIMEOUT, READ_TIMEOUT, Reads
from ethtwisted.web.site import StatsRoot, WebService, agent_resource
from tests.blocks import block, received
from tests.helpers import connect_peer, wait_for
from tests.services import MySQLDatabase, Redis
from tests.web import (
    TOKEN,
    Client,
    Reply,
    Running,
    above_debug,
    metric,
    open_sqlite,
    start_stats,
    stats_server,
    stub_treq,
)

T0 = 1_700_000_000.0


# -- helpers ----------------------------------------------------------------------------------


async def fill(store: SQLStore) -> dict[str, Any]:
    """
    A small history: chain 1 followed by "alpha" (to block 12) and "beta" (to 9, behind),
    chain 5 by "gamma", an older client's HTML page, and a payload that is no block.
    """
    batches = []
    for n in range(1, 13):
        batches.append(received(block_json(block(1, n)), "alpha", T0 + n, "10.0.0.1"))
        if n <= 9:
            batches.append(received(block_json(block(1, n)), "beta", T0 + n + 0.5, "10.0.0.2"))
    batches.append(received(block_json(block(5, 700)), "gamma", T0 + 20, "10.0.0.3"))
    batches.append(received(block_html(4242), "10.0.0.4", T0 + 21, "10.0.0.4"))
    batches.append(received(b"not a block at all", "10.0.0.4", T0 + 22, "10.0.0.4"))
    for i in range(0, len(batches), 5):
        await store.store(batches[i : i + 5])
    return {"received": batches}


def reads_over(store: SQLStore, registry: CollectorRegistry | None = None) -> Reads:
    return Reads(reactor, store, store, registry=registry)


def table_rows(text: str) -> list[list[str]]:
    """
    The rows of a plain table (header first), split on runs of spaces.
    """
    return [line.split() for line in text.splitlines()]


# -- formatting -------------------------------------------------------------------------------


def test_plain_table_layout() -> None:
    """
    A header line, then one line per row; columns padded to their widest cell, separated by
    two spaces, numbers right-aligned and text left-aligned, no trailing spaces.
    """
    text = plain_table(["client", "count"], [("10.0.0.1", 5), ("192.168.100.200", 12345)])
    assert text == ("client           count\n10.0.0.1             5\n192.168.100.200  12345\n")
    assert plain_table(["hash", "timestamp"], []) == "hash  timestamp\n"
    assert plain_table(["a", "t"], [("x", 1.5)]) == "a      t\nx  1.500\n"


# -- the stores' readers ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sql_store_provides_the_readers(sqlite_store: SQLStore) -> None:
    """
    The SQL store implements both reading interfaces; the Redis store the older service's.
    """
    assert verifyObject(ICounterReader, sqlite_store)
    assert verifyObject(IBlockReader, sqlite_store)
    redis = RedisCounters(parse_redis_url("redis://127.0.0.1:1/0"), reactor)
    try:
        assert verifyObject(ICounterReader, redis)
    finally:
        await redis.close()


@pytest_twisted.ensureDeferred
async def test_read_only_store_creates_and_writes_nothing(tmp_path: Path) -> None:
    """
    Read-only (eth-stats): a missing SQLite file is not created, a database without the
    tables fails to start and stays empty, and a started store cannot write.
    """
    missing = tmp_path / "missing.sqlite"
    store = SQLStore(parse_db_url(f"sqlite:///{missing}"), reactor, read_only=True)
    with pytest.raises(sqlite3.OperationalError):
        await store.start()
    await store.close()
    assert not missing.exists()

    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    store = SQLStore(parse_db_url(f"sqlite:///{empty}"), reactor, read_only=True)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await store.start()
    await store.close()
    with sqlite3.connect(empty) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []

    writer = await open_sqlite(tmp_path / "eth.sqlite")
    await writer.close()
    reader = await open_sqlite(tmp_path / "eth.sqlite", read_only=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await reader.store([received(b"x", "c", T0)])
    finally:
        await reader.close()


# -- /_cat ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cat_index_and_tables_from_sql(sqlite_store: SQLStore) -> None:
    """
    /_cat lists the endpoints; /_cat/hashes shows hash and first-seen time, newest first;
    /_cat/clients shows each address with its message count, busiest first.
    """
    history = await fill(sqlite_store)
    client = Client(StatsRoot(reads_over(sqlite_store)))

    index = await client.get("/_cat")
    assert index.status == 200
    assert index.headers["content-type"] == "text/plain; charset=utf-8"
    for endpoint in ("/_cat/hashes", "/_cat/hashes/{hash}", "/_cat/clients"):
        assert endpoint in index.text.splitlines()
    assert (await client.get("/_cat/")).text == index.text

    hashes = await client.get("/_cat/hashes")
    rows = table_rows(hashes.text)
    assert rows[0] == ["hash", "timestamp"]
    first_seen: dict[str, float] = {}
    for r in history["received"]:
        first_seen.setdefault(r.sha256, r.received)
    newest = sorted(first_seen.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(h, float(t)) for h, t in rows[1:]] == [(h, round(t, 3)) for h, t in newest]

    clients = await client.get("/_cat/clients")
    assert table_rows(clients.text) == [
        ["client", "count"],
        ["10.0.0.1", "12"],
        ["10.0.0.2", "9"],
        ["10.0.0.4", "2"],
        ["10.0.0.3", "1"],
    ]


@pytest_twisted.ensureDeferred
async def test_cat_hashes_lists_the_latest_hundred(sqlite_store: SQLStore) -> None:
    """
    However many payloads there are, /_cat/hashes lists the 100 most recent.
    """
    await sqlite_store.store([received(f"payload {i}".encode(), "c", T0 + i) for i in range(130)])
    rows = table_rows((await Client(StatsRoot(reads_over(sqlite_store))).get("/_cat/hashes")).text)
    assert len(rows) == 101
    assert rows[1] == [payload_hash(b"payload 129"), f"{T0 + 129:.3f}"]
    assert rows[-1] == [payload_hash(b"payload 30"), f"{T0 + 30:.3f}"]


@pytest_twisted.ensureDeferred
async def test_cat_hash_shows_the_stored_payload(sqlite_store: SQLStore) -> None:
    """
    /_cat/hashes/<sha256> answers the payload as stored (any case of hex accepted); an unknown
    hash is 404 and anything that is not 64 hex characters 400, both "Hash not found".
    """
    await fill(sqlite_store)
    client = Client(StatsRoot(reads_over(sqlite_store)))
    page = block_html(4242)
    reply = await client.get(f"/_cat/hashes/{payload_hash(page)}")
    assert (reply.status, reply.body) == (200, page)
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert reply.headers["x-content-type-options"] == "nosniff"
    reply = await client.get(f"/_cat/hashes/{payload_hash(page).upper()}")
    assert reply.body == page

    reply = await client.get(f"/_cat/hashes/{'0' * 64}")
    assert (reply.status, reply.text) == (404, "Hash not found")
    for bad in ("abc", "0" * 63, "0" * 65, "g" * 64, "%27%20OR%201%3D1%20--", "%00" * 64):
        reply = await client.get(f"/_cat/hashes/{bad}")
        assert (reply.status, reply.text) == (400, "Hash not found"), bad


# -- /api/v1 ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_api_blocks_newest_first_with_cursor(sqlite_store: SQLStore) -> None:
    """
    /api/v1/blocks lists payloads newest first with their block fields; ?limit= pages (capped
    at 1,000) and ?before= continues after a given payload, so paging visits each once.
    """
    await fill(sqlite_store)
    client = Client(StatsRoot(reads_over(sqlite_store)))
    everything = (await client.get("/api/v1/blocks")).json()
    assert everything["next"] is None
    blocks = everything["blocks"]
    assert len(blocks) == 15
    times = [b["first_seen"] for b in blocks]
    assert times == sorted(times, reverse=True)
    assert blocks[0] == {
        "sha256": payload_hash(b"not a block at all"),
        "first_seen": T0 + 22,
        "client": "10.0.0.4",
        "chain_id": None,
        "number": None,
        "hash": None,
        "parent_hash": None,
        "timestamp": None,
    }
    assert blocks[1]["number"] == 4242 and blocks[1]["chain_id"] is None
    b = block(5, 700)
    assert blocks[2] == {
        "sha256": payload_hash(block_json(b)),
        "first_seen": T0 + 20,
        "client": "gamma",
        "chain_id": 5,
        "number": 700,
        "hash": b.hash,
        "parent_hash": b.parent_hash,
        "timestamp": b.timestamp,
    }

    seen: list[str] = []
    path = "/api/v1/blocks?limit=4"
    while True:
        page = (await client.get(path)).json()
        assert page["limit"] == 4
        seen += [b["sha256"] for b in page["blocks"]]
        if page["next"] is None:
            break
        path = f"/api/v1/blocks?limit=4&before={page['next']}"
    assert seen == [b["sha256"] for b in blocks]

    assert (await client.get("/api/v1/blocks?limit=5000")).json()["limit"] == 1000
    for query, message in [
        ("limit=0", "limit must be a positive integer of at most 9 digits"),
        ("limit=-3", "limit must be a positive integer of at most 9 digits"),
        ("limit=ten", "limit must be a positive integer of at most 9 digits"),
        ("before=123", "before must be the sha256 of a block: 64 hex"),
        (f"before={'0' * 64}", "before names no stored block"),
    ]:
        reply = await client.get(f"/api/v1/blocks?{query}")
        assert reply.status == 400
        assert reply.json() == {"error": message, "status": 400}


@pytest_twisted.ensureDeferred
async def test_api_one_block_with_its_payload(sqlite_store: SQLStore) -> None:
    """
    /api/v1/blocks/<sha256> answers the record and the stored payload; unknown is a JSON 404,
    malformed a JSON 400.
    """
    await fill(sqlite_store)
    client = Client(StatsRoot(reads_over(sqlite_store)))
    payload = block_json(block(1, 3))
    body = (await client.get(f"/api/v1/blocks/{payload_hash(payload)}")).json()
    assert body["payload"] == payload.decode()
    assert (body["number"], body["chain_id"], body["client"]) == (3, 1, "alpha")

    reply = await client.get(f"/api/v1/blocks/{'f' * 64}")
    assert (reply.status, reply.json()) == (404, {"error": "Hash not found", "status": 404})
    reply = await client.get("/api/v1/blocks/0x1234")
    assert reply.status == 400
    assert reply.json()["status"] == 400


@pytest_twisted.ensureDeferred
async def test_api_clients_and_heads(sqlite_store: SQLStore) -> None:
    """
    /api/v1/head gives the best head per chain; /api/v1/clients each client's messages, first
    and last sighting, last block and its lag behind the best head of its chain.
    """
    await fill(sqlite_store)
    client = Client(StatsRoot(reads_over(sqlite_store)))
    heads = (await client.get("/api/v1/head")).json()
    assert isinstance(heads["now"], float)
    assert heads["heads"] == [
        {"chain_id": None, "number": 4242, "hash": None, "first_seen": T0 + 21},
        {"chain_id": 1, "number": 12, "hash": block(1, 12).hash, "first_seen": T0 + 12},
        {"chain_id": 5, "number": 700, "hash": block(5, 700).hash, "first_seen": T0 + 20},
    ]
    clients = {c["client"]: c for c in (await client.get("/api/v1/clients")).json()["clients"]}
    assert clients["alpha"] == {
        "client": "alpha",
        "address": "10.0.0.1",
        "messages": 12,
        "first_seen": T0 + 1,
        "last_seen": T0 + 12,
        "chain_id": 1,
        "last_block": 12,
        "lag": 0,
        "node": None,
        "propagation": {"p50_ms": 0.0, "p95_ms": 0.0, "blocks": 12},
        "state": None,
        "states": None,
    }
    assert (clients["beta"]["last_block"], clients["beta"]["lag"]) == (9, 3)
    assert (clients["gamma"]["chain_id"], clients["gamma"]["lag"]) == (5, 0)
    assert clients["10.0.0.4"]["last_block"] == 4242
    assert clients["10.0.0.4"]["messages"] == 2


@pytest_twisted.ensureDeferred
async def test_api_node_status_propagation_events_missing_and_sightings(
    sqlite_store: SQLStore,
) -> None:
    """
    A client's entry carries its node's latest status and its propagation (delay behind the
    fleet's first sighting, p50/p95 over its last blocks); /api/v1/clients/<name> adds its
    events; .../missing the heights it never reported (bounded by from/to); a block lists who
    saw it when, earliest first.  Bad arguments are 400s, unknown clients 404s.
    """
    await fill(sqlite_store)
    old = Status("anvil/1.0", 1, 0, False, 10, 7, 8, 6, 2, 1, 0.25)
    new = Status("anvil/1.1", 1, 3, SyncProgress(9, 12), 11, 7, 9, 8, 0, 0, 0.5)
    await sqlite_store.store([StatusReport("beta", T0 + 30, old)])
    await sqlite_store.store([StatusReport("beta", T0 + 31, new)])
    client = Client(StatsRoot(reads_over(sqlite_store)))
    clients = {c["client"]: c for c in (await client.get("/api/v1/clients")).json()["clients"]}
    assert clients["beta"]["node"] == {
        "client_version": "anvil/1.1",
        "chain_id": 1,
        "peers": 3,
        "syncing": {"current": 9, "highest": 12},
        "gas_price": 11,
        "base_fee": 7,
        "pending": 0,
        "queued": 0,
        "safe": 9,
        "finalized": 8,
        "rtt_ms": 0.5,
        "updated": T0 + 31,
    }
    assert clients["beta"]["propagation"] == {"p50_ms": 500.0, "p95_ms": 500.0, "blocks": 9}
    assert clients["gamma"]["propagation"]["blocks"] == 1
    assert clients["10.0.0.4"]["propagation"]["blocks"] == 1  # the page, not the other payload

    one = (await client.get("/api/v1/clients/beta")).json()
    assert one["propagation"] == clients["beta"]["propagation"]
    assert [(e["kind"], e["at"]) for e in one["events"]] == [
        ("peers_back", T0 + 31),
        ("sync_started", T0 + 31),
        ("version_changed", T0 + 31),
    ]
    body = (await client.get("/api/v1/clients/beta/missing?chain_id=1")).json()
    assert body["missing"] == [10, 11, 12]
    body = (await client.get("/api/v1/clients/beta/missing?chain_id=1&from=0&to=10")).json()
    assert body["missing"] == [10]
    assert (await client.get("/api/v1/clients/nobody")).status == 404
    for bad in ["missing", "missing?chain_id=x", "missing?chain_id=1&from=5&to=4",
                "missing?chain_id=1&to=-1"]:  # fmt: skip
        assert (await client.get(f"/api/v1/clients/beta/{bad}")).status == 400, bad

    sha = payload_hash(block_json(block(1, 3)))
    body = (await client.get(f"/api/v1/blocks/{sha}")).json()
    assert body["sightings"] == [
        {"client": "alpha", "seen_at": T0 + 3, "delay_ms": 0.0, "via": "unknown"},
        {"client": "beta", "seen_at": T0 + 3.5, "delay_ms": 500.0, "via": "unknown"},
    ]


@pytest_twisted.ensureDeferred
async def test_api_arrivals_per_minute(sqlite_store: SQLStore) -> None:
    """
    /api/v1/arrivals counts payloads first seen per minute, over the last hour by default,
    and gives the rate over the last 10 minutes, or less since the first payload stored.
    """
    now = reactor.seconds()
    minute = int(now) // 60 * 60
    await sqlite_store.store(
        [
            received(f"p{i}".encode(), "c", t)
            for i, t in enumerate([now, now, minute - 1, now - 7200])
        ]
    )
    client = Client(StatsRoot(reads_over(sqlite_store)))
    body = (await client.get("/api/v1/arrivals")).json()
    assert body["bucket"] == 60
    assert body["since"] == minute - 59 * 60
    assert body["counts"] == [[minute - 60, 1], [minute, 2]]
    assert body["first"] == now - 7200
    assert body["rate"] == {"seconds": 600.0, "blocks": 3, "per_minute": 0.3}
    body = (await client.get("/api/v1/arrivals?minutes=1")).json()
    assert body["counts"] == [[minute, 2]]

    # A minute after the first payload, the rate is over that minute.
    young = MemoryStore()
    await young.start()
    start = reactor.seconds()
    await young.store([received(f"y{i}".encode(), "c", start - 60 + i) for i in range(30)])
    body = (await Client(StatsRoot(Reads(reactor, young, young))).get("/api/v1/arrivals")).json()
    assert body["first"] == start - 60
    assert body["rate"]["blocks"] == 30 and 60 <= body["rate"]["seconds"] < 61
    assert 29.5 < body["rate"]["per_minute"] <= 30


# -- errors, methods, tokens ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_errors_are_json_without_tracebacks(sqlite_store: SQLStore, tmp_path: Path) -> None:
    """
    Unknown paths are JSON 404s, other methods 405, and a store that fails a read is a 503
    saying only "store unavailable" (logged once as a warning, not as a bug).
    """
    client = Client(StatsRoot(reads_over(sqlite_store)))
    for path in ("/nope", "/api/v2/blocks", "/api/v1/nothing", "/api/v1/head/extra"):
        reply = await client.get(path)
        assert (reply.status, reply.json()) == (404, {"error": "not found", "status": 404})
    reply = await client.request("POST", "/api/v1/blocks")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"
    reply = await client.request("HEAD", "/api/v1/head")
    assert (reply.status, reply.body) == (200, b"")

    with sqlite3.connect(tmp_path / "eth.sqlite") as db:
        db.execute("DROP TABLE eth_blocks")
    with capturedLogs() as events:
        for _ in range(2):
            reply = await client.get("/api/v1/blocks")
            assert (reply.status, reply.json()) == (
                503,
                {"error": "store unavailable", "status": 503},
            )
        reply = await client.get("/_cat/hashes")
        assert (reply.status, reply.text) == (503, "store unavailable\n")
    assert not [e for e in events if e.get("log_failure")]
    warnings = [e for e in events if "store read failed" in e.get("log_format", "")]
    assert len(warnings) == 1
    assert "Traceback" not in reply.text


@pytest_twisted.ensureDeferred
async def test_reader_gone_is_not_a_store_failure(sqlite_store: SQLStore) -> None:
    """
    A read abandoned because its caller went away is cancelled quietly, not reported as a
    store failure.
    """
    reads = reads_over(sqlite_store)
    pending: Deferred[None] = Deferred()
    with capturedLogs() as events:
        reading = Deferred.fromCoroutine(reads.read(pending))
        reading.cancel()
        with pytest.raises(CancelledError):
            await reading
    assert list(events) == []


@pytest_twisted.ensureDeferred
async def test_token_guards_api_metrics_and_dashboard(sqlite_store: SQLStore) -> None:
    """
    With a token, the JSON API, /metrics and the dashboard need it as a bearer token (the
    dashboard also as ?token=); /_cat and /healthz stay open.
    """
    await fill(sqlite_store)
    client = Client(StatsRoot(reads_over(sqlite_store), TOKEN))
    for path in ("/api/v1/head", "/api/v1/blocks", "/metrics"):
        for token in (None, "wrong", TOKEN + "x"):
            reply = await client.get(path, token)
            assert reply.status == 401, (path, token)
            assert reply.headers["www-authenticate"].startswith("Bearer")
        assert (await client.get(path, TOKEN)).status == 200
    reply = await client.get("/api/v1/head?token=" + TOKEN)
    assert reply.status == 401
    assert reply.json() == {"error": "a valid bearer token is required", "status": 401}

    login = await client.get("/")
    assert login.status == 401
    assert "needs the stats token" in login.text
    assert "api/v1" not in login.text
    assert (await client.get("/?token=wrong")).status == 401
    assert (await client.get("/?token=%FF")).status == 401
    page = await client.get("/?token=" + TOKEN)
    assert page.status == 200 and "<title>ethtwisted stats</title>" in page.text
    assert (await client.get("/", TOKEN)).status == 200

    assert (await client.get("/_cat/hashes")).status == 200
    assert (await client.get("/healthz")).status == 200


SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def has_security_headers(reply: Reply) -> bool:
    return all(reply.headers.get(k) == v for k, v in SECURITY_HEADERS.items())


@pytest_twisted.ensureDeferred
async def test_oversized_query_arguments_are_a_400(sqlite_store: SQLStore) -> None:
    """
    A number of thousands of digits in ?limit= or ?minutes=, a number of more than 9 digits,
    or any query argument past 1 KiB is a 400 saying what is wrong, with the usual headers,
    and nothing is logged.
    """
    await fill(sqlite_store)
    client = Client(StatsRoot(reads_over(sqlite_store)))
    digits = "9" * 5000
    with capturedLogs() as events:
        for path, message in [
            (f"/api/v1/blocks?limit={digits}", "limit is too long"),
            (f"/api/v1/clients?limit={digits}", "limit is too long"),
            (f"/api/v1/arrivals?minutes={digits}", "minutes is too long"),
            (f"/api/v1/blocks?before={'a' * 5000}", "before is too long"),
            ("/api/v1/blocks?limit=" + "9" * 1000,
             "limit must be a positive integer of at most 9 digits"),
            ("/api/v1/arrivals?minutes=0000000001",
             "minutes must be a positive integer of at most 9 digits"),
        ]:  # fmt: skip
            reply = await client.get(path)
            assert (reply.status, reply.json()) == (400, {"error": message, "status": 400})
            assert has_security_headers(reply)
        reply = await client.get("/api/v1/arrivals?minutes=999999999")
        assert reply.status == 200
    assert above_debug(events) == []


@pytest_twisted.ensureDeferred
async def test_undecodable_authorization_is_unauthorized(sqlite_store: SQLStore) -> None:
    """
    With a token, an Authorization header that is not UTF-8 (or the token with bytes added)
    is refused like any wrong token: 401 with the usual headers, and nothing is logged.
    """
    stats_root = StatsRoot(reads_over(sqlite_store), TOKEN)
    agent = agent_resource(CollectorRegistry(), lambda: {}, token=TOKEN)
    values = [
        b"Bearer \xff\xfe",
        b"\xff\xfe",
        b"Bearer " + TOKEN.encode() + b"\xe9",
        b"b\xe9arer x",
    ]
    with capturedLogs() as events:
        for root, path in [(stats_root, "/api/v1/head"), (stats_root, "/metrics"),
                           (stats_root, "/"), (agent, "/metrics")]:  # fmt: skip
            client = Client(root)
            for value in values:
                reply = await client.request("GET", path, {b"Authorization": [value]})
                assert reply.status == 401, (path, value)
                assert has_security_headers(reply), (path, value)
                if path == "/":
                    assert "needs the stats token" in reply.text
                else:
                    assert reply.headers["www-authenticate"].startswith("Bearer")
            reply = await client.get(path, TOKEN)
            assert reply.status == 200
    assert above_debug(events) == []


@pytest_twisted.ensureDeferred
async def test_agent_unknown_paths_are_our_404() -> None:
    """
    The agent's site (eth-client's) answers an unknown path, its root included, with the
    stats site's JSON 404 and the usual headers, not Twisted's HTML page.
    """
    client = Client(agent_resource(CollectorRegistry(), lambda: {}))
    for path in ("/", "/nope", "/%FF", "/healthz/../x"):
        reply = await client.get(path)
        assert (reply.status, reply.json()) == (404, {"error": "not found", "status": 404})
        assert has_security_headers(reply), path


@pytest_twisted.ensureDeferred
async def test_dashboard_page_is_self_contained(sqlite_store: SQLStore) -> None:
    """
    The dashboard is one HTML page loading nothing from elsewhere; its policy allows exactly
    its own inline script and style.
    """
    reply = await Client(StatsRoot(reads_over(sqlite_store))).get("/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert not re.search(r"(src|href)=\"(https?:)?//", reply.text)
    assert "http://" not in reply.text.replace("http://www.w3.org/2000/svg", "")
    policy = reply.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'", policy)
    assert "unsafe-inline" not in policy
    assert reply.headers["cache-control"] == "no-store"


# -- /metrics and /healthz --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_healthz(sqlite_store: SQLStore) -> None:
    """
    /healthz is 200 when every store answers, 503 naming the failing store (and the
    collector's own trouble) otherwise.
    """
    client = Client(StatsRoot(reads_over(sqlite_store)))
    reply = await client.get("/healthz")
    assert (reply.status, reply.json()) == (200, {"status": "ok", "checks": {"sql": "ok"}})

    trouble: list[str | None] = [None]
    redis = MemoryCounters()
    redis.down = ConnectionRefusedError("Connection refused")
    reads = Reads(reactor, sqlite_store, sqlite_store, redis, lambda: trouble[0])
    client = Client(StatsRoot(reads))
    reply = await client.get("/healthz")
    assert reply.status == 503
    assert reply.json() == {
        "status": "unavailable",
        "checks": {"sql": "ok", "redis": "Connection refused", "ingest": "ok"},
    }
    trouble[0] = "SQL store unavailable: disk full"
    assert (await client.get("/healthz")).json()["checks"]["ingest"] == trouble[0]
    reply = await client.get("/_cat/clients")
    assert (reply.status, reply.text) == (503, "store unavailable\n")


class Hanging(MemoryCounters):
    """A store that never answers, as Redis does while its host is unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def ping(self) -> Deferred[None]:
        self.calls += 1
        return Deferred()

    def latest_hashes(self, limit: int) -> Deferred[list[tuple[str, float]]]:
        self.calls += 1
        return Deferred()


@pytest_twisted.ensureDeferred
async def test_a_store_that_does_not_answer_times_out_in_words(sqlite_store: SQLStore) -> None:
    """
    A store that does not answer is "timed out after 5 s" in /healthz (not the repr of
    Twisted's TimeoutError), and a read from it that times out is logged the same way.
    """
    clock = Clock()
    hanging = Hanging()
    client = Client(StatsRoot(Reads(clock, sqlite_store, sqlite_store, hanging)))
    with capturedLogs() as events:
        replying = Deferred.fromCoroutine(client.get("/healthz"))
        # Redis asked, and SQL answered: only the Redis ping's timer is left.
        await wait_for(lambda: hanging.calls == 1 and len(clock.getDelayedCalls()) == 1)
        clock.advance(CHECK_TIMEOUT)
        reply = await replying
        assert reply.status == 503
        assert reply.json()["checks"] == {"sql": "ok", "redis": "timed out after 5 s"}

        replying = Deferred.fromCoroutine(client.get("/_cat/hashes"))
        await wait_for(lambda: hanging.calls == 2 and len(clock.getDelayedCalls()) == 1)
        clock.advance(READ_TIMEOUT)
        reply = await replying
        assert (reply.status, reply.text) == (503, "store unavailable\n")
    assert above_debug(events) == ["stats: a store read failed: timed out after 10 s"]
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_metrics_from_own_registry(sqlite_store: SQLStore) -> None:
    """
    /metrics shows the collector's counters, store health and per-client gauges from the
    service's own registry, never from prometheus_client's global one.
    """
    await fill(sqlite_store)
    registry = CollectorRegistry()
    ingest = Ingest(sqlite_store, None, reactor)
    factory = ServerFactory(ingest, reactor, 1000, 60.0)
    metrics = ServerMetrics(
        registry, reactor, lambda: len(factory.connections), lambda: ingest.unsettled
    )
    metrics.received(received(b"x", "c", T0))
    metrics.acknowledged("0" * 64)
    metrics.dropped("too_large")
    metrics.committed([received(b"x", "c", reactor.seconds() - 0.02)] * 3, 1)
    metrics.conflict()
    metrics.decided(0.02)
    client = Client(StatsRoot(reads_over(sqlite_store, registry)))
    reply = await client.get("/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    text = reply.text
    assert metric(text, "ethtwisted_messages_received_total") == 1
    assert metric(text, "ethtwisted_messages_stored_total") == 1
    assert metric(text, "ethtwisted_messages_duplicate_total") == 2
    assert metric(text, "ethtwisted_acks_sent_total") == 1
    assert metric(text, "ethtwisted_rejected_total", '{reason="too_large"}') == 1
    assert metric(text, "ethtwisted_rejected_total", '{reason="idle"}') == 0
    assert metric(text, "ethtwisted_store_latency_seconds_count") == 3
    assert metric(text, "ethtwisted_store_conflicts_total") == 1
    assert metric(text, "ethtwisted_fleet_decision_seconds_sum") == 0.02
    assert metric(text, "ethtwisted_fleet_decision_seconds_bucket", '{le="0.025"}') == 1
    assert metric(text, "ethtwisted_fleet_decision_seconds_bucket", '{le="0.01"}') == 0
    assert metric(text, "ethtwisted_store_latency_seconds_bucket", '{le="0.01"}') == 0
    assert metric(text, "ethtwisted_connections_open") == 0
    assert metric(text, "ethtwisted_store_up", '{store="sql"}') == 1
    assert metric(text, "ethtwisted_client_last_block", '{chain_id="1",client="beta"}') == 9
    assert metric(text, "ethtwisted_client_lag_blocks", '{chain_id="1",client="beta"}') == 3
    assert metric(text, "ethtwisted_client_lag_blocks", '{chain_id="5",client="gamma"}') == 0
    assert metric(text, "ethtwisted_client_last_seen_timestamp_seconds", '{client="alpha"}') == (
        T0 + 12
    )
    assert "ethtwisted" not in prometheus_client.generate_latest().decode()


@pytest_twisted.ensureDeferred
async def test_metrics_of_nodes_and_propagation() -> None:
    """
    /metrics shows each client's node peers, sync state and version (one series per client,
    the old version's gone when it changes), read from the store at each scrape, and its
    propagation delay behind the fleet's first sighting at its p50 and p95; a status that does
    not say leaves its gauge out.
    """
    store = MemoryStore()
    delays = {"alpha": [0.0] * 3, "beta": [0.1, 0.2, 0.3], "gamma": [0.0, 0.4, 1.5]}
    for n in range(3):
        payload = block_json(block(1, n + 1))
        store.store([received(payload, c, T0 + n + d[n]) for c, d in delays.items()])
    store.store([
        StatusReport("alpha", T0 + 5, Status("anvil/1.0", 1, 4, False)),
        StatusReport("beta", T0 + 5, Status("geth/1.14", 1, 0, SyncProgress(2, 3))),
        StatusReport("gamma", T0 + 5, Status(None, 1, None, None)),
    ])  # fmt: skip
    client = Client(StatsRoot(Reads(reactor, store, store)))
    text = (await client.get("/metrics")).text
    assert metric(text, "ethtwisted_client_peers", '{client="alpha"}') == 4
    assert metric(text, "ethtwisted_client_peers", '{client="beta"}') == 0
    assert metric(text, "ethtwisted_client_syncing", '{client="alpha"}') == 0
    assert metric(text, "ethtwisted_client_syncing", '{client="beta"}') == 1
    assert 'ethtwisted_client_peers{client="gamma"}' not in text
    assert 'ethtwisted_client_syncing{client="gamma"}' not in text
    info = "ethtwisted_client_node_info"
    assert metric(text, info, '{client="alpha",version="anvil/1.0"}') == 1
    assert metric(text, info, '{client="beta",version="geth/1.14"}') == 1
    assert 'client="gamma"' not in "".join(re.findall(rf"^{info}.*$", text, re.MULTILINE))
    p50, p95 = (
        "ethtwisted_client_propagation_p50_seconds",
        "ethtwisted_client_propagation_p95_seconds",
    )
    assert metric(text, p50, '{client="alpha"}') == 0
    assert metric(text, p50, '{client="beta"}') == pytest.approx(0.2)
    assert metric(text, p95, '{client="beta"}') == pytest.approx(0.3)
    assert metric(text, p50, '{client="gamma"}') == pytest.approx(0.4)
    assert metric(text, p95, '{client="gamma"}') == pytest.approx(1.5)

    store.store([StatusReport("alpha", T0 + 6, Status("anvil/1.1", 1, 5, False))])
    text = (await client.get("/metrics")).text
    assert re.findall(rf'^{info}{{client="alpha",.*$', text, re.MULTILINE) == [
        f'{info}{{client="alpha",version="anvil/1.1"}} 1.0'
    ]
    assert metric(text, "ethtwisted_client_peers", '{client="alpha"}') == 5


class PendingLedger(MemoryLedger):
    """The ledger in memory, whose propagation reads answer when the test says."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.asked: list[Deferred[dict[str, list[float]]]] = []

    def propagation(self, clients: Sequence[str], limit: int) -> Deferred[dict[str, list[float]]]:
        self.asked.append(Deferred())
        return self.asked[-1]


@pytest_twisted.ensureDeferred
async def test_metrics_read_the_propagation_once_a_minute_and_never_wait_for_it() -> None:
    """
    A scrape asks for every client's propagation when none was asked in the last 60 s and
    answers without waiting for it: the gauges show each answer from the next scrape on, and
    one read failing is a warning that leaves them as they were.
    """
    clock = Clock()
    store = MemoryStore()
    ledger = store.ledger = PendingLedger(store)
    store.store([received(block_json(block(1, 1)), c, T0) for c in ("alpha", "beta")])
    client = Client(StatsRoot(Reads(clock, store, store)))
    p50 = "ethtwisted_client_propagation_p50_seconds"
    assert p50 + "{" not in (await client.get("/metrics")).text
    assert len(ledger.asked) == 1
    ledger.asked[0].callback({"alpha": [0.0], "beta": [250.0]})
    clock.advance(59)
    text = (await client.get("/metrics")).text
    assert metric(text, p50, '{client="beta"}') == 0.25
    assert len(ledger.asked) == 1
    clock.advance(1)
    with capturedLogs() as events:
        text = (await client.get("/metrics")).text
        assert len(ledger.asked) == 2
        ledger.asked[1].errback(RuntimeError("the ledger is away"))
    assert [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn] == [
        "stats: cannot read the propagation for metrics: the ledger is away"
    ]
    assert metric((await client.get("/metrics")).text, p50, '{client="beta"}') == 0.25
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_agent_resource_serves_a_given_registry_and_check() -> None:
    """
    The agent's resource (for eth-client) serves /metrics from the registry it is given and
    /healthz from the check it is given, as the stats site does.
    """
    registry = CollectorRegistry()
    reconnects = Counter(
        "reconnects", "Reconnections.", namespace="ethtwisted_client", registry=registry
    )
    reconnects.inc(2)
    checks: dict[str, str | None] = {"node": None, "server": None}
    client = Client(agent_resource(registry, lambda: succeed(dict(checks))))
    reply = await client.get("/metrics")
    assert metric(reply.text, "ethtwisted_client_reconnects_total") == 2
    assert (await client.get("/healthz")).status == 200
    checks["node"] = "unreachable for 45 s"
    reply = await client.get("/healthz")
    assert (reply.status, reply.json()["checks"]["node"]) == (503, "unreachable for 45 s")
    client = Client(agent_resource(registry, lambda: checks, token=TOKEN))
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", TOKEN)).status == 200


class SlowClients(MemoryStore):
    """A store in memory whose clients query never answers."""

    def clients(self, limit: int, *args: Any, **kwargs: Any) -> Deferred[list[ClientRecord]]:
        return Deferred()


@pytest_twisted.ensureDeferred
async def test_scrape_gone_is_not_a_metrics_failure() -> None:
    """
    A metrics refresh abandoned because the scraper went away is cancelled quietly, not
    logged as a failure to read the clients.
    """
    clock = Clock()
    store = SlowClients()
    reads = Reads(clock, store, store)
    with capturedLogs() as events:
        refreshing = Deferred.fromCoroutine(reads.refresh_metrics())
        refreshing.cancel()
        with pytest.raises(CancelledError):
            await refreshing
    assert above_debug(events) == []
    assert not clock.getDelayedCalls()


# -- hostile requests -------------------------------------------------------------------------

SHA = payload_hash(b"the one payload")


def one_payload_store() -> MemoryStore:
    """
    A store holding one payload that answers at once: the site in memory without threads.
    """
    store = MemoryStore()
    one = Block(1, 7, "0x" + "ab" * 32, "0x" + "cd" * 32, 1_600_000_007)
    store.store([Received(SHA, "the one payload", "10.0.0.1", "alpha", T0, one)])
    return store


def hostile_sites(clock: Clock) -> dict[str, Any]:
    store = one_payload_store()
    reads = Reads(clock, store, store, store, lambda: None)
    registry = CollectorRegistry()
    return {
        "open": StatsRoot(reads),
        "token": StatsRoot(reads, TOKEN),
        "agent": agent_resource(registry, lambda: {"node": None}),
        "agent-token": agent_resource(registry, lambda: {"node": None}, TOKEN),
    }


# What Twisted's HTTP parser itself refuses (before any resource of ours is asked) is left out.
header_bytes = st.binary(max_size=100).map(lambda b: b.translate(None, b"\x00\r\n"))
segments = st.sampled_from(
    ["", "api", "v1", "blocks", "clients", "head", "arrivals", "_cat", "hashes", "metrics",
     "healthz", SHA, SHA.upper(), "..", "%"]
).map(str.encode) | st.binary(max_size=80)  # fmt: skip
routes = st.sampled_from(
    [[], ["api", "v1"], ["api", "v1", "blocks"], ["api", "v1", "blocks", SHA],
     ["api", "v1", "clients"], ["api", "v1", "head"], ["api", "v1", "arrivals"],
     ["api", "v1", "events"], ["_cat"],
     ["_cat", "hashes"], ["_cat", "hashes", SHA], ["_cat", "clients"], ["metrics"], ["healthz"]]
).map(lambda route: [s.encode() for s in route])  # fmt: skip
paths = (
    routes
    | st.builds(lambda route, tail: route + tail, routes, st.lists(segments, max_size=2))
    | st.lists(segments, max_size=6)
)
argument_names = st.sampled_from(
    [b"limit", b"minutes", b"before", b"token", b"since", b"client"]
) | st.binary(max_size=9)
argument_values = (
    st.binary(max_size=60)
    | st.sampled_from([TOKEN, SHA, "0", "1", "-1", "1e3", "\u0663", "\ud800"]).map(
        lambda t: t.encode("utf-8", "surrogatepass")
    )
    | st.integers(1, 5000).map(lambda n: b"9" * n)
)
headers = st.lists(
    st.tuples(
        st.sampled_from([b"Authorization", b"Accept", b"X-Forwarded-For", b"Cookie"]),
        header_bytes
        | st.sampled_from([b"Bearer ", b"bearer  "]).map(lambda scheme: scheme + TOKEN.encode())
        | header_bytes.map(lambda b: b"Bearer " + b),
    ),
    max_size=4,
)


@pytest.mark.property
@given(
    site=st.sampled_from(["open", "token", "agent", "agent-token"]),
    method=st.sampled_from(["GET", "HEAD"])
    | st.sampled_from(["POST", "PUT", "DELETE", "OPTIONS", "BREW"]),
    path=paths,
    query=st.lists(st.tuples(argument_names, argument_values), max_size=2),
    header_list=headers,
)
def test_hostile_requests_cost_only_a_4xx(
    site: str,
    method: str,
    path: list[bytes],
    query: list[tuple[bytes, bytes]],
    header_list: list[tuple[bytes, bytes]],
) -> None:
    """
    Whatever the path, query string and header bytes, every site of ours answers below 500,
    with the security headers, logging nothing above debug and leaving no timer behind.
    """
    clock = Clock()
    stub = stub_treq(hostile_sites(clock)[site])
    url = "http://stats.test/" + "/".join(quote(p, safe="") for p in path)
    if query:
        url += "?" + "&".join(quote(k, safe="") + "=" + quote(v, safe="") for k, v in query)
    request_headers: dict[bytes, list[bytes]] = {}
    for name, value in header_list:
        request_headers.setdefault(name, []).append(value)
    with capturedLogs() as events:
        answers: list[Any] = []
        stub.request(method, url, headers=request_headers).addBoth(answers.append)
        stub.flush()
        (response,) = answers
        assert not isinstance(response, Failure), response
        bodies: list[Any] = []
        stub.content(response).addBoth(bodies.append)
        stub.flush()
        assert len(bodies) == 1 and isinstance(bodies[0], bytes)
    flat = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
    assert response.code < 500, (response.code, bodies[0][:200])
    assert has_security_headers(Reply(response.code, flat, bodies[0])), flat
    assert above_debug(events) == []
    assert not clock.getDelayedCalls()


# -- over real sockets ------------------------------------------------------------------------


def chain_payloads(chain_id: int, numbers: range) -> list[bytes]:
    return [block_json(block(chain_id, n)) for n in numbers]


async def feed_and_check(server: Running, reader: Running) -> None:
    """
    Feed the collector from three clients, then check every endpoint of C{reader} against
    what was sent, and that the server's own stats API answers the same.
    """
    assert server.collector_port is not None
    one = await connect_peer(server.collector_port, "node-one")
    two = await connect_peer(server.collector_port, "node-two")
    old = await connect_peer(server.collector_port)
    await one.send(chain_payloads(31337, range(0, 8)))
    await two.send(chain_payloads(31337, range(0, 5)))
    await old.send([block_html(n) for n in (1, 2)])

    for running in (server, reader):
        heads = (await running.get("/api/v1/head", TOKEN)).json()["heads"]
        assert [(h["chain_id"], h["number"]) for h in heads] == [(None, 2), (31337, 7)]
        clients = (await running.get("/api/v1/clients", TOKEN)).json()["clients"]
        by_name = {c["client"]: c for c in clients}
        assert set(by_name) == {"node-one", "node-two", "127.0.0.1"}
        assert (by_name["node-two"]["messages"], by_name["node-two"]["lag"]) == (5, 3)
        assert by_name["node-one"]["lag"] == 0
        blocks = (await running.get("/api/v1/blocks?limit=3", TOKEN)).json()
        assert [b["number"] for b in blocks["blocks"]] == [2, 1, 7]
        one_block = await running.get(f"/api/v1/blocks/{blocks['blocks'][2]['sha256']}", TOKEN)
        assert json.loads(one_block.json()["payload"])["number"] == 7
        hashes = table_rows((await running.get("/_cat/hashes")).text)
        assert len(hashes) == 1 + 8 + 2
        assert hashes[1][0] == payload_hash(block_html(2))
        assert table_rows((await running.get("/_cat/clients")).text) == [
            ["client", "count"],
            ["127.0.0.1", "15"],
        ]
        payload = await running.get(f"/_cat/hashes/{payload_hash(block_html(1))}")
        assert payload.body == block_html(1)
        health = await running.get("/healthz")
        assert health.status == 200, health.text
        assert (await running.get("/api/v1/head")).status == 401
        page = await running.get("/?token=" + TOKEN)
        assert page.status == 200
        metrics = (await running.get("/metrics", TOKEN)).text
        assert metric(metrics, "ethtwisted_store_up", '{store="sql"}') == 1
        labels = '{chain_id="31337",client="node-two"}'
        assert metric(metrics, "ethtwisted_client_lag_blocks", labels) == 3

    metrics = (await server.get("/metrics", TOKEN)).text
    assert metric(metrics, "ethtwisted_messages_received_total") == 15
    assert metric(metrics, "ethtwisted_messages_stored_total") == 10
    assert metric(metrics, "ethtwisted_messages_duplicate_total") == 5
    assert metric(metrics, "ethtwisted_acks_sent_total") == 15
    assert metric(metrics, "ethtwisted_connections_open") == 3
    for s in (one, two, old):
        s.close()


@pytest_twisted.ensureDeferred
async def test_over_sockets_with_sqlite(tmp_path: Path) -> None:
    """
    eth-server with --stats over SQLite, and eth-stats read-only beside it on the same file:
    both answer every endpoint over real sockets, with the same answers.
    """
    db = f"sqlite:///{tmp_path / 'eth.sqlite'}"
    server = await stats_server(["--db", db, "--stats-token", TOKEN])
    try:
        reader = await start_stats(["--db", db], {"ETH_STATS_TOKEN": TOKEN})
        try:
            await feed_and_check(server, reader)
        finally:
            await reader.stop()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_over_sockets_with_mysql_and_redis(mysql_db: MySQLDatabase, redis: Redis) -> None:
    """
    Over MariaDB and Redis: /_cat answers from Redis and agrees with what SQL says; eth-stats
    reads the same stores; /healthz turns 503 naming Redis when Redis goes away.
    """
    environ = {"ETH_MYSQL_PASSWORD": mysql_db.password}
    stores = ["--db", mysql_db.url, "--redis", redis.url, "--stats-token", TOKEN]
    server = await stats_server(stores, environ)
    try:
        reader = await start_stats(stores, environ)
        try:
            await feed_and_check(server, reader)
            assert redis.execute("ZCARD", "eth:hashes") == 10
            sql_only = await start_stats(stores[:2] + stores[4:], environ)
            try:
                for path in ("/_cat/hashes", "/_cat/clients"):
                    from_redis = await reader.get(path)
                    from_sql = await sql_only.get(path)
                    assert from_redis.text == from_sql.text, path
            finally:
                await sql_only.stop()
            redis.kill()
            try:
                health = await reader.get("/healthz")
                assert health.status == 503
                assert health.json()["checks"]["sql"] == "ok"
                assert health.json()["checks"]["redis"] != "ok"
                assert mysql_db.password not in health.text
            finally:
                redis.start()
        finally:
            await reader.stop()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_eth_stats_waits_for_tables_then_fails_in_time(tmp_path: Path) -> None:
    """
    eth-stats never creates the database: over a missing SQLite file it waits up to --wait
    seconds, then ends with one line naming the store.
    """
    path = tmp_path / "missing.sqlite"
    failed: list[str] = []
    options = StatsOptions()
    options.environ = {}
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--db", f"sqlite:///{path}",
                          "--wait", "0.5"])  # fmt: skip
    service = stats_tap.makeService(options, reactor)
    assert isinstance(service, MultiService)
    stats = service.getServiceNamed("stats")
    assert isinstance(stats, WebService)
    import ethtwisted.startup

    original = ethtwisted.startup.fatal
    ethtwisted.startup.fatal = lambda _reactor, message: failed.append(message)  # type: ignore[assignment]
    try:
        with capturedLogs():
            service.startService()
            await wait_for(lambda: bool(failed))
    finally:
        ethtwisted.startup.fatal = original
        await service.stopService()
    assert failed[0].startswith(f"cannot reach sqlite:///{path} within 0.5 s")
    assert not path.exists()
    assert stats.ports == []


def test_stats_options() -> None:
    """
    A bare port means loopback; the token comes from a flag, a file or $ETH_STATS_TOKEN, not
    from two at once; a bad endpoint is a usage error.
    """
    options = StatsOptions()
    options.environ = {"ETH_STATS_TOKEN": "from-env"}
    options.parseOptions(["--listen", "8081"])
    assert options["listen"] == "tcp:8081:interface=127.0.0.1"
    assert options["stats_token"] == "from-env"
    server = ServerOptions()
    server.environ = {}
    server.parseOptions(["--stats", "9090"])
    assert server["stats"] == "tcp:9090:interface=127.0.0.1"
    assert server["stats_token"] is None
    server = ServerOptions()
    server.environ = {}
    server.parseOptions([])
    assert server["stats"] is None
    bad = (["--stats-token", "a", "--stats-token-file", "/nonexistent"], ["--listen", "nope:1"])
    for args in bad:
        options = StatsOptions()
        options.environ = {}
        with pytest.raises(SystemExit) as exit_info:
            options.parseOptions(args)
        assert str(exit_info.value.code).startswith("eth-stats: ")


def test_an_answer_is_not_written_to_a_client_that_went_away() -> None:
    """
    When the client goes away while an endpoint is making its answer, the answer is not
    written (the endpoint learns it from C{request.notifyFinish()}, not from the request's
    private state), even if the work finishes after all.
    """
    from twisted.web.test.requesthelper import DummyRequest

    from ethtwisted.web.resource import Endpoint, Response, text_response

    # A piece of work that, cancelled, finishes anyway.
    work: Deferred[None] = Deferred(lambda d: d.callback(None))

    class Slow(Endpoint):
        async def handle(self, request: Any, path: list[str]) -> Response:
            await work
            return text_response("late\n")

    request = DummyRequest([b""])
    Slow(None).render(cast(Any, request))
    request.processingFailed(Failure(ConnectionDone("gone")))
    assert work.called
    assert request.written == [] and request.finished == 0
