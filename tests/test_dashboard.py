"""
The dashboard for real: an anvil node, three eth-clients feeding an eth-server with --stats,
and the page open in headless Chromium, driven over the DevTools protocol on a pipe.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from itertools import count, pairwise
from pathlib import Path
from typing import Any, Literal

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from ethtwisted import client_tap
from ethtwisted.client import EthClient
from ethtwisted.frames import Status, SyncProgress
from ethtwisted.records import StatusReport
from ethtwisted.states import Thresholds
from ethtwisted.storage.sql_pool import parse_db_url
from ethtwisted.storage.sql_store import SQLStore
from tests.helpers import TIMEOUT, wait_for
from tests.known_fleet import (
    CLIENTS,
    EDGE,
    EDGES,
    FORK,
    FORKED,
    GAP,
    LAGGING,
    MAIN,
    SLOW,
    SLOW_BLOCK,
    known_fleet,
)
from tests.services import Anvil
from tests.web import TOKEN, start_stats, stats_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--window-size=1400,1000",
]


class DevToolsError(Exception):
    """The browser answered a DevTools command with an error."""


class Browser(ProcessProtocol):
    """
    Headless Chromium with the DevTools protocol on a pipe: commands (NUL-terminated JSON) go
    to the browser's fd 3, answers and events come back on its fd 4.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.ids = count(1)
        self.pending: dict[int, Deferred[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self.ended: Deferred[None] = Deferred()
        self.session: str | None = None

    @classmethod
    def launch(cls, profile: Path) -> Browser:
        browser = cls()
        if not Path(CHROMIUM).exists():
            pytest.fail("chromium is not installed: run `make test`", pytrace=False)
        reactor.spawnProcess(
            browser,
            CHROMIUM,
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(profile)},
            childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"},
        )
        return browser

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != 4:
            self.stderr = (self.stderr + data)[-20000:]
            return
        self.buffer += data
        while b"\0" in self.buffer:
            message, self.buffer = self.buffer.split(b"\0", 1)
            self._message(json.loads(message))

    def _message(self, message: dict[str, Any]) -> None:
        d = self.pending.pop(message.get("id", -1), None)
        if d is None:
            self.events.append(message)
        elif "error" in message:
            d.errback(DevToolsError(message["error"].get("message", "error")))
        else:
            d.callback(message.get("result", {}))

    def processEnded(self, reason: Failure) -> None:
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(DevToolsError("the browser exited"))
        self.ended.callback(None)

    def send(self, method: str, **params: Any) -> Deferred[Any]:
        """
        One DevTools command, to the attached page unless it is a browser-wide one.
        """
        number = next(self.ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        d: Deferred[Any] = Deferred()
        self.pending[number] = d
        assert self.transport is not None
        self.transport.writeToChild(3, json.dumps(message).encode() + b"\0")
        return d.addTimeout(TIMEOUT, reactor)

    async def open(self, url: str) -> None:
        """
        Open C{url} in a new page and attach to it.
        """
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        self.session = attached["sessionId"]
        await self.send("Runtime.enable")
        await self.send("Log.enable")
        await self.send("Network.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=1400,
            height=1000,
            deviceScaleFactor=1,
            mobile=False,
        )
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """
        The value of a JavaScript expression in the page.
        """
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise DevToolsError(result["exceptionDetails"].get("text", "exception"))
        return result["result"].get("value")

    async def screenshot(self, path: Path, selector: str | None = None) -> None:
        """
        A picture of the whole page, or of the element C{selector} finds alone.
        """
        clip: dict[str, Any] = {}
        if selector is not None:
            box = await self.evaluate(
                f"(function () {{ var r = document.querySelector({json.dumps(selector)})"
                ".getBoundingClientRect(); return {x: r.left + scrollX, y: r.top + scrollY,"
                " width: r.width, height: r.height, scale: 1}; })()"
            )
            clip = {"clip": box}
        result = await self.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, **clip
        )
        path.write_bytes(base64.b64decode(result["data"]))

    def requested(self) -> list[str]:
        """
        The address of every request the page made (with the Network domain enabled).
        """
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def errors(self) -> list[str]:
        """
        Console errors and uncaught exceptions the page reported (CSP violations among them).
        """
        found = []
        for event in self.events:
            if event.get("method") == "Log.entryAdded":
                entry = event["params"]["entry"]
                if entry.get("level") == "error":
                    found.append(entry.get("text", ""))
            elif event.get("method") == "Runtime.exceptionThrown":
                found.append(json.dumps(event["params"]["exceptionDetails"])[:500])
        return found

    async def close(self) -> None:
        if self.ended.called:
            return
        try:
            await self.send("Browser.close")
        except Exception:
            assert self.transport is not None
            self.transport.signalProcess("KILL")
        with contextlib.suppress(ProcessDone):
            await self.ended.addTimeout(TIMEOUT, reactor)


def start_client(node: str, port: int, name: str, *args: str) -> EthClient:
    options = client_tap.Options()
    options.environ = {}
    options.parseOptions(
        ["--node", node, "--server", f"tcp:host=127.0.0.1:port={port}", "--interval", "0.1",
         "--name", name, *args]
    )  # fmt: skip
    service = client_tap.makeService(options, reactor)
    assert isinstance(service, EthClient)
    service.startService()
    return service


ROWS = """
Array.from(document.querySelectorAll('#clients tbody tr[data-client]')).map(function (tr) {
  return {client: tr.dataset.client, state: tr.className,
          head: tr.querySelector('.head').textContent, lag: tr.querySelector('.lag').textContent};
})
"""
NODES = """
Array.from(document.querySelectorAll('#clients tbody tr[data-client]')).map(function (tr) {
  function cell(cls) { return tr.querySelector('.' + cls).textContent; }
  return {client: tr.dataset.client, version: cell('version'), peers: cell('peers'),
          sync: cell('sync'), p50: cell('p50'), p95: cell('p95')};
})
"""
SIGHTINGS = """
Array.from(document.querySelectorAll('#blocks tr.sightings tbody tr')).map(function (tr) {
  return {client: tr.dataset.client, delay: tr.querySelector('.delay').textContent};
})
"""
STATES = """
Array.from(document.querySelectorAll('#clients tbody tr[data-client]')).map(function (tr) {
  var chips = Array.from(tr.querySelectorAll('.states .chip'));
  return {client: tr.dataset.client,
          states: chips.map(function (c) { return c.dataset.state; }),
          since: chips.map(function (c) { return c.dataset.since || null; }),
          text: tr.querySelector('.states').textContent};
})
"""
EVENTS = """
Array.from(document.querySelectorAll('#events tbody tr[data-event-id]')).map(function (tr) {
  return {id: Number(tr.dataset.eventId), client: tr.querySelector('.client').textContent,
          state: tr.querySelector('.change .chip').dataset.state,
          change: tr.querySelector('.change').textContent,
          text: tr.querySelector('.text').textContent};
})
"""
NONE = "\u2013"
"""What the page shows for a value the API does not give."""
HEAD = """
(function () {
  var n = document.querySelector('#heads .head[data-chain="31337"] .number');
  return n ? n.textContent : null;
})()
"""


def by_client(rows: Sequence[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {row["client"]: row for row in rows}


@pytest_twisted.ensureDeferred
async def test_dashboard_shows_clients_and_a_head_that_advances(
    anvil: Anvil, tmp_path: Path
) -> None:
    """
    With three clients following anvil (over IPC, WebSocket and HTTP) into eth-server, the
    dashboard lists each client with its head and its node's version, peers, sync state and
    propagation p50/p95, shows the chain's best head, and, while it stays open, follows new
    blocks and marks in red the client that stopped and fell behind; a block's row, clicked,
    opens who saw it when.  The client that stopped goes silent, as the server decides: the
    page shows each client's states as the API has them (the others current) and the changes
    of state, newest first, as /api/v1/events lists them.  A screenshot is saved in the test's
    temporary folder.
    """
    await deferToThread(anvil.mine, 5)
    server = await stats_server(
        ["--db", f"sqlite:///{tmp_path / 'eth.sqlite'}", "--stats-token", TOKEN]
    )
    assert server.collector_port is not None
    clients = {
        "node-ipc": start_client(anvil.ipc_path, server.collector_port, "node-ipc"),
        "node-ws": start_client(anvil.ws_url, server.collector_port, "node-ws"),
        "node-http": start_client(anvil.http_url, server.collector_port, "node-http"),
    }
    profile = tmp_path / "chromium"
    profile.mkdir()
    browser = Browser.launch(profile)
    try:

        async def api_head() -> int | None:
            heads = (await server.get("/api/v1/head", TOKEN)).json()["heads"]
            return heads[0]["number"] if heads else None

        async def clients_at(number: int) -> bool:
            rows = (await server.get("/api/v1/clients", TOKEN)).json()["clients"]
            return {c["client"] for c in rows if c["last_block"] == number} == set(clients)

        await wait_for(lambda: clients_at(5), interval=0.1)

        await browser.open(f"{server.url}/?token={TOKEN}")
        await wait_for(lambda: page_shows(browser, "#5", 3), interval=0.1)
        rows = by_client(await browser.evaluate(ROWS))
        assert set(rows) == set(clients)
        assert all(row["head"] == "5" and row["state"] == "ok" for row in rows.values())
        assert await browser.evaluate("location.search") == ""
        assert await browser.evaluate("sessionStorage.getItem('ethtwisted-token')") == TOKEN

        async def nodes_shown() -> bool:
            rows = await browser.evaluate(NODES)
            return len(rows) == 3 and all(r["version"] != NONE for r in rows)

        await wait_for(nodes_shown, interval=0.1)
        listed = {
            c["client"]: c for c in (await server.get("/api/v1/clients", TOKEN)).json()["clients"]
        }
        for name, row in by_client(await browser.evaluate(NODES)).items():
            node = listed[name]["node"]
            assert row["version"] == node["client_version"]
            assert row["version"].startswith("anvil")
            assert row["peers"] == (NONE if node["peers"] is None else str(node["peers"]))
            assert row["sync"] == "synced"
            assert row["p50"].endswith((" ms", " s")) and row["p95"].endswith((" ms", " s"))

        # One client stops once the server watches all three (from its first decision on);
        # the chain moves on, and the page follows without a reload.
        async def all_watched() -> bool:
            rows = (await server.get("/api/v1/clients", TOKEN)).json()["clients"]
            return {c["client"] for c in rows if c["states"] is not None} == set(clients)

        await wait_for(all_watched, interval=0.1)
        await clients.pop("node-http").stopService()
        await deferToThread(anvil.mine, 3)
        await wait_for(lambda: clients_at(8), interval=0.1)
        assert await api_head() == 8
        await wait_for(lambda: page_shows(browser, "#8", 3), interval=0.1)
        rows = by_client(await browser.evaluate(ROWS))
        assert rows["node-ipc"]["head"] == "8" and rows["node-ipc"]["state"] == "ok"
        assert rows["node-ws"]["state"] == "ok"
        assert (rows["node-http"]["head"], rows["node-http"]["lag"]) == ("5", "3")
        assert rows["node-http"]["state"] == "bad"
        assert await browser.evaluate("document.getElementById('status').textContent") == "live"
        bars = await browser.evaluate("document.querySelectorAll('#chart rect.bar').length")
        assert bars >= 1
        recent = await browser.evaluate("document.querySelectorAll('#blocks tbody tr').length")
        stored = (await server.get("/api/v1/blocks?limit=15", TOKEN)).json()["blocks"]
        assert recent == len(stored) >= 4

        # A block's row opens who saw it when: the three clients, earliest first.
        sha = stored[-1]["sha256"]
        sightings = (await server.get(f"/api/v1/blocks/{sha}", TOKEN)).json()["sightings"]
        await browser.evaluate(
            f"document.querySelector('#blocks tr[data-sha256=\"{sha}\"]').click()"
        )

        async def sightings_shown() -> bool:
            return len(await browser.evaluate(SIGHTINGS)) == len(sightings)

        await wait_for(sightings_shown, interval=0.1)
        shown = await browser.evaluate(SIGHTINGS)
        assert [r["client"] for r in shown] == [s["client"] for s in sightings]
        assert {r["client"] for r in shown} == {"node-ipc", "node-ws", "node-http"}
        assert shown[0]["delay"] == "0 ms"

        # Meanwhile, through the store, another server holds "node-far", whose node says it
        # is syncing, then that it is not; the page's server, which decides, sees each.
        writer = SQLStore(parse_db_url(f"sqlite:///{tmp_path / 'eth.sqlite'}"), reactor)
        await writer.start()
        try:
            steps: list[tuple[SyncProgress | Literal[False], str]] = [
                (SyncProgress(1, 9), "entered"),
                (False, "left"),
            ]
            for syncing, change in steps:
                now = reactor.seconds()
                await writer.store([StatusReport("node-far", now, Status(syncing=syncing))])
                await writer.fleet.decide("elsewhere", now, {"node-far": now}, {}, Thresholds())

                async def far_told(change: str = change) -> bool:
                    query = "/api/v1/events?client=node-far&limit=1"
                    events = (await server.get(query, TOKEN)).json()["events"]
                    return [(e["state"], e["event"]) for e in events] == [("syncing", change)]

                await wait_for(far_told, interval=0.2)
        finally:
            await writer.close()

        # The stopped client goes silent once the server has missed it for a few seconds.
        async def all_told() -> bool:
            events = (await server.get("/api/v1/events", TOKEN)).json()["events"]
            told = [(e["client"], e["state"], e["event"]) for e in events]
            far = [t for t in told if t[0] == "node-far"]
            return ("node-http", "silent", "entered") in told and far == [
                ("node-far", "syncing", "left"),
                ("node-far", "syncing", "entered"),
            ]

        await wait_for(all_told, interval=0.2)

        async def states_agree() -> bool:
            listed = (await server.get("/api/v1/clients", TOKEN)).json()["clients"]
            expected = {
                c["client"]: sorted(c["states"]) or ["current"]
                for c in listed
                if c["states"] is not None
            }
            shown = {r["client"]: sorted(r["states"]) for r in await browser.evaluate(STATES)}
            return bool(shown == expected and expected["node-http"] == ["silent"])

        await wait_for(states_agree, interval=0.2)
        listed = {
            c["client"]: c for c in (await server.get("/api/v1/clients", TOKEN)).json()["clients"]
        }
        states: dict[str, dict[str, Any]] = {
            row["client"]: row for row in await browser.evaluate(STATES)
        }
        assert {name: row["states"] for name, row in states.items()} == {
            "node-ipc": ["current"],
            "node-ws": ["current"],
            "node-http": ["silent"],
        }
        [since] = states["node-http"]["since"]
        assert float(since) == listed["node-http"]["states"]["silent"]["since"]
        assert states["node-http"]["text"].startswith("silent ")
        assert by_client(await browser.evaluate(ROWS))["node-http"]["state"] == "bad"

        async def events_agree() -> bool:
            events = (await server.get("/api/v1/events?limit=20", TOKEN)).json()["events"]
            shown = await browser.evaluate(EVENTS)
            return bool(events) and [r["id"] for r in shown] == [e["id"] for e in events]

        await wait_for(events_agree, interval=0.2)
        events = (await server.get("/api/v1/events?limit=20", TOKEN)).json()["events"]
        shown_events = await browser.evaluate(EVENTS)
        assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)
        for row, event in zip(shown_events, events, strict=True):
            assert (row["client"], row["state"], row["text"]) == (
                event["client"], event["state"], event["text"])  # fmt: skip
            assert row["change"] == f"{event['state']} {event['event']}"
        assert ("node-http", "silent") in [(r["client"], r["state"]) for r in shown_events]
        assert len(shown_events) == 3

        screenshot = tmp_path / "dashboard.png"
        await browser.screenshot(screenshot)
        assert screenshot.stat().st_size > 10_000
        assert browser.errors() == []
    finally:
        await browser.close()
        for client in clients.values():
            await client.stopService()
        await server.stop()


async def page_shows(browser: Browser, head: str, rows: int) -> bool:
    """
    Whether the page shows C{head} as the best head and C{rows} client rows.
    """
    shown = await browser.evaluate(HEAD)
    listed = await browser.evaluate("document.querySelectorAll('#clients tr[data-client]').length")
    return bool(shown == head and listed == rows)


HISTOGRAM = """
Array.from(document.querySelectorAll('#propagation rect.bar')).map(function (r) {
  return {bin: Number(r.dataset.bin), count: Number(r.dataset.count), label: r.dataset.label,
          title: r.querySelector('title').textContent};
})
"""
BIN_LABELS = """
Array.from(document.querySelectorAll('#propagation text.label')).map(function (t) {
  return t.textContent;
})
"""
BLOCK_TIMES = """
Array.from(document.querySelectorAll('#block-times .chain-picture')).map(function (box) {
  return {chain: Number(box.dataset.chain),
          bars: Array.from(box.querySelectorAll('rect.bar')).map(function (r) {
            return [Number(r.dataset.number), Number(r.dataset.seconds)]; }),
          reorgs: Array.from(box.querySelectorAll('g.reorg')).map(function (g) {
            return [Number(g.dataset.number), Number(g.dataset.depth)]; })};
})
"""
CHAIN_VIEW = """
Array.from(document.querySelectorAll('#chain-view .chain-picture')).map(function (box) {
  return {chain: Number(box.dataset.chain),
          blocks: Array.from(box.querySelectorAll('g.block')).map(function (g) {
            return [Number(g.dataset.number), g.dataset.sha256, g.classList.contains('canonical'),
                    g.dataset.client]; }),
          gaps: Array.from(box.querySelectorAll('rect.gap')).map(function (r) {
            return Number(r.dataset.number); })};
})
"""
FLEET = """
({rows: Array.from(document.querySelectorAll('#clients tbody tr[data-client]')).map(function (tr) {
    var spark = tr.querySelector('.spark');
    return {client: tr.dataset.client, state: tr.dataset.state,
            points: spark ? Number(spark.dataset.points) : null}; }),
  groups: Array.from(document.querySelectorAll('#clients tbody tr.group')).map(function (tr) {
    return tr.textContent; }),
  counts: Object.fromEntries(Array.from(document.querySelectorAll('#state-counts button')).map(
    function (b) { return [b.dataset.state, Number(b.querySelector('.n').textContent)]; })),
  shown: document.getElementById('fleet-shown').textContent})
"""
EDGES_MS = [0, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
"""The propagation picture's bins, as the page draws them."""
BIN_NAMES = [
    "< 100 ms", "100\u2013200 ms", "200\u2013500 ms", "500 ms\u20131.0 s", "1.0\u20132.0 s",
    "2.0\u20135.0 s", "5.0\u201310 s", "10\u201330 s", "\u2265 30 s",
]  # fmt: skip


def filter_by(name: str) -> str:
    """
    JavaScript: type C{name} into the fleet view's filter, and give how long the page took
    to show the rows that match (ms).
    """
    return f"""
(function () {{
  var input = document.getElementById('filter-name');
  var start = performance.now();
  input.value = {json.dumps(name)};
  input.dispatchEvent(new Event('input'));
  return performance.now() - start;
}})()
"""


def click_state(state: str) -> str:
    return f"document.querySelector('#state-counts button[data-state=\"{state}\"]').click()"


@pytest_twisted.ensureDeferred
async def test_pictures_of_a_known_fleet(tmp_path: Path) -> None:
    """
    Over a store with known data (1,001 clients on two chains, read in two pages, a fork, a
    gap, a slow block, a slow client, clients behind, stalled, silent, syncing and on the
    fork), opened with the stats token, the page draws what the API says: the propagation
    histogram's bars (counts per delay bin of the sightings of each chain's last 20 canonical
    blocks, each bar naming the blocks), a client's sparkline over its sightings of them, the
    block times (one bar per canonical block whose parent is stored, its seconds, a mark at
    each reorg), the chain as the fleet saw it (canonical and orphaned blocks with who reported
    each first, gaps drawn as gaps, a click opening who saw that block when), the rate over
    what was observed, and the fleet view (counts per state, grouped by chain, filtered by
    state and name, sorted by lag or delay, 100 rows a page). The page is under 200 KB, asks
    nothing of any other server and logs no error. Screenshots of the page and of each picture
    are saved in the test's temporary folder, with the load and filter times measured.
    """
    fleet = await known_fleet(tmp_path / "known.sqlite")
    server = await start_stats(["--db", f"sqlite:///{fleet.path}", "--stats-token", TOKEN])
    profile = tmp_path / "chromium"
    profile.mkdir()
    browser = Browser.launch(profile)
    try:
        page = await server.get("/", TOKEN)
        assert page.status == 200 and len(page.body) < 200_000
        api = {}
        for head in (await server.get("/api/v1/head", TOKEN)).json()["heads"]:
            low, high = max(0, head["number"] - 100), head["number"]
            path = f"/api/v1/chains/{head['chain_id']}/blocks?from={low}&to={high}"
            api[head["chain_id"]] = (await server.get(path, TOKEN)).json()
        assert set(api) == {MAIN, EDGE}
        clients: list[dict[str, Any]] = []
        after = ""
        for _ in range(len(CLIENTS)):
            body = (await server.get(f"/api/v1/clients?limit=1000{after}", TOKEN)).json()
            clients += body["clients"]
            if body["next"] is None:
                break
            after = f"&after={body['next']}"
        assert sorted(c["client"] for c in clients) == sorted(CLIENTS) and len(CLIENTS) == 1001

        await browser.open(f"{server.url}/?token={TOKEN}")

        # The propagation picture: every sighting of each chain's last 20 canonical blocks.
        delays: dict[str, list[float | None]] = {}
        bins = [0] * len(EDGES_MS)
        named: list[set[int]] = [set() for _ in EDGES_MS]
        for chain in api.values():
            last = sorted((b for b in chain["blocks"] if b["canonical"]),
                          key=lambda b: b["number"])[-20:]  # fmt: skip
            for i, b in enumerate(last):
                seen = (await server.get(f"/api/v1/blocks/{b['sha256']}", TOKEN)).json()
                for s in seen["sightings"]:
                    k = max(j for j, edge in enumerate(EDGES_MS) if s["delay_ms"] >= edge)
                    bins[k] += 1
                    named[k].add(b["number"])
                    delays.setdefault(s["client"], [None] * len(last))[i] = s["delay_ms"]

        async def histogram_drawn() -> bool:
            bars = await browser.evaluate(HISTOGRAM)
            return sum(b["count"] for b in bars) == sum(bins)

        await wait_for(histogram_drawn, interval=0.1)
        assert await browser.evaluate(BIN_LABELS) == BIN_NAMES
        bars = await browser.evaluate(HISTOGRAM)
        assert [(b["bin"], b["count"]) for b in bars] == [(k, n) for k, n in enumerate(bins) if n]
        for bar in bars:
            assert bar["label"] == BIN_NAMES[bar["bin"]]
            assert bar["title"].startswith(f"{bar['count']} sightings {bar['label']} behind")
            numbers = {int(n) for n in re.findall(r"#(\d+) \(chain", bar["title"])}
            assert numbers == named[bar["bin"]]
        assert bins[-1] == 10 * 13  # the lagging clients, 43 s late at blocks 38-40 and 44-53
        assert sum(bins[4:8]) == 20  # the slow client at the 20 blocks of its chain

        # Block times: each canonical block after a stored parent, its seconds; the reorg.
        for drawn in await browser.evaluate(BLOCK_TIMES):
            chain = api[drawn["chain"]]
            canonical = sorted(
                (b for b in chain["blocks"] if b["canonical"]), key=lambda b: b["number"]
            )
            times = [
                [b["number"], b["timestamp"] - a["timestamp"]]
                for a, b in pairwise(canonical)
                if b["number"] == a["number"] + 1
            ]
            assert drawn["bars"] == times
            assert drawn["reorgs"] == [[r["number"], r["depth"]] for r in chain["reorgs"]]
        main_times = dict(next(d for d in await browser.evaluate(BLOCK_TIMES)
                               if d["chain"] == MAIN)["bars"])  # fmt: skip
        assert main_times[SLOW_BLOCK] == 30 and main_times[SLOW_BLOCK + 1] == 12
        assert set(range(GAP[0], GAP[1] + 2)).isdisjoint(main_times)
        assert api[MAIN]["reorgs"][0]["number"] == FORK

        # The chain as the fleet saw it: the last 20 heights, gaps as gaps.
        for drawn in await browser.evaluate(CHAIN_VIEW):
            chain = api[drawn["chain"]]
            low = max(chain["from"], chain["to"] - 19)
            expected = [b for b in chain["blocks"] if low <= b["number"] <= chain["to"]]
            key = lambda b: (b[0], b[1])  # noqa: E731
            assert sorted(map(tuple, drawn["blocks"]), key=key) == sorted(
                ((b["number"], b["sha256"], b["canonical"], b["client"]) for b in expected),
                key=key,
            )
            assert drawn["gaps"] == [
                n for a, b in chain["gaps"] for n in range(max(a, low), b + 1)
            ]
        drawn_main = next(d for d in await browser.evaluate(CHAIN_VIEW) if d["chain"] == MAIN)
        assert drawn_main["gaps"] == list(range(GAP[0], GAP[1] + 1))
        orphans = [b for b in drawn_main["blocks"] if not b[2]]
        assert [(b[0], b[3]) for b in orphans] == [(FORK, "fork-0"), (FORK + 1, "fork-0")]
        orphan = orphans[0][1]
        await browser.evaluate(
            f"document.querySelector('#chain-view g.block[data-sha256=\"{orphan}\"]')"
            ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
        )
        seen = (await server.get(f"/api/v1/blocks/{orphan}", TOKEN)).json()["sightings"]
        picked = "Array.from(document.querySelectorAll('#picked tbody tr')).map(function (tr)" \
                 " { return tr.dataset.client; })"  # fmt: skip

        async def picked_shown() -> bool:
            return bool(await browser.evaluate(picked) == [s["client"] for s in seen])

        await wait_for(picked_shown, interval=0.1)
        assert sorted(s["client"] for s in seen) == FORKED

        # The rate is over what was observed.
        async def rate_agrees() -> bool:
            rate = (await server.get("/api/v1/arrivals", TOKEN)).json()["rate"]
            shown = await browser.evaluate("document.getElementById('bpm').textContent")
            return bool(shown == f"{rate['per_minute']:.1f}")

        await wait_for(rate_agrees, interval=0.2)

        # The fleet: the counts per state, 100 rows a page, grouped by chain.
        states = Counter(c["state"] for c in clients)
        assert set(states) == {"current", "behind", "stalled", "silent", "syncing", "fork"}
        shown = await browser.evaluate(FLEET)
        assert shown["counts"] == {"all": 1001, **{s: states[s] for s in states}}
        assert len(shown["rows"]) == 100 and shown["shown"] == "1\u2013100 of 1001"
        assert shown["groups"] == [f"chain {MAIN} · {len(CLIENTS) - len(EDGES)} clients"]
        lags = {c["client"]: c["lag"] for c in clients}
        assert [lags[r["client"]] for r in shown["rows"]] == sorted(
            (lags[r["client"]] for r in shown["rows"]), reverse=True
        )
        await browser.evaluate("document.getElementById('next').click()")
        following = await browser.evaluate(FLEET)
        assert following["shown"] == "101\u2013200 of 1001"
        first_page = {r["client"] for r in shown["rows"]}
        assert first_page.isdisjoint(r["client"] for r in following["rows"])
        await browser.evaluate("document.getElementById('prev').click()")
        await browser.screenshot(tmp_path / "dashboard.png")
        for name, selector in [
            ("propagation", "#propagation"),
            ("block-times", "#block-times"),
            ("chain", "#chain-view"),
        ]:
            await browser.screenshot(tmp_path / f"{name}.png", f"section:has(> {selector})")

        # Filtered by state, then by name too: the rows the API's entries say.
        timings = {"load_ms": await browser.evaluate(
            "performance.getEntriesByName('fleet-drawn')[0].startTime")}  # fmt: skip
        await browser.evaluate(click_state("behind"))
        shown = await browser.evaluate(FLEET)
        behind = sorted(c["client"] for c in clients if c["state"] == "behind")
        assert sorted(r["client"] for r in shown["rows"]) == behind == LAGGING
        timings["filter_ms"] = await browser.evaluate(filter_by("node-094"))
        shown = await browser.evaluate(FLEET)
        assert sorted(r["client"] for r in shown["rows"]) == [c for c in behind if "node-094" in c]
        await browser.evaluate(click_state("behind"))
        await browser.evaluate(filter_by("node-095"))
        shown = await browser.evaluate(FLEET)
        assert [r["client"] for r in shown["rows"]] == [f"node-095{i}" for i in range(10)]
        await browser.screenshot(tmp_path / "fleet.png", "#fleet")
        timings["name_filter_ms"] = await browser.evaluate(filter_by("slow"))
        shown = await browser.evaluate(FLEET)
        assert [(r["client"], r["points"]) for r in shown["rows"]] == [
            (SLOW, sum(d is not None for d in delays[SLOW]))
        ]
        await browser.evaluate(filter_by("edge"))
        await browser.evaluate(
            "var s = document.getElementById('sort'); s.value = 'delay';"
            " s.dispatchEvent(new Event('change'))"
        )
        shown = await browser.evaluate(FLEET)
        p50 = {c["client"]: c["propagation"]["p50_ms"] for c in clients}
        assert [r["client"] for r in shown["rows"]] == sorted(
            EDGES, key=lambda c: (-(p50[c] or 0), c)
        )
        assert shown["groups"] == [f"chain {EDGE} · {len(EDGES)} clients"]

        (tmp_path / "timings.json").write_text(json.dumps(timings))
        print(f"dashboard at 1,001 clients: {json.dumps(timings)}")
        assert all(u.startswith((server.url, "data:")) for u in browser.requested())
        assert browser.errors() == []
    finally:
        await browser.close()
        await server.stop()
