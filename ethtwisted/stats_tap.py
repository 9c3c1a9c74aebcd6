"""
C{twistd eth-stats}: the stats API, metrics and dashboard on their own, read-only over the
stores of one or more eth-servers.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService

from ethtwisted.logs import Logger, set_verbose
from ethtwisted.options import (
    DEFAULT_WEB,
    STATS_TOKEN_OPTIONS,
    StoreOptions,
    read_token,
    web_endpoint,
)
from ethtwisted.storage.redis_store import RedisCounters
from ethtwisted.storage.sql_store import SQLStore
from ethtwisted.web.reads import Reads
from ethtwisted.web.site import serve_stats

DEFAULT_LISTEN = DEFAULT_WEB

log = Logger()


class Options(StoreOptions):
    command = "eth-stats"
    synopsis = "[options]"
    longdesc = (
        "Serve the stats API (/_cat, /api/v1), /metrics, /healthz and the dashboard over the "
        "stores eth-servers write, without writing to them or creating anything. Every option "
        "can also be given as an ETH_* environment variable (--listen is ETH_LISTEN); a flag "
        "beats the environment."
    )
    optParameters = [
        ["listen", None, DEFAULT_LISTEN,
         "Endpoint to serve on (a bare port means that port on the loopback interface)."],
        *STATS_TOKEN_OPTIONS,
    ]  # fmt: skip

    def postOptions(self) -> None:
        super().postOptions()
        self["listen"] = web_endpoint(self["listen"], "listen")
        self["stats_token"] = read_token(self, "stats-token")


def makeService(config: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    set_verbose(config["verbose"])
    store = SQLStore(config["db_url"], reactor, read_only=True)
    waits = [(str(config["db_url"]), store.start)]
    closes = [store.close]
    redis = None
    if config["redis_url"] is not None:
        redis = RedisCounters(config["redis_url"], reactor, config["redis-prefix"])
        waits.append((str(config["redis_url"]), redis.ping))
        closes.append(redis.close)
    reads = Reads(reactor, store, store, redis, fleet=store.fleet)
    service = MultiService()
    web = serve_stats(
        reactor, reads, config["listen"], config["stats_token"], waits, config["wait"], closes
    )
    web.setName("stats")
    web.setServiceParent(service)
    return service
