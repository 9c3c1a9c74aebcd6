"""
The storage contracts: one set of cases, run against every backend of each interface.

- The durable store and its reader (L{IBlockStore}, L{IBlockReader}): SQLite, MySQL (a private
  MariaDB) and L{MemoryStore}.
- The counters and their reader (L{ICounterReader}, with L{ICounterStore} where the backend counts
  on its own): SQLite and MySQL (which count what they store), Redis, L{MemoryStore} and
  L{MemoryCounters}.

Where two backends answer the same traffic differently, one of them is wrong.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from ethtwisted.frames import Status, SyncProgress
from ethtwisted.interfaces import (
    CHAIN_WINDOW,
    MAX_CHAIN_RANGE,
    IBlockReader,
    IBlockStore,
    ICounterReader,
    ICounterStore,
    ILedger,
)
from ethtwisted.protocol import (
    MAX_BLOCK_INT,
    Block,
    block_html,
    block_json,
    parse_block,
    payload_hash,
)
from ethtwisted.records import (
    BlockRecord,
    ChainBlock,
    ChainRange,
    ClientRecord,
    Head,
    NodeRecord,
    Received,
    Reorg,
    SightingRecord,
    StatusReport,
)
from ethtwisted.storage import fleet_finalized, redis_store
from ethtwisted.storage.chains import REPORTER_HEIGHTS, chain_reader
from ethtwisted.storage.memory_counters import MemoryCounters
from ethtwisted.storage.memory_store import MemoryStore
from ethtwisted.storage.memory_tables import Tables
from ethtwisted.storage.redis_store import RedisCounters, parse_redis_url
from ethtwisted.storage.sql_pool import parse_db_url
from ethtwisted.storage.sql_store import SQLStore
from tests.blocks import T0, BlockStore, block, received, store_reorged_chain
from tests.helpers import ROLLBACK_FAILED
from tests.services import MySQLDatabase, Redis

SQL_TABLES = {
    "ethereum_data",
    "eth_blocks",
    "eth_clients",
    "eth_client_ids",
    "eth_sightings",
    "eth_node_status",
    "eth_events",
    "eth_presence",
    "eth_states",
    "eth_state_events",
    "eth_fleet",
    "eth_webhooks",
}
MYSQL_CONNECT_TIMEOUT = 10.0  # the connect_timeout of sql_pool.connection_pool
MARGIN = 5.0  # for a loaded machine: the answer must come within the store's timeout plus this


def newest_first(batch: Sequence[Received]) -> list[str]:
    """
    The SHA256s of C{batch} in the order every reader lists them: first sighting descending,
    then SHA256 descending.
    """
    first: dict[str, float] = {}
    for r in batch:
        first.setdefault(r.sha256, r.received)
    return sorted(first, key=lambda h: (first[h], h), reverse=True)


async def all_fail_within(calls: Sequence[Callable[[], Deferred[Any]]], seconds: float) -> None:
    """
    Make every call at once; each must fail, and within C{seconds} of the start.
    """
    started = reactor.seconds()
    answers = [Deferred.fromCoroutine(_failure_time(call)) for call in calls]
    for n, answer in enumerate(answers):
        assert await answer - started < seconds, f"call {n} took too long to fail"


async def _failure_time(call: Callable[[], Deferred[Any]]) -> float:
    with pytest.raises(Exception):  # noqa: B017 (each backend has its own error)
        await call()
    return reactor.seconds()


# -- the backends -----------------------------------------------------------------------------


@dataclass
class BlockBackend:
    """
    One durable backend: opens stores over the same data, lists its tables, and goes down.
    """

    name: str
    opener: Callable[[bool], BlockStore]
    list_tables: Callable[[], Awaitable[set[str]]]
    take_down: Callable[[BlockStore], Awaitable[BlockStore]]
    """Make the backend unreachable for C{store} (which was up): a store that is down."""
    timeout: float
    """How long a store of this backend may take to say that it is down."""
    opened: list[BlockStore] = field(default_factory=list)

    def open(self, read_only: bool = False) -> BlockStore:
        store = self.opener(read_only)
        self.opened.append(store)
        return store

    def open_url(self, url: str) -> SQLStore:
        store = SQLStore(parse_db_url(url), reactor)
        self.opened.append(store)
        return store

    async def writer(self) -> BlockStore:
        store = self.open()
        await store.start()
        return store


def _sqlite_tables(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def sqlite_backend(tmp_path: Path) -> BlockBackend:
    path = tmp_path / "eth.sqlite"

    async def down(store: BlockStore) -> BlockStore:
        # SQLite has no server to stop: a store whose file cannot be opened is one that is down.
        return backend.open_url(f"sqlite:///{tmp_path}/missing-folder/eth.sqlite")

    backend = BlockBackend(
        "sqlite",
        lambda read_only: SQLStore(parse_db_url(f"sqlite:///{path}"), reactor, read_only),
        lambda: deferToThread(_sqlite_tables, path),
        down,
        timeout=0.0,
    )
    return backend


def mysql_backend(db: MySQLDatabase) -> BlockBackend:
    url = parse_db_url(db.url).with_password(db.password)

    async def tables() -> set[str]:
        rows = await deferToThread(db.query, "SHOW TABLES")
        return {name for (name,) in rows}

    async def down(store: BlockStore) -> BlockStore:
        await deferToThread(db.server.kill)
        return store

    return BlockBackend(
        "mysql",
        lambda read_only: SQLStore(url, reactor, read_only),
        tables,
        down,
        timeout=MYSQL_CONNECT_TIMEOUT,
    )


def memory_backend() -> BlockBackend:
    tables = Tables()

    async def list_tables() -> set[str]:
        return SQL_TABLES if tables.created else set()

    async def down(store: BlockStore) -> BlockStore:
        assert isinstance(store, MemoryStore)
        store.down = ConnectionRefusedError("Connection refused")
        return store

    return BlockBackend(
        "memory",
        lambda read_only: MemoryStore(tables, read_only),
        list_tables,
        down,
        timeout=0.0,
    )


@pytest_twisted.async_yield_fixture(params=["sqlite", "mysql", "memory"])
async def blocks(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlockBackend]:
    """
    Each durable backend in turn, empty; every store it opened is closed afterwards.
    """
    if request.param == "sqlite":
        backend = sqlite_backend(tmp_path)
    elif request.param == "mysql":
        backend = mysql_backend(request.getfixturevalue("mysql_db"))
    else:
        backend = memory_backend()
    yield backend
    for store in backend.opened:
        await store.close()


@dataclass
class Counters:
    """
    One backend of the counters: C{reader} answers for it, C{count} feeds it traffic.
    """

    name: str
    reader: Any
    take_down: Callable[[], Awaitable[Any]]
    """Make the backend unreachable: a reader that is down."""
    timeout: float

    def count(self, batch: Sequence[Received], reader: Any = None) -> Deferred[Any]:
        """
        Count C{batch}: the SQL-shaped stores count what they store, the others what they record.
        """
        reader = self.reader if reader is None else reader
        return (
            reader.store(batch)
            if IBlockStore.providedBy(reader)
            else reader.record(batch, uuid.uuid4().hex)
        )


@pytest_twisted.async_yield_fixture(
    params=["sqlite", "mysql", "redis", "memory", "memory-counters"]
)
async def counters(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Counters]:
    """
    Each backend of the counters in turn, empty: the SQL stores and L{MemoryStore}, Redis and
    L{MemoryCounters}.
    """
    if request.param == "redis":
        server: Redis = request.getfixturevalue("redis")
        counters = RedisCounters(parse_redis_url(server.url), reactor)

        async def kill() -> RedisCounters:
            await deferToThread(server.kill)
            return counters

        yield Counters("redis", counters, kill, redis_store.TIMEOUT)
        await counters.close()
    elif request.param == "memory-counters":
        memory = MemoryCounters()

        async def refuse() -> MemoryCounters:
            memory.down = ConnectionRefusedError("Connection refused")
            return memory

        yield Counters("memory-counters", memory, refuse, 0.0)
    else:
        if request.param == "sqlite":
            backend = sqlite_backend(tmp_path)
        elif request.param == "mysql":
            backend = mysql_backend(request.getfixturevalue("mysql_db"))
        else:
            backend = memory_backend()
        store = await backend.writer()
        yield Counters(request.param, store, lambda: backend.take_down(store), backend.timeout)
        for opened in backend.opened:
            await opened.close()


# -- the durable store and its reader ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_provides_the_interfaces(blocks: BlockBackend) -> None:
    """
    Every durable backend is a block store with both readers.
    """
    store = await blocks.writer()
    assert verifyObject(IBlockStore, store)
    assert verifyObject(IBlockReader, store)
    assert verifyObject(ICounterReader, store)


@pytest_twisted.ensureDeferred
async def test_each_payload_is_stored_once_under_its_first_sighting(blocks: BlockBackend) -> None:
    """
    C{store} fires with how many payloads were new, counting a payload repeated in a batch or
    stored by an earlier batch once; a payload keeps the time and client of its first sighting.
    """
    store = await blocks.writer()
    a, b, c = block_json(block(1, 1)), block_html(4242), b"no block at all"
    assert await store.store([received(a, "x", T0 + 1), received(a, "y", T0 + 2)]) == 1
    assert await store.store([received(b, "y", T0 + 3), received(a, "y", T0 + 4)]) == 1
    assert await store.store([received(a, "x", T0 + 5), received(b, "x", T0 + 6)]) == 0
    assert await store.store([received(c, "z", T0 + 7), received(c, "x", T0 + 6)]) == 1
    assert await store.store([]) == 0

    assert await store.payload(payload_hash(a)) == a.decode()
    assert await store.payload(payload_hash(b"never sent")) is None
    one = block(1, 1)
    assert await store.block(payload_hash(a)) == BlockRecord(
        payload_hash(a), T0 + 1, "x", 1, 1, one.hash, one.parent_hash, one.timestamp
    )
    assert await store.block(payload_hash(b)) == BlockRecord(
        payload_hash(b), T0 + 3, "y", None, 4242, None, None, None
    )
    assert await store.block(payload_hash(c)) == BlockRecord(
        payload_hash(c), T0 + 7, "z", None, None, None, None, None
    )
    assert await store.block(payload_hash(b"never sent")) is None


@pytest_twisted.ensureDeferred
async def test_clients_count_every_message_and_keep_their_last_report(
    blocks: BlockBackend,
) -> None:
    """
    Each client's row counts every message it sent (repeats too), keeps its first sighting,
    takes the address and time of its last message and the last block it reported (a payload
    that is no block leaves it); clients come in the order of their names, by code point, and
    names that differ only in case are different clients.
    """
    store = await blocks.writer()
    await store.store(
        [
            received(block_json(block(1, 5)), "alpha", T0 + 1, "10.0.0.1"),
            received(block_json(block(1, 5)), "alpha", T0 + 2, "10.0.0.1"),
            received(b"opaque", "alpha", T0 + 3, "10.0.0.9"),
            received(block_json(block(1, 4)), "beta", T0 + 3, "10.0.0.2"),
            received(block_html(7), "Alpha", T0 + 3, "10.0.0.3"),
        ]
    )
    await store.store(
        [
            received(b"opaque 2", "beta", T0 + 4, "10.0.0.2"),
            received(block_json(block(1, 6)), "gamma", T0 + 2, "10.0.0.4"),
        ]
    )
    assert await store.clients(10) == [
        ClientRecord("Alpha", "10.0.0.3", 1, T0 + 3, T0 + 3, None, 7),
        ClientRecord("alpha", "10.0.0.9", 3, T0 + 1, T0 + 3, 1, 5),
        ClientRecord("beta", "10.0.0.2", 2, T0 + 3, T0 + 4, 1, 4),
        ClientRecord("gamma", "10.0.0.4", 1, T0 + 2, T0 + 2, 1, 6),
    ]
    assert [c.client for c in await store.clients(2)] == ["Alpha", "alpha"]


@pytest_twisted.ensureDeferred
async def test_clients_page_by_name_chain_and_among_names(blocks: BlockBackend) -> None:
    """
    C{clients} pages by name: C{after} continues after a name (stored or not), so pages of any
    size visit each client once, names beyond the ASCII ones included; C{chain_id} keeps the
    clients whose last block is of that chain; C{names} keeps those among them (unknown names
    are none), over more names than one statement asks for, and with the other two.
    """
    store = await blocks.writer()
    names = [f"n{i:04d}" for i in range(1200)] + ["Z", "z", "é-node", "ノード"]
    await store.store(
        [received(block_json(block(1 + i % 3, i)), n, T0 + i) for i, n in enumerate(names)]
    )
    everyone = sorted(names)
    for size in (1, 7, 500):
        seen: list[str] = []
        after = None
        for _ in range(len(names) + 1):
            page = await store.clients(size, after)
            if not page:
                break
            seen += [c.client for c in page]
            after = page[-1].client
        assert seen == everyone
    assert [c.client for c in await store.clients(3, "n1199")] == ["z", "é-node", "ノード"]
    assert [c.client for c in await store.clients(2, "m")] == ["n0000", "n0001"]
    on_two = await store.clients(1000, None, 2)
    assert [c.client for c in on_two] == [n for n in everyone if names.index(n) % 3 == 1]
    wanted = [*everyone[::2], "never-seen"]
    assert [c.client for c in await store.clients(2000, None, None, wanted)] == everyone[::2]
    assert [c.client for c in await store.clients(5, "n1000", 1, wanted)] == [
        n for n in everyone[::2] if n > "n1000" and names.index(n) % 3 == 0
    ][:5]
    assert await store.clients(10, None, None, []) == []


@pytest_twisted.ensureDeferred
async def test_blocks_newest_first_and_the_before_cursor(blocks: BlockBackend) -> None:
    """
    C{blocks} lists payloads by first sighting, newest first, ties by descending SHA256;
    C{before} continues after the given payload, so paging visits each once; a C{before} that
    names no stored payload is L{None}, the last one an empty page.
    """
    store = await blocks.writer()
    batch = [received(f"payload {i}".encode(), "c", T0 + i // 3) for i in range(10)]
    batch.append(received(b"payload 4", "late", T0 + 50))
    await store.store(batch[:6])
    await store.store(batch[6:])
    order = newest_first(batch)
    assert len(order) == 10

    listed = await store.blocks(100)
    assert listed is not None
    assert [b.sha256 for b in listed] == order
    assert [b.first_seen for b in listed] == [T0 + 3] + [T0 + 2] * 3 + [T0 + 1] * 3 + [T0] * 3
    assert [h for h, _ in await store.latest_hashes(100)] == order

    for size in (1, 3, 4):
        seen: list[str] = []
        page = await store.blocks(size)
        while page:
            assert len(page) <= size
            seen += [b.sha256 for b in page]
            page = await store.blocks(size, before=page[-1].sha256)
        assert seen == order, size
    assert await store.blocks(2, before=order[3]) == listed[4:6]
    assert await store.blocks(5, before=order[-1]) == []
    assert await store.blocks(5, before=payload_hash(b"never sent")) is None
    assert await store.blocks(0) == []


@pytest_twisted.ensureDeferred
async def test_heads_per_chain_that_clients_report(blocks: BlockBackend) -> None:
    """
    C{heads} gives, for each chain a client reports, by chain id (blocks known only by number
    first), the highest block a client is on now (its last report; of its blocks at that
    height, the one it saw last): a client that went back to a lower block no longer holds the
    head up; of two blocks at that height, the one first seen last (then the higher block
    hash); chains that no client reports any more are left out, and C{limit} bounds the
    chains.  With no sighting left to tell who is on which block, the highest stored block by
    the same rule.
    """
    store = await blocks.writer()
    await store.store(
        [
            received(block_json(block(1, 10)), "a", T0 + 1),
            received(block_json(block(1, 12)), "a", T0 + 2),
            received(block_json(block(1, 12, fork=1)), "b", T0 + 3),
            received(block_json(block(1, 11)), "b", T0 + 4),
            received(block_json(block(5, 700)), "c", T0 + 5),
            received(block_json(block(9, 3)), "d", T0 + 6),
            received(block_html(42), "e", T0 + 7),
            received(block_html(40), "e", T0 + 8),
            received(b"opaque", "f", T0 + 9),
            received(block_json(block(10, 8, fork=1)), "g", T0 + 11),
            received(block_json(block(10, 8, fork=2)), "h", T0 + 11),
            received(block_json(block(11, 5)), "p", T0 + 11),
            received(block_json(block(11, 5, fork=1)), "q", T0 + 12),
            # "k" goes over from block 4' to block 4 of chain 12, where "l" is.
            received(block_json(block(12, 4)), "l", T0 + 11),
            received(block_json(block(12, 4, fork=1)), "k", T0 + 12),
            received(block_json(block(12, 4)), "k", T0 + 13),
        ]
    )
    # "d" moves on to chain 5, where it is behind; nobody reports chain 9 any more.
    await store.store([received(block_json(block(5, 650)), "d", T0 + 10)])
    heads = [
        Head(None, 40, None, T0 + 8),
        Head(1, 12, block(1, 12).hash, T0 + 2),
        Head(5, 700, block(5, 700).hash, T0 + 5),
        Head(10, 8, block(10, 8, fork=2).hash, T0 + 11),
        Head(11, 5, block(11, 5, fork=1).hash, T0 + 12),
        Head(12, 4, block(12, 4).hash, T0 + 11),
    ]
    assert await store.heads(10) == heads
    assert await store.heads(2) == heads[:2]
    assert await store.heads(0) == []
    assert await store.ledger.prune_sightings(T0 + 86400, 100) == 17
    assert (await store.heads(10))[-1] == Head(12, 4, block(12, 4, fork=1).hash, T0 + 12)


@pytest_twisted.ensureDeferred
async def test_arrivals_per_bucket(blocks: BlockBackend) -> None:
    """
    C{arrivals} counts payloads first seen at or after C{since} per C{bucket} seconds, keyed by
    the start of the bucket, oldest first, empty buckets left out; a repeat is no new arrival.
    C{first_seen} is when the payload stored first was first seen, none before one is stored.
    """
    store = await blocks.writer()
    assert await store.first_seen() is None
    minute = 1_700_000_040.0  # a multiple of 60
    times = [minute - 61, minute - 60.5, minute - 0.25, minute, minute, minute + 59.75]
    times += [minute + 180, minute + 7200]
    batch = [received(f"p{i}".encode(), "c", t) for i, t in enumerate(times)]
    await store.store(batch)
    await store.store([received(b"p0", "c", minute + 1)])
    later = [(minute - 60, 1), (minute, 3), (minute + 180, 1), (minute + 7200, 1)]
    assert await store.arrivals(minute - 120, 60) == [(minute - 120, 2), *later]
    # A bucket may start before C{since}; it then counts only what came from C{since} on.
    assert await store.arrivals(minute - 60.5, 60) == [(minute - 120, 1), *later]
    assert await store.arrivals(minute, 3600) == [(1_699_999_200.0, 4), (1_700_006_400.0, 1)]
    assert await store.arrivals(minute + 7200.5, 60) == []
    assert await store.first_seen() == minute - 61


@pytest_twisted.ensureDeferred
async def test_read_only_store_never_creates_or_writes(blocks: BlockBackend) -> None:
    """
    A read-only store over a backend without the tables fails to start and leaves it without
    them; over a filled one it reads what the writer stored, and fails to write.
    """
    early = blocks.open(read_only=True)
    with pytest.raises(Exception):  # noqa: B017 (each backend has its own error)
        await early.start()
    assert await blocks.list_tables() == set()

    writer = await blocks.writer()
    assert await blocks.list_tables() == SQL_TABLES
    payload = block_json(block(1, 1))
    await writer.store([received(payload, "a", T0)])
    reader = blocks.open(read_only=True)
    await reader.start()
    assert await reader.payload(payload_hash(payload)) == payload.decode()
    assert await reader.blocks(10) == await writer.blocks(10)
    with pytest.raises(Exception):  # noqa: B017
        await reader.store([received(b"other", "a", T0 + 1)])
    assert await writer.payload(payload_hash(b"other")) is None
    assert [c.messages for c in await writer.clients(10)] == [1]


@pytest.mark.expected_log_errors(ROLLBACK_FAILED)
@pytest_twisted.ensureDeferred
async def test_store_that_is_down_fails_within_its_timeout(blocks: BlockBackend) -> None:
    """
    Once its backend is gone, a store answers every call with a failure, and within its
    timeout rather than waiting for the backend to come back.
    """
    store = await blocks.writer()
    await store.store([received(b"before", "a", T0)])
    store = await blocks.take_down(store)
    calls: list[Callable[[], Deferred[Any]]] = [
        lambda: store.store([received(b"during", "a", T0 + 1)]),
        lambda: store.ping(),
        lambda: store.payload(payload_hash(b"before")),
        lambda: store.blocks(10),
        lambda: store.block(payload_hash(b"before")),
        lambda: store.clients(10),
        lambda: store.heads(10),
        lambda: store.arrivals(T0, 60),
        lambda: store.first_seen(),
        lambda: store.latest_hashes(10),
        lambda: store.address_counts(10),
        lambda: chain_reader(store).chain(1, 0, 10, None),
        lambda: chain_reader(store).blocks(1, 0, 10, None),
        lambda: chain_reader(store).chains(10, {}),
        lambda: store.ledger.node_statuses(["a"]),
        lambda: store.ledger.propagation(["a"], 100),
        lambda: store.ledger.sightings(payload_hash(b"before"), 10),
        lambda: store.ledger.events("a", 10),
        lambda: store.ledger.missing("a", 1, 0, 10, 10),
        lambda: store.ledger.prune_sightings(T0 + 10, 10),
    ]
    await all_fail_within(calls, blocks.timeout + MARGIN)


# -- the chains, as the fleet saw them ---------------------------------------------------------


def chain_block(
    b: Block, client: str, at: float, canonical: bool, finalized: bool = False
) -> ChainBlock:
    return ChainBlock(b.number, b.hash, b.parent_hash, payload_hash(block_json(b)), client, at,
                      canonical, finalized, b.timestamp)  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_chain_canonical_gaps_forks_and_reorgs(blocks: BlockBackend) -> None:
    """
    A chain read gives the best head's ancestry by parent links as canonical, the others as
    orphaned; past a gap, the block first seen last goes on; the runs of heights with no block
    (up to the head, never above it), the heights with several blocks (by block hash, who
    reported each first), and each orphaned branch with its depth and what replaced it;
    canonical blocks at or below the finalized number given are finalized.
    """
    store = await blocks.writer()
    await store_reorged_chain(store)
    chains = chain_reader(store)
    whole = await chains.chain(1, 1, 12, finalized=9)
    assert whole is not None
    assert (whole.head, whole.blocks, whole.canonical, whole.finalized) == (12, 13, 10, 9)
    assert whole.gaps == [(4, 5)] and whole.missing == 2
    assert whole.forks == [
        [
            chain_block(block(1, 3), "a", T0 + 3.5, True, True),
            chain_block(block(1, 3, fork=2), "b", T0 + 3, False),
        ],
        [
            chain_block(block(1, 9), "a", T0 + 20, True, True),
            chain_block(block(1, 9, fork=1), "b", T0 + 9, False),
        ],
        [
            chain_block(block(1, 10), "a", T0 + 21, True),
            chain_block(block(1, 10, fork=1, parent_fork=1), "b", T0 + 10, False),
        ],
    ]
    assert whole.reorgs == [
        Reorg(3, 1, block(1, 3, fork=2).hash, block(1, 3).hash),
        Reorg(9, 2, block(1, 10, fork=1).hash, block(1, 9).hash),
    ]

    # A range from 0 to past the head: height 0 is missing, those above the head are not.
    wide = await chains.chain(1, 0, 40, finalized=None)
    assert wide is not None and wide.gaps == [(0, 0), (4, 5)]
    assert not any(b.finalized for fork in wide.forks for b in fork)
    # A range that starts inside a branch sees the branch from there.
    upper = await chains.chain(1, 10, 12, finalized=None)
    assert upper is not None and (upper.blocks, upper.canonical, upper.gaps) == (4, 3, [])
    assert upper.reorgs == [Reorg(10, 1, block(1, 10, fork=1).hash, block(1, 10).hash)]
    # Below the head, the canonical block is still the head's ancestor.
    lower = await chains.chain(1, 9, 9, finalized=None)
    assert lower is not None and [b.canonical for b in lower.forks[0]] == [True, False]
    above = await chains.chain(1, 13, 20, finalized=None)
    assert above == ChainRange(1, 13, 20, 12, None, 0, 0, [], [], [])
    top = await chains.chain(1, MAX_BLOCK_INT - 5, MAX_BLOCK_INT, finalized=None)
    assert top == ChainRange(1, MAX_BLOCK_INT - 5, MAX_BLOCK_INT, 12, None, 0, 0, [], [], [])
    assert await chains.chain(77, 0, 10, finalized=None) is None
    with pytest.raises(ValueError):
        await chains.chain(1, 0, MAX_CHAIN_RANGE, finalized=None)

    summaries = await chains.chains(10, {1: 9})
    assert [(c.chain_id, c.low, c.high, c.head, c.finalized) for c in summaries] == [
        (1, 0, 12, 12, 9),
        (5, 0, 700, 700, None),
    ]
    assert summaries[0].forks == whole.forks and summaries[0].gaps == [(0, 0), (4, 5)]
    assert summaries[1].gaps == [(0, 699)] and summaries[1].canonical == 1
    assert [c.chain_id for c in await chains.chains(1, {})] == [1]


@pytest_twisted.ensureDeferred
async def test_every_block_of_a_range(blocks: BlockBackend) -> None:
    """
    A read of every block lists each block of the range by height then block hash, canonical
    or orphaned as the chain read decides, with who reported it first and its timestamp; the
    rest of the read is the chain read's.
    """
    store = await blocks.writer()
    await store_reorged_chain(store)
    chains = chain_reader(store)
    whole = await chains.blocks(1, 2, 12, finalized=9)
    assert whole is not None
    a = "a"
    assert whole.listed == [
        chain_block(block(1, 2), a, T0 + 2, True, True),
        chain_block(block(1, 3), a, T0 + 3.5, True, True),
        chain_block(block(1, 3, fork=2), "b", T0 + 3, False),
        *[chain_block(block(1, n), a, T0 + n, True, True) for n in (6, 7, 8)],
        chain_block(block(1, 9), a, T0 + 20, True, True),
        chain_block(block(1, 9, fork=1), "b", T0 + 9, False),
        chain_block(block(1, 10), a, T0 + 21, True),
        chain_block(block(1, 10, fork=1, parent_fork=1), "b", T0 + 10, False),
        chain_block(block(1, 11), a, T0 + 33, True),
        chain_block(block(1, 12), a, T0 + 34, True),
    ]
    assert replace(whole, listed=[]) == await chains.chain(1, 2, 12, finalized=9)
    above = await chains.blocks(1, 13, 20, finalized=None)
    assert above is not None and above.listed == []
    assert await chains.blocks(77, 0, 10, finalized=None) is None


@pytest_twisted.ensureDeferred
async def test_a_chain_that_went_over_to_a_shorter_branch(blocks: BlockBackend) -> None:
    """
    When the clients leave a branch for a shorter one (blocks 6-8 replaced by 6' and 7'), the
    best head is the block they are on now: the shorter branch is canonical, the longer one
    orphaned, above the head too, and one reorg of its depth; no height above the head is a
    gap.  A client still on the longer branch holds its head up.
    """
    store = await blocks.writer()
    await store.store([received(block_json(block(3, n)), "a", T0 + n) for n in range(1, 9)])
    await store.store(
        [
            received(block_json(block(3, 6, fork=1)), "a", T0 + 20),
            received(block_json(block(3, 7, fork=1, parent_fork=1)), "a", T0 + 20.5),
        ]
    )
    assert await store.heads(10) == [Head(3, 7, block(3, 7, fork=1).hash, T0 + 20.5)]
    chains = chain_reader(store)
    whole = await chains.chain(3, 1, 20, finalized=None)
    assert whole is not None
    assert (whole.head, whole.blocks, whole.canonical, whole.gaps) == (7, 10, 7, [])
    assert [[(b.number, b.block_hash, b.canonical) for b in f] for f in whole.forks] == [
        [(n, block(3, n).hash, False), (n, block(3, n, fork=1, parent_fork=n - 6).hash, True)]
        for n in (6, 7)
    ]
    assert whole.reorgs == [Reorg(6, 3, block(3, 8).hash, block(3, 6, fork=1).hash)]
    above = await chains.chain(3, 8, 20, finalized=None)
    assert above == ChainRange(3, 8, 20, 7, None, 1, 0, [], [],
                               [Reorg(8, 1, block(3, 8).hash, None)])  # fmt: skip
    (summary,) = await chains.chains(10, {})
    assert (summary.head, summary.low, summary.high, summary.canonical) == (7, 0, 7, 7)
    assert summary.reorgs == whole.reorgs

    await store.store([received(block_json(block(3, 8)), "b", T0 + 30)])
    assert [h.block_hash for h in await store.heads(10)] == [block(3, 8).hash]
    stuck = await chains.chain(3, 1, 20, finalized=None)
    assert stuck is not None and stuck.reorgs == [
        Reorg(6, 2, block(3, 7, fork=1, parent_fork=1).hash, block(3, 6).hash)
    ]


@pytest_twisted.ensureDeferred
async def test_chain_summary_covers_the_window_below_the_head(blocks: BlockBackend) -> None:
    """
    A chain's summary covers the last CHAIN_WINDOW heights up to its head, and no more.
    """
    store = await blocks.writer()
    head = CHAIN_WINDOW + 5
    await store.store(
        [received(block_json(block(2, n)), "a", T0 + n) for n in (1, 6, head - 1, head)]
    )
    (summary,) = await chain_reader(store).chains(10, {})
    assert (summary.low, summary.high, summary.blocks, summary.canonical) == (6, head, 3, 3)
    assert summary.gaps == [(7, head - 2)]


@pytest_twisted.ensureDeferred
async def test_gaps_alone_are_the_gaps_of_the_range(blocks: BlockBackend) -> None:
    """
    The gaps of a range read alone are those of the whole read of it, with the chain's best
    head: for every range over a chain with gaps, forks and a range past its head, and over one
    whose fleet went back to a shorter branch (the blocks above its head are no gaps); for a
    chain whose numbers reach the largest a column holds; none for a chain with no block, and
    no range wider than MAX_CHAIN_RANGE.
    """
    store = await blocks.writer()
    await store_reorged_chain(store)
    await store.store([received(block_json(block(6, n)), "x", T0 + n) for n in (1, 2, 4, 5)])
    await store.store([received(block_json(block(6, 3, fork=1)), "x", T0 + 6)])
    top = MAX_BLOCK_INT
    await store.store(
        [
            received(block_json(replace(block(9, n, fork), timestamp=1)), "z", T0 + fork)
            for n, fork in ((top - 3, 0), (top - 1, 0), (top, 0), (top, 1))
        ]
    )
    chains = chain_reader(store)
    assert await chains.gaps(6, 0, 7) == (3, [(0, 0)])
    ranges = [(a, b) for a in range(15) for b in range(a, 15)]
    ranges += [(a, 700 + b) for a in (0, 699, 700) for b in (0, 1)]
    for chain_id, (low, high) in [(c, r) for c in (1, 5, 6) for r in ranges]:
        whole = await chains.chain(chain_id, low, high, finalized=None)
        assert whole is not None
        assert await chains.gaps(chain_id, low, high) == (whole.head, whole.gaps), (low, high)
    assert await chains.gaps(9, top - 5, top) == (top, [(top - 5, top - 4), (top - 2, top - 2)])
    assert await chains.gaps(9, top - 1, top) == (top, [])
    assert await chains.gaps(9, top - 2, top - 2) == (top, [(top - 2, top - 2)])
    for low, high in [(top - 5, top), (top - 3, top - 1), (top, top), (top - 4, top - 4)]:
        whole = await chains.chain(9, low, high, finalized=None)
        assert whole is not None
        assert await chains.gaps(9, low, high) == (top, whole.gaps), (low, high)
    assert await chains.gaps(77, 0, 10) is None
    with pytest.raises(ValueError):
        await chains.gaps(1, 0, MAX_CHAIN_RANGE)


@pytest_twisted.ensureDeferred
async def test_who_reported_each_block_of_many_forks(blocks: BlockBackend) -> None:
    """
    Each block at a height with several has the client that reported it first, however many
    such heights the range holds (more than one statement of the SQL store reads).
    """
    store = await blocks.writer()
    heights = range(1, REPORTER_HEIGHTS + 20)
    await store.store(
        [received(block_json(block(7, n, fork)), f"c{fork}", T0 + n + fork / 2)
         for n in heights for fork in (0, 1)]
    )  # fmt: skip
    whole = await chain_reader(store).chain(7, heights[0], heights[-1], finalized=None)
    assert whole is not None and len(whole.forks) == len(heights)
    assert all([b.client for b in fork] == ["c0", "c1"] for fork in whole.forks)


@pytest_twisted.ensureDeferred
async def test_a_stored_block_in_upper_case_is_no_block_on_any_backend(
    blocks: BlockBackend,
) -> None:
    """
    Another client's copy of a stored block with its hash in upper case, and a block naming
    it as parent in upper case, are stored as opaque payloads, as they came: the chain, its
    forks and reorgs and the heads are what they were, on every backend (MySQL's collation
    takes an upper-case hash for the stored one, SQLite does not, so they told two stories).
    """
    store = await blocks.writer()
    three, four = block(1, 3, fork=0xABC), block(1, 4, parent_fork=0xABC)
    assert three.hash != three.hash.upper().replace("0X", "0x")  # it has letters
    await store.store(
        [received(block_json(b), "a", T0 + b.number) for b in (block(1, 1), block(1, 2))]
        + [received(block_json(three), "a", T0 + 3), received(block_json(four), "a", T0 + 4)]
    )
    chains = chain_reader(store)
    before = (await chains.chain(1, 1, 5, finalized=None), await store.heads(10))
    upper = three.hash.upper().replace("0X", "0x")
    shouted = block_json(three).replace(three.hash.encode(), upper.encode())
    child = block_json(block(1, 5, fork=1)).replace(
        block(1, 5, fork=1).parent_hash.encode(), upper.encode()
    )
    assert parse_block(shouted) is None and parse_block(child) is None
    await store.store([received(shouted, "m", T0 + 10), received(child, "m", T0 + 11)])
    assert (await chains.chain(1, 1, 5, finalized=None), await store.heads(10)) == before
    assert before[0] is not None and before[0].forks == [] and before[0].reorgs == []
    assert await store.payload(payload_hash(shouted)) == shouted.decode()
    assert await store.block(payload_hash(shouted)) == BlockRecord(
        payload_hash(shouted), T0 + 10, "m", None, None, None, None, None
    )


class CountedRows:
    """
    A store's rows for the chain reader, counting the reads of rows.
    """

    def __init__(self, rows: Any) -> None:
        self.rows = rows
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rows, name)

    def chain_rows(self, *args: Any) -> Deferred[Any]:
        self.reads += 1
        return self.rows.chain_rows(*args)


@pytest_twisted.ensureDeferred
async def test_chain_summary_is_decided_again_only_when_its_blocks_change(
    blocks: BlockBackend,
) -> None:
    """
    A chain's summary asked again reads no rows while its best head, the blocks of its window
    and the finalized number are the same; a block that comes below the head, a second block at
    the head's height, a new head, a client going back to a block already stored (the best head
    moves, no block comes) or another finalized number make it decided again, for that chain
    alone, as a reader that never read it before decides it.
    """
    store = await blocks.writer()
    await store_reorged_chain(store)
    chains = chain_reader(store)
    counted = CountedRows(chains.store)
    chains.store = counted
    first = await chains.chains(10, {1: 9})
    assert counted.reads == 2
    assert await chains.chains(10, {1: 9}) == first and counted.reads == 2

    changes: list[tuple[list[Block], dict[int, int]]] = [
        ([block(1, 4)], {1: 9}),  # below the head, in a gap
        ([block(1, 12, fork=7)], {1: 9}),  # at the head's height
        ([block(1, 11)], {1: 9}),  # "b" goes back: the best head is "a"'s 12 again
        ([block(1, 13)], {1: 9}),  # a new head
        ([], {1: 11}),
    ]
    for n, (new, finalized) in enumerate(changes):
        if new:
            await store.store([received(block_json(b), "b", T0 + 40 + n) for b in new])
        summaries = await chains.chains(10, finalized)
        assert counted.reads == 3 + n
        assert summaries == await chain_reader(store).chains(10, finalized)
        assert summaries[1] == first[1]
    assert (summaries[0].head, summaries[0].gaps, summaries[0].finalized) == (
        13,
        [(0, 0), (5, 5)],
        11,
    )
    assert await chains.chains(10, {1: 11}) == summaries and counted.reads == 7


# -- the ledger: sightings, node status, events ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sightings_one_per_client_and_payload_with_their_delays(
    blocks: BlockBackend,
) -> None:
    """
    Each client's first sighting of a payload is kept (a repeat, in the same batch or a later
    one, changes nothing); a payload without a sighting is seen on arrival, via C{unknown}; the
    sightings of a payload list earliest first, each with its delay behind the first.
    """
    store = await blocks.writer()
    assert verifyObject(ILedger, store.ledger)
    a, b = block_json(block(1, 1)), block_json(block(1, 2))
    await store.store(
        [
            received(a, "x", T0 + 1.5, seen=T0 + 1.0, via="subscription"),
            received(a, "x", T0 + 1.6, seen=T0 + 0.5, via="poll"),
            received(a, "y", T0 + 1.75),
        ]
    )
    await store.store(
        [
            received(a, "z", T0 + 2.0, seen=T0 + 1.25, via="poll"),
            received(a, "y", T0 + 2.5, seen=T0, via="poll"),
            received(b, "x", T0 + 3, seen=T0 + 3, via="backfill"),
        ]
    )
    assert await store.ledger.sightings(payload_hash(a), 10) == [
        SightingRecord("x", T0 + 1.0, "subscription", 0.0),
        SightingRecord("z", T0 + 1.25, "poll", 250.0),
        SightingRecord("y", T0 + 1.75, "unknown", 750.0),
    ]
    assert [s.client for s in await store.ledger.sightings(payload_hash(a), 2)] == ["x", "z"]
    assert await store.ledger.sightings(payload_hash(b"never"), 10) == []


@pytest_twisted.ensureDeferred
async def test_propagation_is_each_clients_delay_over_its_last_blocks(
    blocks: BlockBackend,
) -> None:
    """
    Propagation gives each client asked (once, if asked twice) the blocks it saw last, at most
    C{limit}, newest first and then by descending SHA256 (also across the limit; payloads that
    are not blocks left out): how many ms after the fleet's first sighting it saw each; none
    for a client that saw no block or with a limit of 0, nothing when no client is asked.
    Hundreds of clients at once (names differing only in case apart) answer as each would
    alone.
    """
    store = await blocks.writer()
    batch = []
    for n in range(1, 6):
        payload = block_json(block(1, n))
        batch.append(received(payload, "fast", T0 + n, seen=T0 + n, via="poll"))
        batch.append(received(payload, "slow", T0 + n + 0.1 * n, seen=T0 + n + 0.1 * n))
    batch.append(received(b"no block", "slow", T0 + 10))
    a, b = block_json(block(2, 1)), block_json(block(2, 2))
    batch += [received(a, "early", T0 + 20), received(b, "early", T0 + 20.25)]
    batch += [received(a, "tied", T0 + 21), received(b, "tied", T0 + 21)]
    await store.store(batch)
    ledger = store.ledger
    assert await ledger.propagation(["fast", "slow", "nobody", "slow"], 3) == {
        "fast": [0.0] * 3,
        "slow": [pytest.approx(500.0), pytest.approx(400.0), pytest.approx(300.0)],
        "nobody": [],
    }
    assert await ledger.propagation(["fast"], 100) == {"fast": [0.0] * 5}
    tied = [1000.0, 750.0] if payload_hash(a) > payload_hash(b) else [750.0, 1000.0]
    assert await ledger.propagation(["tied"], 100) == {"tied": pytest.approx(tied)}
    assert await ledger.propagation(["tied"], 1) == {"tied": [pytest.approx(tied[0])]}
    assert await ledger.propagation(["fast", "slow"], 0) == {"fast": [], "slow": []}
    assert await ledger.propagation([], 100) == {}

    names = [f"node-{i:03d}" for i in range(250)] + ["Node-A", "node-a"]
    c = block_json(block(3, 1))
    await store.store([received(c, name, T0 + 30 + i / 1000) for i, name in enumerate(names)])
    many = await ledger.propagation([*reversed(names), "fast"], 1)
    assert many == {
        **{name: [pytest.approx(float(i), abs=0.01)] for i, name in enumerate(names)},
        "fast": [0.0],
    }


def status(**values: Any) -> Status:
    fields: dict[str, Any] = {"client_version": "anvil/1", "chain_id": 1, "peers": 3,
                              "syncing": False}  # fmt: skip
    return Status(**{**fields, **values})


@pytest_twisted.ensureDeferred
async def test_node_status_is_the_latest_and_its_changes_are_events(blocks: BlockBackend) -> None:
    """
    A client's status row is its latest report, every field kept as sent; each change between
    reports (version, chain, syncing, peers to 0 and back) is one dated event, newest first,
    with changes inside one batch counted in order.
    """
    store = await blocks.writer()

    def later(**values: Any) -> Status:
        return status(client_version="anvil/2", chain_id=5, **values)

    full = Status("geth/1.14", 1, 5, SyncProgress(10, 20), 2**62, 7, 100, 90, 4, 2, 1.5)
    await store.store([StatusReport("a", T0, full), StatusReport("b", T0, status())])
    assert await store.ledger.node_statuses(["a", "b", "c"]) == {
        "a": NodeRecord("a", T0, full),
        "b": NodeRecord("b", T0, status()),
    }
    assert await store.ledger.events("a", 10) == []
    await store.store(
        [
            StatusReport("b", T0 + 1, status(peers=0, client_version="anvil/2")),
            received(block_json(block(1, 1)), "b", T0 + 1.5),
            StatusReport("b", T0 + 2, later(peers=0, syncing=SyncProgress(1, 9))),
        ]
    )
    await store.store([StatusReport("b", T0 + 3, later(peers=2, syncing=None))])
    await store.store([StatusReport("b", T0 + 4, later(peers=2))])
    events = await store.ledger.events("b", 10)
    assert [(e.at, e.kind, e.detail) for e in events] == [
        (T0 + 3, "peers_back", "0 -> 2"),
        (T0 + 2, "sync_started", "at 1 of 9"),
        (T0 + 2, "chain_changed", "1 -> 5"),
        (T0 + 1, "peers_lost", "3 -> 0"),
        (T0 + 1, "version_changed", "anvil/1 -> anvil/2"),
    ]
    assert [e.kind for e in await store.ledger.events("b", 2)] == ["peers_back", "sync_started"]
    latest = await store.ledger.node_statuses(["b"])
    assert latest == {"b": NodeRecord("b", T0 + 4, later(peers=2))}
    assert await store.ledger.node_statuses([]) == {}


@pytest_twisted.ensureDeferred
async def test_finalized_is_a_quorum_of_the_latest_reports_per_chain(blocks: BlockBackend) -> None:
    """
    Per chain id, of the k clients whose latest status (received at or after C{since}) gives a
    finalized number on it, the largest number that at least max(2, ceil(k/2)) of them reach:
    a node far ahead of the others (one of two, three or four, two of five) marks nothing
    finalized; a lone client's number is taken; an older report, or a latest one received
    before C{since}, no longer counts; a status without a chain id or a finalized number counts
    for nothing; the first C{limit} chains by id.
    """
    store = await blocks.writer()
    assert await store.ledger.finalized(10, T0) == {}
    top = MAX_BLOCK_INT
    reports: dict[int, list[int | None]] = {
        1: [8, 12, None, top, 9],  # four report: two must reach it
        2: [100, 100, 10**15],  # a liar far ahead of two
        3: [7],  # a lone node
        4: [50, top],  # one of two ahead: the lower
        5: [10, 40, 30, top, 20],  # five: three must reach it
    }
    await store.store(
        [
            StatusReport(f"c{chain_id}-{i}", T0, status(chain_id=chain_id, finalized=number))
            for chain_id, numbers in reports.items()
            for i, number in enumerate(numbers)
        ]
        + [
            StatusReport("lost", T0, status(chain_id=None, finalized=99)),
            StatusReport("stale", T0 - 0.5, status(chain_id=6, finalized=1000)),
            StatusReport("fresh", T0, status(chain_id=6, finalized=5)),
            StatusReport("fresher", T0, status(chain_id=6, finalized=6)),
            StatusReport("gone", T0 - 0.5, status(chain_id=8, finalized=3)),
        ]
    )
    quorum = {1: 12, 2: 100, 3: 7, 4: 50, 5: 30, 6: 5}
    assert await store.ledger.finalized(10, T0) == quorum
    assert await store.ledger.finalized(10, T0 - 0.5) == {**quorum, 6: 6, 8: 3}
    assert await store.ledger.finalized(10, T0 + 0.5) == {}
    assert await store.ledger.finalized(2, T0) == {1: 12, 2: 100}
    # The honest ones of chain 4 move on: still the lower; the liar falls back: the honest one.
    await store.store([StatusReport("c4-0", T0 + 1, status(chain_id=4, finalized=60))])
    assert (await store.ledger.finalized(10, T0))[4] == 60
    await store.store([StatusReport("c4-1", T0 + 1, status(chain_id=4, finalized=55))])
    assert (await store.ledger.finalized(10, T0))[4] == 55
    # Only the clients heard from lately: the liar of chain 2 alone reports now.
    await store.store([StatusReport("c2-2", T0 + 2, status(chain_id=2, finalized=10**15))])
    assert await store.ledger.finalized(10, T0 + 2) == {2: 10**15}
    await store.store([StatusReport("c2-0", T0 + 2, status(chain_id=2, finalized=101))])
    assert await store.ledger.finalized(10, T0 + 2) == {2: 101}


@given(
    st.lists(
        st.tuples(
            st.sampled_from([None, 1, 2, 10**12]), st.none() | st.integers(0, MAX_BLOCK_INT)
        ),
        max_size=12,
    )
)
def test_fleet_finalized_is_the_largest_number_a_quorum_reaches(
    reports: list[tuple[int | None, int | None]],
) -> None:
    """
    For any reports, each chain's number is one its clients reported, reached by at least
    max(2, ceil(k/2)) of its k reporting clients (all of them when k = 1), and no larger
    number is; chains with no reporting client are left out.
    """
    decided = fleet_finalized(reports, 10)
    numbers: dict[int, list[int]] = {}
    for chain_id, number in reports:
        if chain_id is not None and number is not None:
            numbers.setdefault(chain_id, []).append(number)
    assert set(decided) == set(numbers)
    for chain_id, n in decided.items():
        reported = numbers[chain_id]
        quorum = min(max(2, -(-len(reported) // 2)), len(reported))
        assert n in reported
        assert sum(r >= n for r in reported) >= quorum
        assert sum(r > n for r in reported) < quorum


@pytest_twisted.ensureDeferred
async def test_missing_heights_are_those_a_client_reported_no_block_of(
    blocks: BlockBackend,
) -> None:
    """
    The heights in range holding a stored block of which the client reported none, lowest
    first and at most C{limit}: a fork block reported at a height counts for that height; other
    chains do not count; the largest chain id and heights a column holds are read like any.
    """
    store = await blocks.writer()
    batch = [received(block_json(block(1, n)), "x", T0 + n) for n in range(1, 8)]
    batch += [received(block_json(block(1, n)), "y", T0 + n) for n in (2, 4)]
    batch += [received(block_json(block(1, 3, fork=1)), "y", T0 + 3)]
    batch += [received(block_json(block(2, 5)), "y", T0 + 5)]
    await store.store(batch)
    assert await store.ledger.missing("y", 1, 0, 100, 1000) == [1, 5, 6, 7]
    assert await store.ledger.missing("y", 1, 2, 5, 1000) == [5]
    assert await store.ledger.missing("y", 1, 0, 100, 2) == [1, 5]
    assert await store.ledger.missing("x", 1, 0, 100, 1000) == []
    assert await store.ledger.missing("x", 2, 0, 100, 1000) == [5]
    assert await store.ledger.missing("x", 9, 0, 100, 1000) == []
    top = MAX_BLOCK_INT
    tops = [replace(block(top, n), timestamp=1) for n in (top - 1, top)]
    await store.store([received(block_json(b), "x", T0 + 9) for b in tops])
    await store.store([received(block_json(tops[1]), "y", T0 + 9)])
    assert await store.ledger.missing("y", top, top - 5, top, 1000) == [top - 1]
    assert await store.ledger.missing("x", top, 0, top, 1000) == []


@pytest_twisted.ensureDeferred
async def test_pruning_deletes_old_sightings_in_batches(blocks: BlockBackend) -> None:
    """
    Pruning deletes at most C{limit} sightings of the payloads first seen on the (UTC) days
    before the cut's, those stored first first, and keeps the payloads; once none is left
    before it, it deletes nothing.  A later sighting of an old payload goes with it.
    """
    store = await blocks.writer()
    day = 86400
    start = (T0 // day) * day
    payloads = [block_json(block(1, n)) for n in range(5)]
    for n, p in enumerate(payloads):
        await store.store([received(p, "x", start + n * day + 10)])
    await store.store([received(payloads[1], "y", start + 4 * day)])
    cut = start + 3 * day + 5
    assert await store.ledger.prune_sightings(cut, 2) == 2
    assert await store.ledger.sightings(payload_hash(payloads[0]), 10) == []
    assert [s.client for s in await store.ledger.sightings(payload_hash(payloads[1]), 10)] == ["y"]
    assert len(await store.ledger.sightings(payload_hash(payloads[2]), 10)) == 1
    assert await store.ledger.prune_sightings(cut, 2) == 2
    assert await store.ledger.prune_sightings(cut, 2) == 0
    assert len(await store.ledger.sightings(payload_hash(payloads[3]), 10)) == 1
    assert await store.payload(payload_hash(payloads[0])) == payloads[0].decode()


@pytest_twisted.ensureDeferred
async def test_pruning_blocks_keeps_what_a_gap_proof_needs(blocks: BlockBackend) -> None:
    """
    Pruning payloads first seen before the cut, a few read at a time from a cursor, deletes
    those of no chain and, at each height of a chain, all but the block first seen there,
    never within the chain window below the highest stored number; each goes with its
    sightings and its payload.  The gaps of every range are what they were; pruning again
    from the start deletes nothing.
    """
    store = await blocks.writer()
    top = CHAIN_WINDOW + 10
    old = [
        received(block_json(block(7, 1)), "a", T0),
        received(block_json(block(7, 2)), "a", T0 + 1),
        received(block_json(block(7, 2, fork=1)), "b", T0 + 2),
        received(block_json(block(7, 4)), "a", T0 + 3),
        received(b"opaque", "a", T0 + 4),
        received(block_html(5), "c", T0 + 5),
        received(block_json(block(7, top - 1)), "a", T0 + 6),
        received(block_json(block(7, top - 1, fork=1)), "b", T0 + 7),
    ]
    recent = [
        received(block_json(block(7, top)), "a", T0 + 100),
        received(block_json(block(7, 4, fork=2)), "b", T0 + 101),
    ]
    for r in [*old, *recent]:
        await store.store([r])
    chains = chain_reader(store)
    gaps = await chains.gaps(7, 0, top)
    deleted, cursor, reads = 0, None, 0
    while reads < 10:
        n, after = await store.ledger.prune_blocks(T0 + 50, cursor, 3)
        reads, deleted = reads + 1, deleted + n
        if after == cursor:
            break
        cursor = after
    assert (deleted, cursor) == (3, (T0 + 7, old[-1].sha256))
    gone = {old[2].sha256, old[4].sha256, old[5].sha256}
    for r in [*old, *recent]:
        kept = r.sha256 not in gone
        assert (await store.payload(r.sha256) is not None) == kept, r.payload
        assert bool(await store.ledger.sightings(r.sha256, 10)) == kept, r.payload
    assert await chains.gaps(7, 0, top) == gaps
    assert await store.ledger.prune_blocks(T0 + 50, None, 100) == (0, (T0 + 7, old[-1].sha256))


# -- the counters and their reader ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_counters_provide_the_interfaces(counters: Counters) -> None:
    """
    Every backend of the counters reads them back; those that count on their own are stats
    stores.
    """
    assert verifyObject(ICounterReader, counters.reader)
    if counters.name in ("redis", "memory-counters"):
        assert verifyObject(ICounterStore, counters.reader)


@pytest_twisted.ensureDeferred
async def test_latest_hashes_once_each_under_their_first_sighting(counters: Counters) -> None:
    """
    C{latest_hashes} lists each payload once, with the time it was first seen, newest first,
    ties by descending SHA256, at most C{limit} of them.
    """
    batch = [received(f"m{i}".encode(), "c", T0 + i // 4) for i in range(12)]
    repeats = [received(b"m1", "c", T0 + 100), received(b"m11", "c", T0 - 5)]
    await counters.count(batch[:5] + repeats[:1])
    await counters.count(batch[5:] + repeats[1:] + batch[:2])
    order = newest_first(batch)
    first = {r.sha256: r.received for r in batch}
    assert await counters.reader.latest_hashes(100) == [(h, first[h]) for h in order]
    assert await counters.reader.latest_hashes(5) == [(h, first[h]) for h in order[:5]]
    assert await counters.reader.latest_hashes(1) == [(order[0], first[order[0]])]
    assert await counters.reader.latest_hashes(0) == []


@pytest_twisted.ensureDeferred
async def test_address_counts_every_message(counters: Counters) -> None:
    """
    C{address_counts} counts every message per client address, repeats too, busiest first,
    ties by address, at most C{limit} of them.
    """
    traffic = []
    for address, n in [("10.0.0.5", 3), ("10.0.0.1", 1), ("10.0.0.3", 3), ("::1", 5)]:
        traffic += [received(b"same payload", address, T0 + i, address) for i in range(n)]
    await counters.count(traffic[:7])
    await counters.count(traffic[7:])
    expected = [("::1", 5), ("10.0.0.3", 3), ("10.0.0.5", 3), ("10.0.0.1", 1)]
    assert await counters.reader.address_counts(100) == expected
    assert await counters.reader.address_counts(2) == expected[:2]
    assert await counters.reader.address_counts(0) == []


@pytest.mark.expected_log_errors(ROLLBACK_FAILED)
@pytest_twisted.ensureDeferred
async def test_counters_that_are_down_fail_within_their_timeout(counters: Counters) -> None:
    """
    Once its backend is gone, the counters answer every call with a failure, and within their
    timeout rather than waiting for the backend to come back.
    """
    await counters.count([received(b"before", "a", T0)])
    down = await counters.take_down()
    calls: list[Callable[[], Deferred[Any]]] = [
        lambda: counters.count([received(b"during", "a", T0 + 1)], down),
        lambda: down.ping(),
        lambda: down.latest_hashes(10),
        lambda: down.address_counts(10),
    ]
    await all_fail_within(calls, counters.timeout + MARGIN)


SQL_SHAPED = ("sqlite", "mysql", "memory")


@pytest_twisted.ensureDeferred
async def test_address_counts_follow_each_message_not_the_client(
    counters: Counters, request: pytest.FixtureRequest
) -> None:
    """
    A client that sends from one address and then from another counts each message for the
    address it came from, as Redis always has.
    """
    if counters.name in SQL_SHAPED:
        request.applymarker(
            pytest.mark.xfail(
                reason="eth_clients keeps one address per client: its messages all count for"
                " the last one",
                strict=True,
            )
        )
    await counters.count([received(b"a", "moving", T0, "10.0.0.1") for _ in range(3)])
    await counters.count([received(b"b", "moving", T0 + 1, "10.0.0.2")])
    assert await counters.reader.address_counts(10) == [("10.0.0.1", 3), ("10.0.0.2", 1)]
