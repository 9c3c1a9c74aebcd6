"""
A fleet of simulated eth-clients against one real eth-server on a private MariaDB: what one
server and one database cost for N nodes.

Starts a private MariaDB (its buffer pool --buffer-pool-mb) and `twistd -n eth-server` on free
loopback ports, then plays N clients from this process, each on a connection of its own and
speaking the wire as eth-client does (a hello with features; after the welcome, a status
every --status-interval seconds; each block as a sighting frame then its payload; a pong for
every ping), on --chains chains that each make a block every --block-time seconds.  Most
clients report each block within the first tenth of the block time; a fraction are behind
(they report each block late, by at least 45 s), stalled (no block after the first) or on a
fork (blocks of a branch of their own at every height).  After --warmup seconds it measures
for --seconds and prints one JSON line:

- server_cpu_per_s, mariadb_cpu_per_s, simulator_cpu_per_s: CPU seconds per wall second;
- commit_ms: from a payload sent until its acknowledgement (p50, p95, p99, max);
- decision_ms: one decision of the clients' states, from the server's
  ethtwisted_fleet_decision_seconds histogram (mean, and the buckets' p50 and p95 bounds);
- reads_ms: /api/v1/clients (its first page) and /metrics, each asked every --read-interval
  seconds (median and max);
- database bytes (data and indexes in information_schema after ANALYZE TABLE) at the start and
  end of the window, and per day at the window's rate; sightings stored per day, and bytes per
  stored sighting;
- the states decided at the end, and the load average.

    python bench/fleet_sim.py --clients 1000 --block-time 12 --seconds 120
    python bench/fleet_sim.py --clients 1000 --block-time 0.25 --seconds 120
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import epollreactor  # noqa: E402

epollreactor.install()

import treq  # noqa: E402
from twisted.internet import reactor, task, threads  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402

from ethtwisted.frames import (  # noqa: E402
    Ack,
    ControlFrame,
    Hello,
    Ping,
    Pong,
    Sighting,
    Status,
    Welcome,
    encode_control,
)
from ethtwisted.framing import FrameProtocol  # noqa: E402
from ethtwisted.protocol import Block, block_json, payload_hash  # noqa: E402
from tests.services import MariaDB, free_port  # noqa: E402

TWISTD = str(Path(sys.executable).parent / "twistd")
FIRST = 1000
"""The number of the chains' first block."""
FEATURES = ("status", "sighting", "ping")
BEHIND_SECONDS = 45.0
"""How late a client that is behind reports each block, at least (and at least 10 blocks)."""
SPREAD = 0.1
"""The clients report a block within this fraction of the block time, in ten slices."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Chain:
    """One chain: the payloads of its main branch and of the fork's branch, by number."""

    chain_id: int
    number: int = FIRST - 1
    main: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    fork: dict[int, tuple[bytes, str]] = field(default_factory=dict)

    def next(self, now: float) -> None:
        self.number += 1
        for branch, blocks in (("a", self.main), ("f", self.fork)):
            n = self.number

            def hash_of(number: int, branch: str = branch) -> str:
                branch = "a" if number < FIRST else branch
                return "0x" + f"{branch}{self.chain_id:x}{number:x}".rjust(64, "0")

            payload = block_json(Block(self.chain_id, n, hash_of(n), hash_of(n - 1), int(now)))
            blocks[n] = (payload, payload_hash(payload))


class Agent(FrameProtocol):
    """One simulated client on one connection."""

    def __init__(self, name: str, kind: str, chain: Chain, stats: Stats) -> None:
        super().__init__()
        self.name = name
        self.kind = kind
        self.chain = chain
        self.stats = stats
        self.welcomed = False
        self.sent: dict[str, float] = {}
        self.reported = 0

    def connectionMade(self) -> None:
        self.sendString(encode_control(Hello(self.name, features=FEATURES)))

    def controlReceived(self, frame: ControlFrame) -> None:
        if isinstance(frame, Ack):
            sent = self.sent.pop(frame.sha256, None)
            if sent is not None and self.stats.measuring:
                self.stats.commit_ms.append((time.perf_counter() - sent) * 1000)
        elif isinstance(frame, Welcome):
            self.welcomed = True
            self.status()
        elif isinstance(frame, Ping):
            self.sendString(encode_control(Pong(frame.id, int(time.time() * 1000))))

    def payloadReceived(self, payload: bytes) -> None:
        pass

    def status(self) -> None:
        head = self.reported or FIRST
        status = Status(
            client_version="sim/1.0",
            chain_id=self.chain.chain_id,
            peers=25,
            syncing=False,
            gas_price=10**9,
            base_fee=10**9 + head % 1000,
            safe=head - 32,
            finalized=head - 64,
            pending=10,
            queued=0,
            rtt_ms=0.3,
        )
        self.sendString(encode_control(status))

    def report(self, number: int, lag: int) -> None:
        """Send what this client has when its chain reached C{number}."""
        if not self.welcomed:
            return
        if self.kind == "stalled" and self.reported:
            return
        if self.kind == "behind":
            number -= lag
        if number < FIRST:
            return
        blocks = self.chain.fork if self.kind == "fork" else self.chain.main
        payload, sha256 = blocks[number]
        self.sendString(encode_control(Sighting(sha256, int(time.time() * 1000), "subscription")))
        self.sendString(payload)
        self.sent[sha256] = time.perf_counter()
        self.reported = number
        if self.stats.measuring:
            self.stats.payloads += 1


@dataclass
class Stats:
    measuring: bool = False
    payloads: int = 0
    commit_ms: list[float] = field(default_factory=list)
    reads_ms: dict[str, list[float]] = field(default_factory=dict)


def kinds(n: int, behind: float, stalled: float, fork: float) -> list[str]:
    """The kind of each of C{n} clients, the fractions spread evenly over them."""
    out = ["current"] * n
    taken = 0
    for kind, fraction in (("behind", behind), ("stalled", stalled), ("fork", fork)):
        count = round(n * fraction)
        for i in range(taken, taken + count):
            out[i] = kind
        taken += count
    random.Random(7).shuffle(out)
    return out


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 1)}


def histogram(text: str, name: str) -> tuple[float, float, dict[float, float]]:
    """The sum, count and cumulative buckets of histogram C{name} in a /metrics text."""
    total = count = 0.0
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_sum "):
            total = float(line.split()[1])
        elif line.startswith(f"{name}_count "):
            count = float(line.split()[1])
        elif (m := re.match(rf'{name}_bucket{{le="([^"]+)"}} (\S+)', line)) is not None:
            buckets[float(m.group(1))] = float(m.group(2))
    return total, count, buckets


def decisions(before: str, after: str) -> dict[str, Any]:
    """What the decision histogram says of the decisions between two scrapes."""
    name = "ethtwisted_fleet_decision_seconds"
    s0, c0, b0 = histogram(before, name)
    s1, c1, b1 = histogram(after, name)
    count = c1 - c0
    result: dict[str, Any] = {"count": int(count)}
    if count <= 0:
        return result
    result["mean_ms"] = round((s1 - s0) / count * 1000, 1)
    for label, q in (("p50_at_most_ms", 0.5), ("p95_at_most_ms", 0.95)):
        bound = next((le for le in sorted(b1) if b1[le] - b0.get(le, 0) >= q * count), None)
        # The last bucket has no bound (+Inf), which JSON cannot say as a number.
        result[label] = None if bound is None else bound * 1000 if bound < float("inf") else "+Inf"
    return result


def database_bytes(db: MariaDB) -> dict[str, int]:
    """Data plus index bytes of each table, after ANALYZE TABLE (blocking)."""
    tables = [r[0] for r in db.query("SHOW TABLES")]
    db.query("ANALYZE TABLE " + ", ".join(tables))
    rows = db.query(
        "SELECT table_name, data_length + index_length FROM information_schema.tables"
        " WHERE table_schema = %s",
        (db.database,),
    )
    return {name: int(size) for name, size in rows}


async def timed_get(url: str) -> float:
    started = time.perf_counter()
    reply = await treq.get(url, timeout=60)
    await reply.content()
    if reply.code != 200:
        raise RuntimeError(f"{url}: {reply.code}")
    return (time.perf_counter() - started) * 1000


async def run(args: argparse.Namespace, db: MariaDB, port: int, stats_port: int,
              server_pid: int) -> dict[str, Any]:  # fmt: skip
    stats = Stats()
    chains = [Chain(i + 1) for i in range(args.chains)]
    lag = max(10, int(BEHIND_SECONDS / args.block_time) + 1)
    for chain in chains:
        for _ in range(lag + 1):
            chain.next(time.time())
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
    agents: list[Agent] = []
    for i, kind in enumerate(kinds(args.clients, args.behind, args.stalled, args.fork)):
        agent = Agent(f"sim-{i:05d}", kind, chains[i % len(chains)], stats)
        agents.append(await connectProtocol(endpoint, agent))
        if i % 200 == 199:
            await task.deferLater(reactor, 0.05)
    deadline = time.monotonic() + 60
    while not all(a.welcomed for a in agents):
        if time.monotonic() > deadline:
            raise RuntimeError("not every client was welcomed within 60 s")
        await task.deferLater(reactor, 0.1)

    slices = [agents[i::10] for i in range(10)]

    def tick() -> None:
        for chain in chains:
            chain.next(time.time())
        for n, group in enumerate(slices):
            reactor.callLater(n * SPREAD * args.block_time / 10, send, group)

    def send(group: list[Agent]) -> None:
        for agent in group:
            agent.report(agent.chain.number, lag)

    def statuses() -> None:
        for agent in agents:
            agent.status()

    base = f"http://127.0.0.1:{stats_port}"

    async def read() -> None:
        for path in ("/api/v1/clients", "/metrics"):
            try:
                ms = await timed_get(base + path)
            except Exception as e:
                stats.reads_ms.setdefault(path + " failed", []).append(0.0)
                print(f"read {path} failed: {e}", file=sys.stderr)
                continue
            if stats.measuring:
                stats.reads_ms.setdefault(path, []).append(ms)

    blocks = task.LoopingCall(tick)
    blocks.start(args.block_time)
    status = task.LoopingCall(statuses)
    status.start(args.status_interval, now=False)
    await task.deferLater(reactor, args.warmup)

    before = await (await treq.get(base + "/metrics", timeout=60)).text()
    size0 = await threads.deferToThread(database_bytes, db)
    pids = {"server": server_pid, "mariadb": int((db.datadir / "mysqld.pid").read_text())}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    own0 = time.process_time()
    sightings0 = int(db.query("SELECT COUNT(*) FROM eth_sightings")[0][0])
    started = time.monotonic()
    stats.measuring = True
    reads = task.LoopingCall(lambda: ensureDeferred(read()))
    reads.start(args.read_interval)
    await task.deferLater(reactor, args.seconds)
    stats.measuring = False
    wall = time.monotonic() - started
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
    own1 = time.process_time()
    reads.stop()
    blocks.stop()
    status.stop()
    after = await (await treq.get(base + "/metrics", timeout=60)).text()
    size1 = await threads.deferToThread(database_bytes, db)
    sightings1 = int(db.query("SELECT COUNT(*) FROM eth_sightings")[0][0])
    states = dict(db.query("SELECT state, COUNT(*) FROM eth_states GROUP BY state"))
    unacked = sum(len(a.sent) for a in agents)
    for agent in agents:
        if agent.transport is not None:
            agent.transport.loseConnection()
    total0, total1 = sum(size0.values()), sum(size1.values())
    stored = sightings1 - sightings0
    return {
        "clients": args.clients,
        "chains": args.chains,
        "block_time": args.block_time,
        "seconds": round(wall, 1),
        "kinds": {
            k: kinds(args.clients, args.behind, args.stalled, args.fork).count(k)
            for k in ("current", "behind", "stalled", "fork")
        },
        "payloads_sent_per_s": round(stats.payloads / wall, 1),
        "unacknowledged_at_end": unacked,
        "server_cpu_per_s": round((cpu1["server"] - cpu0["server"]) / wall, 3),
        "mariadb_cpu_per_s": round((cpu1["mariadb"] - cpu0["mariadb"]) / wall, 3),
        "simulator_cpu_per_s": round((own1 - own0) / wall, 3),
        "commit_ms": percentiles(stats.commit_ms),
        "decision_ms": decisions(before, after),
        "reads_ms": {
            path: {
                "median": round(statistics.median(v), 1),
                "max": round(max(v), 1),
                "count": len(v),
            }
            for path, v in stats.reads_ms.items()
        },
        "database_bytes_start": total0,
        "database_bytes_end": total1,
        "database_bytes_per_day": round((total1 - total0) / wall * 86400),
        "sightings_per_day": round(stored / wall * 86400),
        "bytes_per_sighting": round(size1.get("eth_sightings", 0) / max(sightings1, 1)),
        "buffer_pool_mb": args.buffer_pool_mb,
        "states": {k: int(v) for k, v in states.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--block-time", type=float, default=12.0, help="seconds")
    parser.add_argument("--chains", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=120.0, help="measured, after warm-up")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds")
    parser.add_argument("--behind", type=float, default=0.05, help="fraction of the clients")
    parser.add_argument("--stalled", type=float, default=0.05, help="fraction of the clients")
    parser.add_argument("--fork", type=float, default=0.1, help="fraction of the clients")
    parser.add_argument("--status-interval", type=float, default=15.0)
    parser.add_argument("--read-interval", type=float, default=5.0)
    parser.add_argument("--buffer-pool-mb", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ethtwisted-bench-") as tmp:
        work = Path(tmp)
        db = MariaDB(work / "mariadb")
        db.setup()
        server = None
        try:
            db.query("SET GLOBAL innodb_buffer_pool_size = %s", (args.buffer_pool_mb * 2**20,))
            port, stats_port = free_port(), free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETH_")}
            env["ETH_MYSQL_PASSWORD"] = db.password
            # The server runs this checkout's code, whatever the environment has installed.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
            log = work / "server.log"
            server = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "eth-server", "--db", db.url,
                 "--listen", f"tcp:{port}:interface=127.0.0.1",
                 "--stats", f"tcp:{stats_port}:interface=127.0.0.1",
                 "--max-connections", str(args.clients + 100)],
                cwd=work, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while b"collecting on" not in log.read_bytes():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(log.read_text())
                time.sleep(0.05)
            outcome: dict[str, Any] = {}

            async def go() -> None:
                outcome.update(await run(args, db, port, stats_port, server.pid))

            d = ensureDeferred(go())
            d.addErrback(lambda f: outcome.update(error=str(f.value)))
            d.addBoth(lambda _: reactor.stop())
            reactor.run()
            outcome["load_average"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(outcome))
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
            db.stop()


if __name__ == "__main__":
    main()
