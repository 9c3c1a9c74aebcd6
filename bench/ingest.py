"""
How fast eth-server stores what clients send, counted in SQL afterwards.

Starts `twistd -n eth-server` as its own process on a free loopback port (over SQLite, or
over private MariaDB and Redis servers it starts too), drives it from this process, and
prints one JSON line per run:

    python bench/ingest.py --mode persistent --store mysql --connections 50 --messages 20000
    python bench/ingest.py --mode oneshot --store mysql --connections 50 --messages 5000
    python bench/ingest.py --mode idle --connections 1000
    python bench/ingest.py --store galera --connections 30 --messages 20000
    python bench/ingest.py --store mysql --prefill 5500000 --buffer-pool-mb 1024

- persistent: C connections, each keeping up to --window messages unacknowledged; the clock
  stops when every message is acknowledged.
- oneshot: the older client's way, a new connection per message (sent, then closed at once,
  nothing read), C at a time; the clock stops when SQL holds every row, or after --deadline.
- idle: C connections that say hello and then nothing; reports the server's RSS.
- --store galera: three servers, each on its own node of a private 3-node Galera cluster, and
  every message sent to all three (C connections in all, a third on each), as a fleet sends
  each block many times; reports distinct messages stored per second, acknowledgements per
  second, and the conflicts the servers counted (from their /metrics).

--prefill N stores N sightings first (N / --prefill-clients blocks of another chain, each
seen by every one of those clients) through the store's own commits, 5,000 reports each, before
the clock starts (and, on MariaDB, until it has written out its dirty pages): ingest as the
store grows.  --buffer-pool-mb sizes MariaDB's buffer pool (the
test suite's server keeps 32 MB).

Every result carries the load average when it ended (the machine may be shared).

`stored` is what SQL holds afterwards, never what was merely sent; `lost` is the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import epollreactor  # noqa: E402

epollreactor.install()

from twisted.internet import reactor, task, threads  # noqa: E402
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402
from twisted.internet.protocol import Protocol, connectionDone  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from ethtwisted.frames import (  # noqa: E402
    Ack,
    ControlFrame,
    Hello,
    Ping,
    Pong,
    Sighting,
    Welcome,
    encode_control,
)
from ethtwisted.framing import FrameProtocol  # noqa: E402
from ethtwisted.protocol import Block, block_json, parse_block, payload_hash  # noqa: E402
from ethtwisted.records import Received  # noqa: E402
from ethtwisted.storage.sql_pool import parse_db_url  # noqa: E402
from ethtwisted.storage.sql_store import SQLStore  # noqa: E402
from tests.services import GaleraCluster, MariaDB, Redis, free_port  # noqa: E402

TWISTD = str(Path(sys.executable).parent / "twistd")


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU time a process has used so far.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sender(FrameProtocol):
    def __init__(self, payloads: list[bytes], window: int, done: Deferred[None]) -> None:
        super().__init__()
        self.payloads = payloads
        self.window = window
        self.done = done
        self.next = 0
        self.unacked: set[str] = set()
        self.sightings = False

    def connectionMade(self) -> None:
        # As a client of today: features in the hello, payloads once welcomed, each after its
        # sighting; pings answered.
        hello = Hello(f"bench-{id(self)}", features=("status", "sighting", "ping"))
        self.sendString(encode_control(hello))

    def fill(self) -> None:
        while self.next < len(self.payloads) and len(self.unacked) < self.window:
            payload = self.payloads[self.next]
            self.next += 1
            sha256 = payload_hash(payload)
            self.unacked.add(sha256)
            if self.sightings:
                seen_ms = int(reactor.seconds() * 1000)
                self.sendString(encode_control(Sighting(sha256, seen_ms, "subscription")))
            self.sendString(payload)
        if not self.unacked and not self.done.called:
            self.done.callback(None)
            assert self.transport is not None
            self.transport.loseConnection()

    def controlReceived(self, frame: ControlFrame) -> None:
        if isinstance(frame, Ack):
            self.unacked.discard(frame.sha256)
            self.fill()
        elif isinstance(frame, Welcome):
            self.sightings = "sighting" in frame.features
            self.fill()
        elif isinstance(frame, Ping):
            self.sendString(encode_control(Pong(frame.id, int(reactor.seconds() * 1000))))


class OneShot(Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"%d:%s," % (len(self.payload), self.payload))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed.callback(None)


def payloads(n: int, run: str) -> list[bytes]:
    # Block-message-sized payloads, each distinct.
    return [
        json.dumps({"chain_id": 1, "number": i, "hash": f"0x{run}{i:060x}", "parent_hash": "0x",
                    "timestamp": i}, sort_keys=True, separators=(",", ":")).encode()
        for i in range(n)
    ]  # fmt: skip


PREFILL_BATCH = 5000
PREFILL_CHAIN = 2
SETTLE_SECONDS = 300
DEFAULT_DIRTY_PCT = 90.0
"""MariaDB 10.11's innodb_max_dirty_pages_pct."""
"""The chain of the stored blocks: apart from the benchmark's messages (chain 1)."""


async def prefill(url: str, password: str | None, sightings: int, clients: int) -> float:
    """
    Store C{sightings} sightings through L{SQLStore.store}, in commits of L{PREFILL_BATCH}
    reports, each block reported by every one of C{clients} clients in turn; the seconds taken.
    """
    parsed = parse_db_url(url)
    store = SQLStore(parsed.with_password(password) if password else parsed, reactor)
    await store.start()
    start, now = time.monotonic(), time.time() - 86400
    batch: list[Received] = []
    try:
        for n in range(-(-sightings // clients)):
            b = Block(PREFILL_CHAIN, n, f"0x{n:064x}", f"0x{max(n - 1, 0):064x}", n)
            payload = block_json(b)
            sha256, text, block = payload_hash(payload), payload.decode(), parse_block(payload)
            for c in range(min(clients, sightings - n * clients)):
                at = now + n * 0.25 + c / clients / 4
                batch.append(Received(sha256, text, "127.0.0.1", f"prefill-{c:05d}", at + 0.05,
                                      block, at, "subscription"))  # fmt: skip
                if len(batch) == PREFILL_BATCH:
                    await store.store(batch)
                    batch = []
        if batch:
            await store.store(batch)
    finally:
        await store.close()
    return time.monotonic() - start


async def settle(args: argparse.Namespace) -> float:
    """
    Wait (a few minutes at most) until MariaDB has written out what the prefill left in its
    buffer pool, so the run measures ingest into a store at rest; the seconds waited.
    """
    start = time.monotonic()
    flush = getattr(args, "flush", None)
    if flush is None:
        return 0.0
    while time.monotonic() - start < SETTLE_SECONDS:
        if await threads.deferToThread(flush, 0) < 0.01:
            break
        await task.deferLater(reactor, 1.0)
    await threads.deferToThread(flush, DEFAULT_DIRTY_PCT)
    return round(time.monotonic() - start, 1)


async def rows_reach(count_rows: Callable[[], int], n: int, deadline: float) -> int:
    """
    Wait until SQL holds C{n} rows or the deadline passes; the count runs off the reactor.
    """
    while True:
        rows = await threads.deferToThread(count_rows)
        if rows >= n or time.monotonic() > deadline:
            return rows
        await task.deferLater(reactor, 0.05)


def conflicts(stats_port: int) -> int:
    """C{ethtwisted_store_conflicts_total} of the server whose stats API is on C{stats_port}."""
    url = f"http://127.0.0.1:{stats_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("ethtwisted_store_conflicts_total "):
                return int(float(line.split()[1]))
    return 0


async def run(
    args: argparse.Namespace, ports: list[int], count_rows: Callable[[], int], pids: list[int]
) -> dict:
    endpoints = [TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10) for port in ports]
    endpoint, pid = endpoints[0], pids[0]
    result: dict[str, Any] = {"mode": args.mode, "store": args.store,
                              "connections": args.connections}  # fmt: skip
    if args.mode == "idle":
        idle = [await connectProtocol(endpoint, FrameProtocol()) for _ in range(args.connections)]
        for p in idle:
            p.sendString(encode_control(Hello("idle")))
        await task.deferLater(reactor, 1.0)
        result["server_rss_mb"] = round(rss_mb(pid), 1)
        result["server_kb_per_connection"] = round(
            (rss_mb(pid) - args.rss_before) * 1024 / max(args.connections, 1), 1
        )
        result["server_peak_rss_mb"] = round(rss_mb(pid, "VmHWM"), 1)
        for p in idle:
            p.transport.loseConnection()
        return result
    messages = payloads(args.messages, os.urandom(2).hex())
    start = time.monotonic()
    cpu_start = [cpu_seconds(p) for p in pids]
    own_start = time.process_time()
    deadline = start + args.deadline
    if args.mode == "persistent":
        # Every server is sent every message, over its share of the connections.
        per_server = max(args.connections // len(endpoints), 1)
        shares = [messages[i::per_server] for i in range(per_server)]
        done: list[Deferred[None]] = []
        for server in endpoints:
            for share in shares:
                done.append(Deferred())
                await connectProtocol(server, Sender(share, args.window, done[-1]))
        await DeferredList(done).addTimeout(args.deadline, reactor)
    else:
        queue = iter(messages)

        async def worker() -> None:
            for payload in queue:
                protocol = OneShot(payload)
                await connectProtocol(endpoint, protocol)
                await protocol.closed

        await DeferredList([ensureDeferred(worker()) for _ in range(args.connections)])
    stored = await rows_reach(count_rows, args.messages, deadline)
    seconds = time.monotonic() - start
    result.update(
        messages=args.messages,
        stored=stored,
        lost=args.messages - stored,
        seconds=round(seconds, 3),
        stored_per_s=round(stored / seconds),
        server_peak_rss_mb=round(rss_mb(pid, "VmHWM"), 1),
        server_cpu_s=round(sum(cpu_seconds(p) for p in pids) - sum(cpu_start), 2),
        load_generator_cpu_s=round(time.process_time() - own_start, 2),
    )
    if len(ports) > 1:
        found = [await threads.deferToThread(conflicts, p) for p in args.stats_ports]
        result.update(
            servers=len(ports),
            acks_per_s=round(len(ports) * args.messages / seconds),
            conflicts=sum(found),
            conflicts_per_1000_messages=round(1000 * sum(found) / args.messages, 1),
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["persistent", "oneshot", "idle"], default="persistent")
    parser.add_argument("--store", choices=["sqlite", "mysql", "galera"], default="mysql")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds, at most")
    parser.add_argument("--prefill", type=int, default=0, help="sightings stored first")
    parser.add_argument("--prefill-clients", type=int, default=100)
    parser.add_argument("--buffer-pool-mb", type=int, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ethtwisted-bench-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETH_")}
        services: list[Any] = []
        if args.store == "mysql":
            mariadb, redis = MariaDB(work / "mariadb"), Redis(work / "redis")
            (work / "redis").mkdir()
            services += [mariadb, redis]
            try:
                mariadb.setup()
                redis.start_on_free_port()
            except BaseException:
                for service in services:
                    service.stop()
                raise
            dbs = [["--db", mariadb.url, "--redis", redis.url]]
            env["ETH_MYSQL_PASSWORD"] = mariadb.password
            if args.buffer_pool_mb:
                # InnoDB resizes its buffer pool while running.
                size = args.buffer_pool_mb << 20
                mariadb.query("SET GLOBAL innodb_buffer_pool_size = %s", (size,))

            def count_rows(table: str = "ethereum_data") -> int:
                return int(mariadb.query(f"SELECT COUNT(*) FROM {table}",  # noqa: S608
                                         database=mariadb.database)[0][0])  # fmt: skip

            def flush(pct: float) -> float:
                # InnoDB writes its dirty pages out while over innodb_max_dirty_pages_pct.
                mariadb.query("SET GLOBAL innodb_max_dirty_pages_pct = %s", (pct,))
                query = "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_%'"
                status = dict(mariadb.query(query))
                return int(status["Innodb_buffer_pool_pages_dirty"]) / max(
                    int(status["Innodb_buffer_pool_pages_total"]), 1
                )

            args.flush = flush

            def disk_reads() -> int:
                query = "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_reads'"
                return int(mariadb.query(query)[0][1])

            args.disk_reads = disk_reads
        elif args.store == "galera":
            cluster = GaleraCluster()
            services.append(cluster)
            try:
                cluster.setup()
            except BaseException:
                cluster.stop()
                raise
            dbs = [["--db", node.url] for node in cluster.nodes]
            env["ETH_MYSQL_PASSWORD"] = cluster.password

            def count_rows(table: str = "ethereum_data") -> int:
                query = f"SELECT COUNT(*) FROM {table}"  # noqa: S608
                return int(cluster.nodes[0].query(query)[0][0])
        else:
            path = work / "bench.sqlite"
            dbs = [["--db", f"sqlite:///{path}"]]

            def count_rows(table: str = "ethereum_data") -> int:
                with sqlite3.connect(path) as c:
                    query = f"SELECT COUNT(*) FROM {table}"  # noqa: S608
                    return int(c.execute(query).fetchone()[0])

        ports = [free_port() for _ in dbs]
        args.stats_ports = [free_port() for _ in dbs]
        logs = [work / f"server{i + 1}.log" for i in range(len(dbs))]
        servers = [
            subprocess.Popen(
                [
                    TWISTD,
                    "-n",
                    "--pidfile=",
                    "eth-server",
                    "--listen",
                    f"tcp:{port}:interface=127.0.0.1",
                    *db,
                    "--idle-timeout",
                    "600",
                    "--stats",
                    f"tcp:{stats}:interface=127.0.0.1",
                ],
                cwd=work,
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            for port, stats, db, log in zip(ports, args.stats_ports, dbs, logs, strict=True)
        ]
        try:
            deadline = time.monotonic() + 30
            for server, log in zip(servers, logs, strict=True):
                while b"collecting on" not in log.read_bytes():
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(log.read_text())
                    time.sleep(0.05)
            args.rss_before = rss_mb(servers[0].pid)
            outcome: dict[str, Any] = {}

            async def go() -> None:
                if args.prefill:
                    password = env.get("ETH_MYSQL_PASSWORD")
                    seconds = await prefill(dbs[0][1], password, args.prefill,
                                            args.prefill_clients)  # fmt: skip
                    outcome.update(prefill=args.prefill, prefill_seconds=round(seconds, 1))
                    outcome["settle_seconds"] = await settle(args)
                # What was there before the clock starts is not counted as stored.
                before = await threads.deferToThread(count_rows)
                sightings = await threads.deferToThread(count_rows, "eth_sightings")
                pids = [s.pid for s in servers]
                reads = getattr(args, "disk_reads", None)
                first = await threads.deferToThread(reads) if reads else 0
                outcome.update(await run(args, ports, lambda: count_rows() - before, pids))
                if reads:
                    # Pages MariaDB had to read from disk: the working set past its pool.
                    outcome["buffer_pool_disk_reads"] = await threads.deferToThread(reads) - first
                after = await threads.deferToThread(count_rows, "eth_sightings")
                outcome["sightings"] = after - sightings
                if args.buffer_pool_mb:
                    outcome["buffer_pool_mb"] = args.buffer_pool_mb

            d = ensureDeferred(go())
            d.addErrback(lambda f: outcome.update(error=str(f.value)))
            d.addBoth(lambda _: reactor.stop())
            reactor.run()
            outcome["load_average"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(outcome))
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)
            for service in services:
                service.stop()


if __name__ == "__main__":
    main()
