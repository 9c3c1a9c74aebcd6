"""Real services for the tests and the benchmarks: private MariaDB, Redis and anvil servers.

Each service is a child process, leader of its own process group, listening on a free port of
127.0.0.1, with its data and log under a directory it is given. ``start()`` returns only once the
service answers (a bounded poll, blocking: call it before any reactor-driven code runs), and
``stop()`` ends it: SIGTERM, then SIGKILL after a bounded wait.

- ``MariaDB``: ``setup()`` makes a data directory, starts the server and creates one database
  and one password-protected user; ``query()`` runs a statement as root.
- ``GaleraCluster``: three MariaDB nodes (``GaleraNode``) in one Galera cluster on loopback.
- ``Redis``: ``execute()`` sends one command; ``flushall()`` empties it.
- ``SentinelGroup``: a Redis master, its replica and three ``Sentinel`` processes watching it.
- ``Anvil``: an Ethereum dev node serving HTTP and WebSocket on a port and IPC on a path;
  ``rpc()``, ``ipc_rpc()``, ``mine()``.  ``http_rpc()`` calls a JSON-RPC method of any node.
- tests/ethereumjs.py: EthereumJS nodes of a clique network, ``Service``s like these.

Nothing here imports pytest: ``bench/`` uses these classes outside a test session, and
tests/conftest.py wraps them in fixtures. A missing binary raises ``MissingBinaryError``, with
a hint.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import IO, Any, Protocol

import pymysql

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds a service has to answer once started
STOP_TIMEOUT = 10.0  # seconds a service has to exit after SIGTERM, before SIGKILL
REQUEST_TIMEOUT = 10.0  # seconds for one request made by a fixture helper
POLL_INTERVAL = 0.05
PORT_ATTEMPTS = 3  # fresh ports tried when a new service fails to start (port taken meanwhile)
INSTALL_HINT = "run `make test` from the repository root: it installs what the tests need"
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


class ServiceError(Exception):
    """A test service did not start, did not answer, or answered with an error."""


class MissingBinaryError(ServiceError):
    """A program a service needs is not installed."""


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on at the moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary(name: str, candidates: Sequence[Path] = ()) -> str:
    """Locate an executable among ``candidates``, then on PATH and the sbin folders."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name) or shutil.which(name, path=SBIN_PATH)
    if found is None:
        raise MissingBinaryError(f"{name} is not installed: {INSTALL_HINT}")
    return found


def anvil_binary() -> str:
    """Locate anvil: the npm package's native binary for this platform, else its wrapper."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    modules = REPO_ROOT / "node_modules"
    native = modules / "@foundry-rs" / f"anvil-{sys.platform}-{arch}" / "bin" / "anvil"
    return find_binary("anvil", [native, modules / ".bin" / "anvil"])


class _Process:
    """One service process, leader of its own process group, logging to a file."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    def spawn(self, argv: Sequence[str], cwd: Path) -> None:
        if self.running:
            raise ServiceError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            log.write(f"--- {' '.join(argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self._popen is not None and self._popen.poll() is not None:
            raise ServiceError(
                f"{self.name} exited with status {self._popen.returncode}; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def _signal_group(self, signum: int) -> None:
        if self._popen is not None and self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if the process has not exited within ``timeout``."""
        if self._popen is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the leader."""
        if self._popen is None:
            return
        self._signal_group(signal.SIGKILL)
        self._popen.wait(STOP_TIMEOUT)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _wait_ready(process: _Process, ready: Callable[[], object], timeout: float) -> None:
    """Poll ``ready`` until it returns without raising, the process dies, or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        process.check_alive()
        try:
            ready()
        except (OSError, ServiceError, pymysql.MySQLError) as e:
            error: Exception = e
        else:
            return
        if time.monotonic() >= deadline:
            raise ServiceError(
                f"{process.name} did not answer within {timeout:g} s ({error!r}); "
                f"log {process.log_path}:\n{process.log_tail()}"
            )
        time.sleep(POLL_INTERVAL)


class Service:
    """Start, stop, kill and restart one server process on a fixed port."""

    host = LOOPBACK

    def __init__(self, name: str, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self._process = _Process(name, workdir / f"{name}.log")

    @property
    def name(self) -> str:
        return self._process.name

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    @property
    def running(self) -> bool:
        return self._process.running

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server on its port and return once it answers."""
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the server on its port, not waiting for it (then call ``wait_ready``)."""
        self._process.spawn(self._argv(), self.workdir)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the server started by ``spawn`` answers; kill it if it never does."""
        try:
            _wait_ready(self._process, self._ready, timeout)
        except ServiceError:
            self._process.kill()
            raise

    def choose_ports(self) -> None:
        """Take free ports for the next start: C{port} (a server that needs more takes more)."""
        self.port = free_port()

    def start_on_free_port(self) -> None:
        """Start on free ports, trying others if the server dies (a port taken meanwhile)."""
        for attempt in range(PORT_ATTEMPTS):
            self.choose_ports()
            try:
                self.start()
            except ServiceError:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
            else:
                return

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM; SIGKILL after a bounded wait)."""
        self._process.stop()

    def kill(self) -> None:
        """SIGKILL the server, as a crash or a power cut would, and leave it down."""
        self._process.kill()

    def restart(self) -> None:
        """SIGKILL the server, start it again on the same port and data, wait until ready."""
        self.kill()
        self.start()

    def ensure_running(self) -> None:
        """Start the server again if an earlier test left it stopped."""
        if not self.running:
            self.start()


class MariaDB(Service):
    """A private MariaDB server with one database and one password-protected user."""

    def __init__(self, workdir: Path, user: str = "ethtwisted", database: str = "ethtwisted"):
        super().__init__("mariadbd", workdir)
        self.datadir = workdir / "data"
        self.tmpdir = workdir / "tmp"  # a private one: temporary tables never meet another's
        self.socket = str(self.datadir / "mysqld.sock")
        self.user = user
        self.password = secrets.token_hex(12)
        self.database = database
        self.run_as = "root"
        self._mariadbd = find_binary("mariadbd")
        self._install_db = find_binary("mariadb-install-db")

    @property
    def url(self) -> str:
        """The ``--db`` URL of ``database`` for ``user`` (the password goes separately)."""
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"

    def url_for(self, database: str) -> str:
        """The ``--db`` URL of another database on this server."""
        return f"mysql://{self.user}@{self.host}:{self.port}/{database}"

    def setup(self) -> None:
        """Create the data directory, start the server, create the database and the user."""
        self.install()
        self.start_on_free_port()
        self.create_user()

    def install(self) -> None:
        """Create the data directory and the system tables."""
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        argv = [
            self._install_db,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--user={self.run_as}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT,
            check=False,
        )
        with self.log_path.open("ab") as log:
            log.write(f"--- {' '.join(argv)}\n".encode() + result.stdout)
        if result.returncode != 0:
            raise ServiceError(
                f"mariadb-install-db exited with status {result.returncode}:\n"
                + result.stdout.decode(errors="replace")
            )

    def create_user(self) -> None:
        """Create ``user`` with ``password`` and the database ``database``."""
        for host in ("%", "localhost"):
            self._execute("CREATE USER %s@%s IDENTIFIED BY %s", (self.user, host, self.password))
            self._execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s", (self.user, host))
        self.create_database(self.database)

    def _argv(self) -> list[str]:
        return [
            self._mariadbd,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket}",
            f"--pid-file={self.datadir / 'mysqld.pid'}",
            f"--user={self.run_as}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
        ]

    def _ready(self) -> None:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        # The TCP listener opens with the socket one; check it answers with a greeting too.
        with socket.create_connection((self.host, self.port), timeout=REQUEST_TIMEOUT) as sock:
            if not sock.recv(1):
                raise ServiceError("MariaDB closed the TCP connection without a greeting")

    def connect(self, database: str | None = None) -> pymysql.connections.Connection[Any]:
        """A new blocking connection as root over the unix socket, in autocommit mode."""
        return pymysql.connect(
            unix_socket=self.socket,
            user="root",
            database=database,
            autocommit=True,
            connect_timeout=REQUEST_TIMEOUT,
            read_timeout=REQUEST_TIMEOUT * 3,
            write_timeout=REQUEST_TIMEOUT,
        )

    def query(
        self, sql: str, args: Sequence[Any] | None = None, *, database: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement as root (blocking: not on the reactor) and return its rows.

        It runs in ``database``, by default the server's own ``database``.
        """
        return self._execute(sql, args, database or self.database)

    def _execute(
        self, sql: str, args: Sequence[Any] | None = None, database: str | None = None
    ) -> list[tuple[Any, ...]]:
        with self.connect(database) as connection, connection.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def create_database(self, name: str) -> None:
        """Drop ``name`` if it exists and create it empty."""
        quoted = _quote_identifier(name)
        self._execute(f"DROP DATABASE IF EXISTS {quoted}")
        self._execute(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4")

    def drop_database(self, name: str) -> None:
        """Drop ``name``, waiting at most a few seconds for locks held by stray connections."""
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SET SESSION lock_wait_timeout = 5")
            cursor.execute(f"DROP DATABASE IF EXISTS {_quote_identifier(name)}")


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class MySQLDatabase:
    """One test's own empty database on the session's MariaDB server."""

    server: MariaDB
    name: str

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def user(self) -> str:
        return self.server.user

    @property
    def password(self) -> str:
        return self.server.password

    @property
    def url(self) -> str:
        """``mysql://user@127.0.0.1:port/name`` (the password goes separately)."""
        return self.server.url_for(self.name)

    def query(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in this database as root (blocking) and return its rows."""
        return self.server.query(sql, args, database=self.name)


GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
# A node killed is suspected after 2 s and dropped from the cluster after 4 s (Galera's defaults
# are 5 s and 15 s): the others' commits wait meanwhile, and the node cannot join again before.
GALERA_TIMEOUTS = (
    "evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S;"
    "evs.suspect_timeout=PT2S;evs.inactive_timeout=PT4S;evs.install_timeout=PT4S"
)


class GaleraNode(MariaDB):
    """One node of a ``GaleraCluster``: a MariaDB server with wsrep on, on ports of its own."""

    def __init__(self, workdir: Path, cluster: GaleraCluster, index: int) -> None:
        super().__init__(workdir, cluster.user, cluster.database)
        self.password = cluster.password
        self.cluster = cluster
        self.index = index
        self.port = free_port()
        self.gcomm_port = free_port()  # group communication
        self.ist_port = free_port()  # incremental state transfer
        self.sst_port = free_port()  # whole state transfer (rsync)
        self.bootstrap = False
        """Start a new cluster (the first node's first start) rather than join one."""
        self._process.name = f"mariadbd (Galera node {index + 1})"
        if os.geteuid() == 0:
            # rsync's daemon, run as root, would drop to nobody and could not write the
            # joiner's data directory: the node runs as mysql, which owns its folder.
            self.run_as = "mysql"

    def _argv(self) -> list[str]:
        gmcast = f"tcp://{self.host}:{self.gcomm_port}"
        return [
            *super()._argv(),
            "--wsrep-on=ON",
            f"--wsrep-provider={GALERA_PROVIDER}",
            f"--wsrep-cluster-name={self.cluster.name}",
            f"--wsrep-cluster-address={self.cluster.address}",
            f"--wsrep-node-address={self.host}:{self.gcomm_port}",
            f"--wsrep-provider-options=gmcast.listen_addr={gmcast};"
            f"ist.recv_addr={self.host}:{self.ist_port};{GALERA_TIMEOUTS}",
            f"--wsrep-sst-receive-address={self.host}:{self.sst_port}",
            "--wsrep-sst-method=rsync",
            "--binlog-format=ROW",
            "--innodb-autoinc-lock-mode=2",
            *(["--wsrep-new-cluster"] if self.bootstrap else []),
        ]

    def _ready(self) -> None:
        super()._ready()
        status = dict(self._execute("SHOW GLOBAL STATUS LIKE 'wsrep_%'"))
        state = (status.get("wsrep_local_state_comment"), status.get("wsrep_cluster_status"))
        if state != ("Synced", "Primary"):
            raise ServiceError(f"Galera node {self.index + 1} is {state}, not synced yet")


class GaleraCluster:
    """A MariaDB Galera cluster of ``size`` nodes on loopback, sharing one user and database.

    Each node has its own data directory, temporary directory, socket and ports (client,
    group communication, IST, SST), all under one folder of its own below /tmp (as root,
    owned by mysql: the nodes run as mysql, whose rsync must reach their folders). ``setup()``
    makes the first node start the cluster, creates the user and the database there (Galera
    copies them), then the others join by rsync SST and ``setup()`` returns once all are
    synced. ``ensure_running()`` makes a node killed by a test join again.
    """

    def __init__(self, size: int = 3, name: str = "ethtwisted") -> None:
        self.name = name
        self.user = "ethtwisted"
        self.database = "ethtwisted"
        self.password = secrets.token_hex(12)
        find_binary("rsync")
        if not Path(GALERA_PROVIDER).is_file():
            raise MissingBinaryError(f"{GALERA_PROVIDER} is not installed: {INSTALL_HINT}")
        self.workdir = Path(tempfile.mkdtemp(prefix="ethtwisted-galera-"))
        self.nodes: list[GaleraNode] = []
        for index in range(size):
            folder = self.workdir / f"node{index + 1}"
            folder.mkdir()
            self.nodes.append(GaleraNode(folder, self, index))
        self._chown()

    @property
    def address(self) -> str:
        return "gcomm://" + ",".join(f"{n.host}:{n.gcomm_port}" for n in self.nodes)

    def _chown(self) -> None:
        if os.geteuid() != 0:
            return
        for path in [self.workdir, *self.workdir.rglob("*")]:
            shutil.chown(path, "mysql", "mysql")

    def setup(self) -> None:
        """Start the cluster, create the user and the database, wait until all are synced."""
        first, *others = self.nodes
        for node in self.nodes:
            node.tmpdir.mkdir(parents=True)
            node.datadir.mkdir()  # the joiners': filled by the state transfer
        self._chown()
        first.install()
        first.bootstrap = True
        try:
            first.start()
        finally:
            first.bootstrap = False
        first.create_user()
        for node in others:
            node.spawn()
        for node in others:
            node.wait_ready(START_TIMEOUT * 2)

    def running_node(self) -> GaleraNode:
        """A node that runs (to create and query databases through)."""
        for node in self.nodes:
            if node.running:
                return node
        raise ServiceError("no Galera node is running")

    def ensure_running(self) -> None:
        """Start again, joining the cluster, every node an earlier test left stopped."""
        stopped = [node for node in self.nodes if not node.running]
        for node in stopped:
            node.spawn()
        for node in stopped:
            node.wait_ready(START_TIMEOUT * 2)

    def database_on_each(self, name: str) -> list[MySQLDatabase]:
        """``name`` created empty (through one node), as seen through each node."""
        self.running_node().create_database(name)
        return [MySQLDatabase(node, name) for node in self.nodes]

    def stop(self) -> None:
        """Stop every node and remove the cluster's folder."""
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class RedisReplyError(ServiceError):
    """Redis answered a command with an error reply."""


class Redis(Service):
    """A private Redis server without persistence (``args``: more of its options)."""

    def __init__(self, workdir: Path, args: Sequence[str] = (), name: str = "redis-server"):
        super().__init__(name, workdir)
        self.args = list(args)
        self._redis_server = find_binary("redis-server")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _argv(self) -> list[str]:
        return [
            self._redis_server,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            *self.args,
        ]

    def _ready(self) -> None:
        if self.execute("PING") != "PONG":
            raise ServiceError("Redis did not answer PING with PONG")

    def execute(self, *args: str | bytes | int | float) -> Any:
        """Send one command over a new connection (blocking) and return the decoded reply.

        Status replies come back as ``str``, bulk strings as ``bytes``, integers as ``int``,
        arrays as lists, nil as ``None``; an error reply raises ``RedisReplyError``.
        """
        with socket.create_connection((self.host, self.port), timeout=REQUEST_TIMEOUT) as sock:
            sock.sendall(_resp_command(args))
            with sock.makefile("rb") as reader:
                return _resp_reply(reader)

    def flushall(self) -> None:
        """Delete every key of every database."""
        self.execute("FLUSHALL")


def _info(reply: bytes) -> dict[str, str]:
    lines = reply.decode().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    keys = [k.decode() if isinstance(k, bytes) else str(k) for k in flat[::2]]
    values = [v.decode() if isinstance(v, bytes) else v for v in flat[1::2]]
    return dict(zip(keys, values, strict=True))


class Sentinel(Redis):
    """One Redis Sentinel watching the master ``name`` of a ``SentinelGroup``."""

    def __init__(self, workdir: Path, group: SentinelGroup, index: int) -> None:
        super().__init__(workdir, name=f"redis-sentinel-{index + 1}")
        self.group = group
        self.config = workdir / "sentinel.conf"
        self._redis_sentinel = find_binary("redis-sentinel")

    def _argv(self) -> list[str]:
        name, master = self.group.name, self.group.master
        # Sentinel rewrites its file (what it learnt, a failover): a new one at every start.
        self.config.write_text(
            f"port {self.port}\nbind {self.host}\ndir {self.workdir}\n"
            f"sentinel monitor {name} {master.host} {master.port} 2\n"
            f"sentinel down-after-milliseconds {name} {self.group.down_after_ms}\n"
            f"sentinel failover-timeout {name} 10000\n"
        )
        return [self._redis_sentinel, str(self.config)]

    def _ready(self) -> None:
        self.master_state()

    def master_state(self) -> dict[str, Any]:
        """What this Sentinel says of the master (``SENTINEL MASTER name``)."""
        return _pairs(self.execute("SENTINEL", "MASTER", self.group.name))

    def master_address(self) -> tuple[str, int]:
        """Where this Sentinel says the master is."""
        host, port = self.execute("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.group.name)
        return host.decode(), int(port)


class SentinelGroup:
    """A Redis master, its replica and three Sentinels watching it (quorum 2), on loopback.

    ``start()`` returns once the replica is in sync and every Sentinel knows the replica and
    the other two Sentinels, so that killing the master makes them promote the replica
    (``down_after_ms`` after the master stops answering).  ``url`` is the ``--redis`` URL.
    """

    def __init__(self, workdir: Path, name: str = "ethmaster", down_after_ms: int = 1000):
        self.name = name
        self.down_after_ms = down_after_ms
        for folder in ("master", "replica", "s1", "s2", "s3"):
            (workdir / folder).mkdir()
        self.master = Redis(workdir / "master", name="redis-master")
        self.replica = Redis(workdir / "replica", name="redis-replica")
        self.sentinels = [Sentinel(workdir / f"s{i + 1}", self, i) for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"sentinel://{hosts}/{self.name}/0"

    def start(self) -> None:
        self.master.start_on_free_port()
        self.replica.args = ["--replicaof", self.master.host, str(self.master.port)]
        self.replica.start_on_free_port()
        for sentinel in self.sentinels:
            sentinel.start_on_free_port()
        self._wait(self._watched, "the replica in sync, known to three Sentinels that know"
                   " each other")  # fmt: skip

    def _watched(self) -> bool:
        link = _info(self.replica.execute("INFO", "replication")).get("master_link_status")
        states = [s.master_state() for s in self.sentinels]
        return link == "up" and all(
            int(st["num-slaves"]) == 1 and int(st["num-other-sentinels"]) == 2 for st in states
        )

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                raise ServiceError(f"not within {START_TIMEOUT:g} s: {what}")
            time.sleep(POLL_INTERVAL)

    def wait_promoted(self, server: Redis) -> None:
        """Return once every Sentinel names ``server`` the master and it says it is one."""

        def promoted() -> bool:
            named = {s.master_address() for s in self.sentinels}
            role = _info(server.execute("INFO", "replication")).get("role")
            return named == {(server.host, server.port)} and role == "master"

        self._wait(promoted, f"{server.name} promoted to master")

    def stop(self) -> None:
        for service in (*self.sentinels, self.replica, self.master):
            service.stop()


def _resp_command(args: Sequence[str | bytes | int | float]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _resp_reply(reader: IO[bytes]) -> Any:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection before a whole reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RedisReplyError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else reader.read(size + 2)[:-2]
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_resp_reply(reader) for _ in range(size)]
    raise ServiceError(f"unexpected Redis reply {line!r}")


class RPCError(ServiceError):
    """The node answered a JSON-RPC request with an error."""


_rpc_ids = count(1)


def rpc_request(method: str, params: Sequence[Any]) -> bytes:
    """The body of a JSON-RPC request calling C{method} with C{params}."""
    body = {"jsonrpc": "2.0", "id": next(_rpc_ids), "method": method, "params": list(params)}
    return json.dumps(body).encode()


def rpc_result(method: str, reply: Any) -> Any:
    """The result of a JSON-RPC reply; L{RPCError} if it is an error."""
    if "error" in reply:
        raise RPCError(f"{method}: {reply['error']}")
    return reply["result"]


def http_rpc(url: str, method: str, params: Sequence[Any] = ()) -> Any:
    """Call one JSON-RPC method at the C{http://} C{url} (blocking) and return its result."""
    if not url.startswith("http://"):
        raise ValueError(f"not an http:// URL: {url}")
    request = urllib.request.Request(  # noqa: S310 (http:// checked above)
        url, data=rpc_request(method, params), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:  # noqa: S310
        return rpc_result(method, json.load(response))


class Anvil(Service):
    """An anvil Ethereum dev node serving HTTP and WebSocket on a port, and IPC on a path.

    Its chain lives in memory: ``restart()`` (and ``stop()`` then ``start()``) begins a new
    chain at block 0 unless ``args`` ask anvil to keep state.
    """

    def __init__(self, workdir: Path, args: Sequence[str] = ()) -> None:
        super().__init__("anvil", workdir)
        self.ipc_path = str(workdir / "anvil.ipc")
        self.args = list(args)
        self._anvil = anvil_binary()

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _argv(self) -> list[str]:
        return [
            self._anvil,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--ipc",
            self.ipc_path,
            "--silent",
            *self.args,
        ]

    def start(self) -> None:
        # A socket file left by a killed anvil would pass for a live one.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.ipc_path)
        super().start()

    def _ready(self) -> None:
        self.ipc_rpc("eth_chainId")
        self.rpc("eth_chainId")

    def rpc(self, method: str, *params: Any) -> Any:
        """Call one JSON-RPC method over HTTP (blocking) and return its result."""
        return http_rpc(self.http_url, method, params)

    def ipc_rpc(self, method: str, *params: Any) -> Any:
        """Call one JSON-RPC method over the IPC socket (blocking) and return its result."""
        decoder = json.JSONDecoder()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(REQUEST_TIMEOUT)
            sock.connect(self.ipc_path)
            sock.sendall(rpc_request(method, params))
            received = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("anvil closed the IPC connection before a reply")
                received += chunk
                try:
                    reply, _ = decoder.raw_decode(received.decode().strip())
                except ValueError:
                    continue
                return rpc_result(method, reply)

    def block_number(self) -> int:
        """The number of the latest block."""
        return int(self.rpc("eth_blockNumber"), 16)

    def mine(self, n: int = 1) -> int:
        """Mine ``n`` blocks at once and return the new latest block number."""
        self.rpc("anvil_mine", hex(n))
        return self.block_number()

    def revert(self, snapshot: str) -> None:
        """
        Go back to ``snapshot`` (of ``evm_snapshot``), the blocks after it dropped; the next
        blocks are mined 1,000 s later than the latest, so they differ from the dropped ones
        even where their contents are the same: a reorg.
        """
        if self.rpc("evm_revert", snapshot) is not True:
            raise RPCError(f"evm_revert: snapshot {snapshot} not reverted to")
        latest = self.rpc("eth_getBlockByNumber", "latest", False)
        self.rpc("evm_setNextBlockTimestamp", int(latest["timestamp"], 16) + 1000)


class AnvilFactory(Protocol):
    def __call__(self, *args: str, block_time: float | None = None) -> Anvil: ...
