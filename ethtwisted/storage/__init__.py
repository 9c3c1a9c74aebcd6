"""
Where received payloads go: SQL (durable, L{sql_store}) and Redis (counters, L{redis_store});
L{memory_store} answers as both do, in memory, for tests.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ethtwisted.logs import describe, log_observer

log = Logger(observer=log_observer)


class StartupError(Exception):
    """
    A store could not be reached in time; the message is the one line to show.
    """


async def wait_for(
    start: Callable[[], Deferred[None]], what: str, wait: float, reactor: IReactorTime
) -> None:
    """
    Call C{start} until it succeeds, with capped backoff, for up to C{wait} seconds; then raise
    L{StartupError} with the last reason.
    """
    deadline = reactor.seconds() + wait
    delay = 0.25
    said = None
    while True:
        try:
            await start()
            return
        except CancelledError:
            raise
        except Exception as e:
            reason = describe(e)
        if reactor.seconds() + delay > deadline:
            raise StartupError(f"cannot reach {what} within {wait:g} s: {reason}")
        if reason != said:
            said = reason
            log.warn("waiting for {what}: {reason}", what=what, reason=reason)
        await deferLater(reactor, delay)
        delay = min(delay * 2, 5.0)
