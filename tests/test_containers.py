"""
The images built from the Dockerfile, running docker-compose.yml under podman-compose, checked
from outside the containers (C{make test-containers} builds the images first and sets the
C{ETHTWISTED_*_IMAGE} variables to its stand-ins; see the Makefile).

podman-compose 1.0.3 starts services in C{depends_on} order but does not wait for
C{condition: service_healthy}, and podman runs health checks on systemd timers, which this
machine has not: the fixture does both as Docker Compose would, starting each service only once
the services it depends on are healthy, by running each container's own health check
(C{podman healthcheck run}) until it passes.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services import REPO_ROOT

pytestmark = pytest.mark.containers

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
UID = 10001
HEALTHY_WITHIN = 90.0
"""Seconds a service has to become healthy (three waves stay within the test's timeout)."""
BLOCKS_WITHIN = 120.0
"""Seconds for blocks mined on the node (one every 2 s) to be stored."""
POLL = 1.0
"""Seconds between two looks at a container's health or at the stored blocks: from outside
the containers there is no event to wait on, only state to look at again."""
IMAGE_VARIABLES = (
    "ETHTWISTED_IMAGE",
    "ETHTWISTED_GETH_IMAGE",
    "ETHTWISTED_MARIADB_IMAGE",
    "ETHTWISTED_REDIS_IMAGE",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(command: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


def podman(*args: str, timeout: float = 60) -> str:
    return run(["podman", *args], timeout=timeout)


def inspect(kind: str, name: str) -> dict[str, Any]:
    (info,) = json.loads(podman(kind, "inspect", name))
    return dict(info)


@dataclass
class Stack:
    """
    The compose project under test: its environment, its services, and what it printed.
    """

    project: str
    env: dict[str, str]
    password: str
    stats_port: int
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    healthy_at: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 300) -> str:
        command = ["podman-compose", "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        out = run(command, env=self.env, timeout=timeout)
        self.output.append(out)
        return out

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def waves(self) -> list[list[str]]:
        """
        The services in the order their C{depends_on} allows: each wave needs only earlier ones.
        """
        done: set[str] = set()
        waves = []
        while len(done) < len(self.services):
            wave = sorted(
                name
                for name, service in self.services.items()
                if name not in done and set(service.get("depends_on", {})) <= done
            )
            assert wave, "depends_on has a cycle"
            waves.append(wave)
            done.update(wave)
        return waves

    def up(self) -> None:
        """
        Start the stack as Docker Compose would: each wave once the one before is healthy.
        """
        self.healthy_at.clear()
        for wave in self.waves():
            self.compose("up", "-d", "--no-build", "--no-deps", *wave)
            for service in wave:
                self.wait_healthy(service)

    def wait_healthy(self, service: str) -> None:
        """
        Run the container's own health check until it passes (podman has no timer for it here).
        """
        name = self.container(service)
        deadline = time.monotonic() + HEALTHY_WITHIN
        while True:
            check = subprocess.run(
                ["podman", "healthcheck", "run", name], capture_output=True, text=True, timeout=60
            )
            if check.returncode == 0:
                self.healthy_at[service] = time.time()
                return
            if time.monotonic() > deadline:
                health = inspect("container", name)["State"]["Health"]["Log"][-1]["Output"]
                logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True)
                pytest.fail(f"{service} not healthy: {health}\n{logs.stdout}{logs.stderr}")
            time.sleep(POLL)

    def sql(self, query: str) -> list[list[str]]:
        out = podman(
            "exec", self.container("mysql"), "mariadb", "--batch", "--skip-column-names",
            "eth", "-e", query,
        )  # fmt: skip
        return [line.split("\t") for line in out.splitlines()]

    def node(self, method: str, *params: object) -> Any:
        """
        Ask the node over its IPC socket, from inside its own container.
        """
        request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        script = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX);s.settimeout(5);s.connect('/ipc/geth.ipc')\n"
            "s.sendall(sys.argv[1].encode());r=b''\n"
            "while not r.rstrip().endswith(b'}'):\n"
            "    c=s.recv(65536)\n"
            "    if not c: break\n"
            "    r+=c\n"
            "print(r.decode())\n"
        )
        out = podman("exec", self.container("geth"), "python3", "-c", script, request)
        return json.loads(out)["result"]

    def stored_blocks(self) -> list[tuple[int, str]]:
        rows = self.sql(
            "SELECT number, block_hash FROM eth_blocks WHERE client = 'compose-geth'"
            " ORDER BY number"
        )
        return [(int(number), block_hash) for number, block_hash in rows]

    def wait_for_blocks(self, above: int) -> list[tuple[int, str]]:
        """
        Wait until a block numbered above C{above} is stored; return every stored block.
        """
        deadline = time.monotonic() + BLOCKS_WITHIN
        while True:
            blocks = self.stored_blocks()
            if blocks and blocks[-1][0] > above:
                return blocks
            assert time.monotonic() < deadline, f"no block above {above} stored: {blocks}"
            time.sleep(POLL)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = [name for name in IMAGE_VARIABLES if not os.environ.get(name)]
    assert not missing, f"run this module with `make test-containers` (unset: {missing})"
    password = secrets.token_hex(16)
    secret_file = tmp_path_factory.mktemp("secret") / "mysql_password"
    secret_file.write_text(password + "\n", encoding="utf-8")
    # The containers read it as their own users (uid 10001, mysql), as they do a user's file.
    secret_file.chmod(0o644)
    stats_port = free_port()
    env = dict(os.environ)
    env.update(
        ETHTWISTED_MYSQL_PASSWORD_FILE=str(secret_file),
        ETHTWISTED_STATS_PORT=str(stats_port),
        ETHTWISTED_LISTEN_PORT=str(free_port()),
    )
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    stack = Stack(f"ethtwisted-test-{os.getpid()}", env, password, stats_port, services)
    try:
        stack.up()
        yield stack
    finally:
        stack.compose("down", "-v", "-t", "1")
        # podman-compose 1.0.3 leaves the project's network behind.
        podman("network", "rm", f"{stack.project}_default")


def test_stack_becomes_healthy_in_dependency_order(stack: Stack) -> None:
    """
    Every service runs its compose file's own health check and passes it, and was started only
    after every service it depends on was healthy (each wave of the fixture), the ethtwisted
    services last: what Docker Compose's C{condition: service_healthy} does.
    """
    assert stack.waves() == [["geth", "mysql", "redis"], ["server"], ["client"]]
    for name, service in stack.services.items():
        info = inspect("container", stack.container(name))
        assert info["State"]["Running"], name
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD"
        health_command = info["Config"]["Healthcheck"]["Test"]
        assert all(word in " ".join(health_command) for word in check[1:]), (name, health_command)
        assert info["State"]["Health"]["Status"] == "healthy", name
        # Whole seconds: a start in the same second as the dependency's health counts as after.
        started = podman("inspect", "--format", "{{.State.StartedAt.Unix}}", info["Id"])
        for dependency in service.get("depends_on", {}):
            assert int(started) >= int(stack.healthy_at[dependency]), (name, dependency)


def test_blocks_flow_from_node_over_ipc_to_mariadb(stack: Stack) -> None:
    """
    Blocks mined on the node reach MariaDB with the node's own hashes: the client container
    reads them over the IPC socket of the volume it shares (read-only) with the node's
    container, whose node listens on nothing else reachable, and sends them to the server.
    """
    blocks = stack.wait_for_blocks(above=2)
    for number, block_hash in blocks[-3:]:
        assert stack.node("eth_getBlockByNumber", hex(number), False)["hash"] == block_hash

    geth = {m["Destination"]: m for m in inspect("container", stack.container("geth"))["Mounts"]}
    client = inspect("container", stack.container("client"))
    client_mounts = {m["Destination"]: m for m in client["Mounts"]}
    assert client_mounts["/ipc"]["Name"] == geth["/ipc"]["Name"] == f"{stack.project}_ipc"
    assert client_mounts["/ipc"]["RW"] is False
    assert "ETH_NODE=/ipc/geth.ipc" in client["Config"]["Env"]
    # The node's HTTP port is bound to its own container's loopback: IPC is the only way in.
    listening = podman("exec", stack.container("geth"), "cat", "/proc/net/tcp")
    addresses = {line.split()[1] for line in listening.splitlines()[1:] if line.split()[3] == "0A"}
    assert addresses and all(a.startswith("0100007F:") for a in addresses), addresses


def test_stats_api_answers_on_loopback_only(stack: Stack) -> None:
    """
    The stats API answers on the port published on 127.0.0.1, and names the client and the
    head it stored; every published port of the stack is bound to 127.0.0.1 alone.
    """
    stack.wait_for_blocks(above=0)
    for path, wanted in [("/healthz", ""), ("/api/v1/clients", "compose-geth")]:
        connection = http.client.HTTPConnection("127.0.0.1", stack.stats_port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 200, path
            assert wanted in response.read().decode(), path
        finally:
            connection.close()
    for name in stack.services:
        ports = inspect("container", stack.container(name))["NetworkSettings"]["Ports"] or {}
        bindings = [b for binding in ports.values() for b in (binding or [])]
        assert all(b["HostIp"] == "127.0.0.1" for b in bindings), (name, bindings)
        assert bool(bindings) == (name == "server"), name


def test_containers_run_as_uid_10001_and_write_their_volumes(stack: Stack) -> None:
    """
    The node's, the server's and the client's processes run as uid 10001, and the files they
    write in their volumes (the node's chain and IPC socket, the client's spool) are theirs.
    """
    stack.wait_for_blocks(above=0)
    for name in ("geth", "server", "client"):
        status = podman("exec", stack.container(name), "cat", "/proc/1/status")
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert uids == [str(UID)] * 4, (name, uids)
    for volume, wanted in [("geth-data", "anvil-state.json"), ("ipc", "geth.ipc")]:
        path = Path(inspect("volume", f"{stack.project}_{volume}")["Mountpoint"]) / wanted
        assert path.stat().st_uid == UID, path
    client_data = Path(inspect("volume", f"{stack.project}_client-data")["Mountpoint"])
    written = [p for p in client_data.rglob("*") if p.is_file()]
    assert written and all(p.stat().st_uid == UID for p in written), written


def test_secret_reaches_the_server_and_nothing_shows_it(stack: Stack) -> None:
    """
    The MySQL password reaches the server as a file (the server logs in with it and stores),
    and appears in no container's log, process list or C{podman inspect}, nor in any image's.
    """
    stack.wait_for_blocks(above=0)
    server = stack.container("server")
    secret = podman("exec", server, "cat", "/run/secrets/mysql_password")
    assert secret.strip() == stack.password
    seen = {"podman-compose's output": "".join(stack.output)}
    for name in stack.services:
        container = stack.container(name)
        logs = subprocess.run(["podman", "logs", container], capture_output=True, text=True)
        seen[f"{name}'s log"] = logs.stdout + logs.stderr
        seen[f"{name}'s inspect"] = podman("inspect", container)
        seen[f"{name}'s processes"] = podman("top", container, "args")
        image = inspect("container", container)["ImageName"]
        seen[f"{name}'s image"] = podman("image", "inspect", image)
        seen[f"{name}'s image history"] = podman("history", "--no-trunc", image)
    assert [where for where, text in seen.items() if stack.password in text] == []


def test_down_and_up_resumes_without_losing_or_repeating_a_block(stack: Stack) -> None:
    """
    After C{podman-compose down} (volumes kept) and C{up}, the node goes on from its chain and
    the client from its checkpoint: the stored blocks run on with no number missing and none
    stored twice, and they are still the node's blocks.
    """
    before = stack.wait_for_blocks(above=2)
    stack.compose("down", "-t", "1")
    stack.up()
    after = stack.wait_for_blocks(above=before[-1][0] + 3)
    numbers = [number for number, _ in after]
    assert numbers == list(range(numbers[0], numbers[-1] + 1)), numbers
    assert after[: len(before)] == before
    for number, block_hash in [before[-1], after[-1]]:
        assert stack.node("eth_getBlockByNumber", hex(number), False)["hash"] == block_hash
