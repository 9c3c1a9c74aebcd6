"""
The stats API in tests: L{Client} (GETs in memory through StubTreq), eth-server with
C{--stats} and eth-stats started in this process (L{Running}), SQLite stores, and reading
metrics and log lines back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from typing import Protocol as TypingProtocol

import treq
from treq.testing import StubTreq
from twisted.application.service import IService, MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse
from twisted.web.resource import IResource

from ethtwisted import stats_tap
from ethtwisted.stats_tap import Options as StatsOptions
from ethtwisted.storage.sql_pool import parse_db_url
from ethtwisted.storage.sql_store import SQLStore
from ethtwisted.web.site import WebService
from tests.helpers import LISTEN, TIMEOUT, start_server, the_reactor, wait_for

TOKEN = "s3cret-stats-token"


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


class Treq(TypingProtocol):
    """What C{StubTreq} offers, which it sets up at run time where mypy cannot see it."""

    def request(
        self, method: str, url: str, *, headers: Mapping[bytes, Any] | Mapping[str, Any]
    ) -> Deferred[IResponse]: ...

    def content(self, response: IResponse) -> Deferred[bytes]: ...

    def flush(self) -> None: ...


def stub_treq(root: IResource) -> Treq:
    """treq in memory over C{root}."""
    return cast(Treq, StubTreq(root))


class Client:
    """
    GETs against a resource in memory: StubTreq, pumped until the answer (which comes from a
    store thread) is complete.
    """

    def __init__(self, root: Any) -> None:
        self.stub = stub_treq(root)

    async def _settle(self, d: Deferred[Any]) -> Any:
        done: list[Any] = []
        d.addBoth(done.append)

        def finished() -> bool:
            self.stub.flush()
            return bool(done)

        await wait_for(finished, interval=0.005)
        if isinstance(done[0], Failure):
            done[0].raiseException()
        return done[0]

    async def request(
        self, method: str, path: str, headers: Mapping[Any, Any] | None = None
    ) -> Reply:
        response = await self._settle(
            self.stub.request(method, "http://stats.test" + path, headers=dict(headers or {}))
        )
        body = await self._settle(self.stub.content(response))
        flat = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
        return Reply(response.code, flat, body)

    async def get(self, path: str, token: str | None = None) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.request("GET", path, headers)


async def open_sqlite(path: Path, read_only: bool = False) -> SQLStore:
    store = SQLStore(
        parse_db_url(f"sqlite:///{path}"), IReactorCore(the_reactor()), read_only=read_only
    )
    await store.start()
    return store


def above_debug(events: Sequence[LogEvent]) -> list[str]:
    """
    The events of C{events} logged at info level or above (anything but an access log line).
    """
    return [formatEvent(e) for e in events if e.get("log_level") != LogLevel.debug]


def metric(text: str, name: str, labels: str = "") -> float:
    """
    The value of one sample in a Prometheus text exposition.
    """
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name}{labels} in metrics"
    return float(match.group(1))


@dataclass
class Running:
    service: IService
    stats: WebService
    collector_port: int | None

    @property
    def url(self) -> str:
        address = self.stats.ports[0].getHost()
        assert isinstance(address, IPv4Address)
        return f"http://127.0.0.1:{address.port}"

    async def get(self, path: str, token: str | None = None) -> Reply:
        headers: dict[bytes | str, bytes | str] = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = await treq.get(self.url + path, headers=headers, timeout=TIMEOUT)
        body = await treq.content(response)
        flat = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
        return Reply(response.code, flat, body)

    async def stop(self) -> None:
        await self.service.stopService()


async def stats_server(args: Sequence[str], environ: Mapping[str, str] = {}) -> Running:
    """eth-server with --stats on a free loopback port, in this process."""
    server = await start_server(["--stats", LISTEN, *args], environ)
    assert server.stats is not None
    return Running(server.service, server.stats, server.port)


async def start_stats(args: Sequence[str], environ: Mapping[str, str] = {}) -> Running:
    options = StatsOptions()
    options.environ = dict(environ)
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *args])
    service = stats_tap.makeService(options, the_reactor())
    assert isinstance(service, MultiService)
    service.startService()
    stats = service.getServiceNamed("stats")
    assert isinstance(stats, WebService)
    await stats.ready.addTimeout(TIMEOUT, the_reactor())
    return Running(service, stats, None)
