"""
Finding the Redis master through Redis Sentinel, with txredisapi's L{txredisapi.Sentinel}.

txredisapi takes the global reactor when imported (and its connections and its own discovery
use it): this module is imported only once a C{sentinel://} URL is used.  Every question to a
Sentinel here has a timeout on the injected clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime


class Sentinels(txredisapi.Sentinel):
    """
    The Sentinels of one deployment.  L{master_for} (txredisapi's) gives a connection handler
    that asks them for the master before every connection attempt, connects only to a server
    that says it is the master, and connects again (asking again) whenever the connection is
    lost, as it is in a failover: Sentinel closes the clients of a demoted master.

    txredisapi's own discovery waits ten seconds for a usable answer and queues its question
    for ever on a Sentinel that is down; here each question times out after C{timeout}
    seconds, and the master is known missing as soon as every Sentinel has answered (or timed
    out) without naming a usable one.
    """

    def __init__(
        self, addresses: Sequence[tuple[str, int]], clock: IReactorTime, timeout: float
    ) -> None:
        super().__init__(list(addresses), connectTimeout=timeout, replyTimeout=timeout)
        self.clock = clock
        self.timeout = timeout

    def discover_master(self, service_name: str) -> Deferred[tuple[str, int]]:
        found: Deferred[tuple[str, int]] = Deferred()
        waiting = len(self.sentinels)

        def answered(masters: dict[str, Any]) -> None:
            state = masters.get(service_name)
            if not found.called and state and self.check_master_state(state):
                found.callback((state["ip"], int(state["port"])))

        def one_less(_: object) -> None:
            nonlocal waiting
            waiting -= 1
            if waiting == 0 and not found.called:
                found.errback(
                    txredisapi.MasterNotFoundError(f"no Sentinel names a master {service_name}")
                )

        for sentinel in self.sentinels:
            d: Deferred[Any] = sentinel.sentinel_masters()
            d.addTimeout(self.timeout, self.clock)
            d.addCallback(answered)
            # A Sentinel that is down, slow or makes no sense is one answer less, no more.
            d.addErrback(lambda _: None)
            d.addCallback(one_less)
        return found
