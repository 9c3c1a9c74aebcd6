"""
What deploy/ ships for Prometheus and Grafana, checked with the real tools: the alerting rules
with promtool (their syntax, and their unit tests), the live /metrics of eth-server and
eth-client with promtool, and the Grafana dashboard against the @grafana/schema types with tsc.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest_twisted
import treq
import yaml
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from ethtwisted import client_tap
from ethtwisted.client import EthClient
from tests.helpers import start_server, wait_for
from tests.services import Anvil, find_binary, free_port

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "ethtwisted.json"
TSC = [str(REPO / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict",
       "--moduleResolution", "bundler", "--module", "esnext", "--skipLibCheck"]  # fmt: skip
TOOL_TIMEOUT = 120


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    binary = find_binary("promtool")
    return subprocess.run(
        [binary, *args], input=stdin.decode() if stdin is not None else None,
        capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False,
    )  # fmt: skip


def test_alert_rules_are_valid() -> None:
    """
    promtool accepts the rules, and they cover what the deployment promises: each client
    state, a store down, a server down and the ingest failing.
    """
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"EthtwistedClientBehind", "EthtwistedClientStalled", "EthtwistedClientSilent",
            "EthtwistedClientOnFork", "EthtwistedStoreDown", "EthtwistedServerDown",
            "EthtwistedIngestFailing"} <= names  # fmt: skip


def test_alert_rules_pass_their_unit_tests(tmp_path: Path) -> None:
    """
    promtool's unit tests of the rules pass; and they can fail: with one rule's threshold
    changed, they do.
    """
    tested = promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    (tmp_path / "alerts.yml").write_text(
        ALERTS.read_text().replace('{state="stalled"}) == 1', '{state="stalled"}) == 2')
    )
    (tmp_path / "alerts.test.yml").write_text(ALERT_TESTS.read_text())
    broken = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert broken.returncode != 0 and "EthtwistedClientStalled" in broken.stdout + broken.stderr


def check_metrics(text: str) -> None:
    checked = promtool("check", "metrics", stdin=text.encode())
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest_twisted.ensureDeferred
async def test_live_metrics_of_server_and_client_pass_promtool(
    anvil: Anvil, tmp_path: Path
) -> None:
    """
    The /metrics of a running eth-server (with a client, its blocks, its states and the chain
    view) and of a running eth-client pass promtool check metrics (names, types, help and
    units); the server's state gauges carry the labels the alerting rules select on.
    """
    anvil.mine(3)
    server = await start_server(
        ["--db", f"sqlite:///{tmp_path / 'eth.sqlite'}", "--stats", str(free_port())]
    )
    port = free_port()
    options = client_tap.Options()
    options.environ = {}
    options.parseOptions(
        ["--node", anvil.ipc_path, "--server", server.client_endpoint, "--interval", "0.05",
         "--metrics", str(port), "--name", "node-one"]
    )  # fmt: skip
    client = client_tap.makeService(options, reactor)
    assert isinstance(client, EthClient)
    client.startService()
    try:
        head = anvil.rpc("eth_getBlockByNumber", "latest", False)
        await server.committed.wait_for([head["hash"]])
        await wait_for(lambda: len(client.outbox) == 0, what="the client's blocks acknowledged")

        async def scraped() -> str:
            return str(await (await treq.get(f"{server.stats_url}/metrics")).text())

        async def states_shown() -> bool:
            return 'ethtwisted_client_state{client="node-one",state="behind"} 0.0' in (
                await scraped()
            )

        # The client is watched once the server has decided (after its first seconds).
        await wait_for(states_shown, what="node-one's state gauges")
        server_text = await scraped()
        assert "ethtwisted_store_latency_seconds_count" in server_text
        gauge = r'^ethtwisted_client_state\{client="node-one",state="(\w+)"\}'
        states = re.findall(gauge, server_text, re.MULTILINE)
        assert sorted(states) == ["behind", "fork", "silent", "stalled", "syncing"]
        await deferToThread(check_metrics, server_text)
        chains = json.loads(await (await treq.get(f"{server.stats_url}/api/v1/chains")).text())
        assert [(c["chain_id"], c["head"]) for c in chains["chains"]] == [(31337, 3)]
        # The chain is finalized as far as the client's node says (anvil: block 0).
        clients = json.loads(await (await treq.get(f"{server.stats_url}/api/v1/clients")).text())
        assert clients["clients"][0]["node"]["finalized"] == chains["chains"][0]["finalized"] == 0
        client_text = await (await treq.get(f"http://127.0.0.1:{port}/metrics")).text()
        assert "ethtwisted_head_block 3.0" in client_text
        await deferToThread(check_metrics, client_text)
    finally:
        await client.stopService()
        await server.stop()


def test_dashboard_matches_the_grafana_schema(tmp_path: Path) -> None:
    """
    The dashboard, as an object literal typed as @grafana/schema's Dashboard, passes tsc
    --strict (wrong types and unknown keys fail it, as a copy with one of each shows); its
    queries use only metrics this project exports or documents.
    """
    (tmp_path / "node_modules").symlink_to(REPO / "node_modules")
    dashboard = json.loads(DASHBOARD.read_text())

    def typecheck(board: object) -> subprocess.CompletedProcess[str]:
        source = tmp_path / "dashboard.ts"
        source.write_text(
            'import type { Dashboard } from "@grafana/schema";\n\n'
            f"export const dashboard: Dashboard = {json.dumps(board, indent=2)};\n"
        )
        return subprocess.run([*TSC, str(source)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=TOOL_TIMEOUT, check=False)  # fmt: skip

    checked = typecheck(dashboard)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = json.loads(DASHBOARD.read_text())
    broken["schemaVersion"] = "39"
    broken["panels"][1]["gridPos"]["width"] = 12
    failed = typecheck(broken)
    assert failed.returncode != 0
    assert "schemaVersion" in failed.stdout or "not assignable to type 'number'" in failed.stdout
    assert "'width' does not exist" in failed.stdout or '"width"' in failed.stdout

    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    documented = (REPO / "docs" / "stats.md").read_text()
    for expr in exprs:
        for name in set(_metric_names(expr)):
            assert name in documented, f"{name} is not in docs/stats.md"


def _metric_names(expr: str) -> list[str]:
    names = re.findall(r"\bethtwisted_[a-z_]+", expr)
    return [re.sub(r"_(bucket|count|sum|total)$", "", n) for n in names]
