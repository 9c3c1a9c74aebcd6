"""
docker-compose.yml and the Dockerfile against the code: every command and environment they
give a plugin parses with that plugin's own C{Options}, as the container would parse it, and
the services find each other where the other listens.  Both files also pass their linters.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ethtwisted.options import EnvOptions, env_name
from tests.services import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
TAP_MODULES = {
    "eth-server": "ethtwisted.server_tap",
    "eth-client": "ethtwisted.client_tap",
    "eth-stats": "ethtwisted.stats_tap",
    "eth-demo": "ethtwisted.demo_tap",
}
# Variables the code reads besides the options' own.
EXTRA_VARIABLES = {"ETH_MYSQL_PASSWORD", "ETH_HEALTHCHECK_URL"}
SECRETS_DIR = "/run/secrets/"


def load_compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return compose


def dockerfile_stages() -> dict[str, dict[str, Any]]:
    """
    Each stage of the Dockerfile by name: its C{ENV} (accumulated, with what it inherits
    from an earlier stage of the file) and its C{CMD}.
    """
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] = {}
    for line in text.splitlines():
        words = line.split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        instruction, rest = words[0].upper(), (words[1] if len(words) > 1 else "")
        if instruction == "FROM":
            base, _, name = rest.partition(" AS ")
            inherited = stages.get(base.strip(), {"env": {}, "cmd": None})
            current = {"env": dict(inherited["env"]), "cmd": inherited["cmd"]}
            stages[name.strip()] = current
        elif instruction == "ENV":
            current["env"].update(word.split("=", 1) for word in shlex.split(rest))
        elif instruction == "CMD":
            current["cmd"] = json.loads(rest)
    return stages


def our_services() -> dict[str, dict[str, Any]]:
    """
    The compose services that run an ethtwisted plugin from one of the Dockerfile's images.
    """
    services = load_compose()["services"]
    return {
        name: service
        for name, service in services.items()
        if "build" in service and service.get("command", [None])[0] in TAP_MODULES
    }


def parse(plugin: str, args: list[str], environ: dict[str, str]) -> EnvOptions:
    """
    Parse C{args} and C{environ} as C{twistd plugin} would in the container.
    """
    options: EnvOptions = importlib.import_module(TAP_MODULES[plugin]).Options()
    options.environ = environ
    options.parseOptions(args)
    return options


def container_environment(
    service: dict[str, Any], stages: dict[str, dict[str, Any]], tmp_path: Path
) -> dict[str, str]:
    """
    The environment a service's container runs with: its image's C{ENV} and its own, with
    the files of its secrets (which the test writes) in place of C{/run/secrets}.
    """
    image_env = stages[service["build"]["target"]]["env"]
    environ = {k: v for k, v in image_env.items() if k.startswith("ETH_")}
    environ.update({k: str(v) for k, v in service.get("environment", {}).items()})
    for secret in service.get("secrets", []):
        (tmp_path / secret).write_text("not-the-real-password\n", encoding="utf-8")
    for key, value in environ.items():
        if value.startswith(SECRETS_DIR):
            name = value[len(SECRETS_DIR) :]
            assert name in service.get("secrets", []), f"{key} names a secret not given"
            environ[key] = str(tmp_path / name)
    return environ


def known_variables(options: EnvOptions) -> set[str]:
    return {env_name(o.rstrip("=")) for o in options.longOpt} | EXTRA_VARIABLES


@pytest.mark.parametrize("name", sorted(our_services()))
def test_service_command_parses(name: str, tmp_path: Path) -> None:
    """
    Each ethtwisted service's command and environment parse with its plugin's options, and
    every ETH_* variable it sets is one the plugin reads (a misspelt one would be ignored).
    """
    service = our_services()[name]
    plugin, *args = service["command"]
    environ = container_environment(service, dockerfile_stages(), tmp_path)
    options = parse(plugin, args, environ)
    unknown = {k for k in environ if k.startswith("ETH_")} - known_variables(options)
    assert not unknown, f"{name} sets variables {plugin} does not read"


def test_server_stores_are_the_compose_services(tmp_path: Path) -> None:
    """
    The server stores in the MariaDB database and as the user the mysql service creates,
    counts in the redis service, and publishes the stats API and the collector it listens on.
    """
    compose = load_compose()
    services = compose["services"]
    server = services["server"]
    environ = container_environment(server, dockerfile_stages(), tmp_path)
    options = parse("eth-server", server["command"][1:], environ)
    db = options["db_url"]
    mysql_env = services["mysql"]["environment"]
    assert (db.dialect, db.host, db.port) == ("mysql", "mysql", 3306)
    assert (db.database, db.user) == (mysql_env["MARIADB_DATABASE"], mysql_env["MARIADB_USER"])
    assert db.password == "not-the-real-password"
    assert mysql_env["MARIADB_PASSWORD_FILE"] == SECRETS_DIR + "mysql_password"
    assert options["redis_url"].host == "redis"
    published = {port.rsplit(":", 2)[-1] for port in server["ports"]}
    assert re.match(r"tcp:8080:interface=0\.0\.0\.0$", options["stats"])
    assert [d.split(":")[:2] for d in options["listen"]] == [["tcp", "9999"]]
    assert published == {"8080", "9999"}


def test_client_reaches_server_and_node(tmp_path: Path) -> None:
    """
    The client sends to the port the server listens on, and follows the IPC socket geth
    creates, through the volume both mount.
    """
    services = load_compose()["services"]
    stages = dockerfile_stages()
    client = services["client"]
    options = parse(
        "eth-client", client["command"][1:], container_environment(client, stages, tmp_path)
    )
    server_service = services["server"]
    server_environ = container_environment(server_service, stages, tmp_path)
    server = parse("eth-server", server_service["command"][1:], server_environ)
    server_port = server["listen"][0].split(":")[1]
    assert options["server"] == [f"tcp:host=server:port={server_port}"]

    geth = services["geth"]
    ipc_path = next(a.split("=", 1)[1] for a in geth["command"] if a.startswith("--ipcpath="))
    (node,) = options["node"]
    assert node == ipc_path
    geth_mounts = {v.split(":")[0]: v.split(":")[1] for v in geth["volumes"]}
    (ipc_mount,) = [v for v in client["volumes"] if isinstance(v, dict) and v["source"] == "ipc"]
    assert ipc_path.startswith(geth_mounts["ipc"] + "/")
    assert ipc_mount["target"] == geth_mounts["ipc"]
    assert ipc_mount["read_only"] is True


def test_services_wait_for_healthy_dependencies() -> None:
    """
    Every dependency is waited for until healthy (no blind wait), and every service waited
    for has a health check of its own or from its image.
    """
    services = load_compose()["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            has_check = "healthcheck" in services[dependency] or "build" in services[dependency]
            assert has_check, dependency


def test_secrets_are_not_in_the_files() -> None:
    """
    The MySQL password reaches the containers as a secret read from a file at run time (a
    file secret: Docker Compose and podman-compose 1.0.3 both have those): no variable of a
    service or of an image holds a password or a token, only the path of a file that does.
    """
    compose = load_compose()
    assert compose["secrets"]["mysql_password"] == {
        "file": "${ETHTWISTED_MYSQL_PASSWORD_FILE:-./mysql_password.txt}"
    }
    variables = [
        (name, key)
        for name, service in compose["services"].items()
        for key in service.get("environment", {})
    ]
    variables += [
        (name, key) for name, stage in dockerfile_stages().items() for key in stage["env"]
    ]
    for name, key in variables:
        if re.search("PASSWORD|TOKEN", key) and key != "MARIADB_RANDOM_ROOT_PASSWORD":
            assert key.endswith("_FILE"), (name, key)


def test_dockerfile_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The default target (the last stage) is the app image running eth-server; the geth target
    runs the demo on geth with no command, configured by its environment alone, with the
    stats API reachable from outside the container.
    """
    stages = dockerfile_stages()
    assert list(stages)[-1] == "app"
    assert stages["app"]["cmd"] == ["eth-server"]
    parse("eth-server", [], {k: v for k, v in stages["app"]["env"].items() if k[:4] == "ETH_"})

    plugin, *args = stages["geth"]["cmd"]
    assert plugin == "eth-demo"
    fake_geth = tmp_path / "geth"
    fake_geth.write_text("#!/bin/sh\n")
    fake_geth.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    environ = {k: v for k, v in stages["geth"]["env"].items() if k[:4] == "ETH_"}
    demo = parse(plugin, args, environ)
    assert demo["dev-node"] == "geth"
    assert demo["node_argv"][0] == str(fake_geth)
    assert str(demo["server"]["db_url"]) == "sqlite:////data/ethtwisted.sqlite"
    assert demo["server"]["stats"] == "tcp:8080:interface=0.0.0.0"


def test_dockerfile_lint() -> None:
    """
    hadolint finds nothing to say about the Dockerfile.
    """
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_specification() -> None:
    """
    docker-compose.yml validates against the Compose specification's schema.
    """
    command = [sys.executable, "-m", "check_jsonschema"]
    command += ["--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
