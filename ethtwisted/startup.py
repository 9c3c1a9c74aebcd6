"""
Services whose start-up takes time (waiting for their stores, listening), and how a service
that cannot start ends the program.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure

from ethtwisted.logs import Logger
from ethtwisted.storage import StartupError

# The tag twistd's log lines have had for these messages since they were written.
log = Logger(namespace="ethtwisted.tap")


class StartingService(Service):
    """
    A service whose start-up takes time (waiting for stores, listening): L{start_up} runs when
    the service starts, and L{ready} fires once it is done.  If it fails, the program ends with
    one line on stderr: the L{StartupError}'s message, or a pointer to the logged bug.  On stop,
    a start-up under way is cancelled, the L{ports} stop listening, then L{shut_down} runs.
    """

    what = "the service"
    """What is starting, for the log."""

    def __init__(self, reactor: IReactorCore) -> None:
        self.reactor = reactor
        self.ready: Deferred[None] = Deferred()
        self.ports: list[IListeningPort] = []
        """What L{start_up} listens on, closed first on stop."""

    async def start_up(self) -> None:
        raise NotImplementedError()

    async def shut_down(self) -> None:
        """
        The rest of stopping, once start-up is cancelled and the ports are closed.
        """

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.ready.cancel()
        ports, self.ports = self.ports, []
        for port in ports:
            await maybeDeferred(port.stopListening)
        await self.shut_down()

    def startService(self) -> None:
        super().startService()
        self.ready = Deferred.fromCoroutine(self.start_up())
        self.ready.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(StartupError):
            fatal(self.reactor, str(failure.value))
        else:
            log.failure("starting {what}", failure, what=self.what)
            fatal(self.reactor, "internal error while starting; see the log")


async def listen_on(
    endpoints: Sequence[tuple[str, IStreamServerEndpoint]], factory: IProtocolFactory, what: str
) -> list[IListeningPort]:
    """
    Listen with C{factory} on each C{(description, endpoint)}; raise L{StartupError} naming the
    first endpoint that cannot be listened on.
    """
    ports = []
    for description, endpoint in endpoints:
        try:
            ports.append(await endpoint.listen(factory))
        except Exception as e:
            raise StartupError(f"cannot listen on {description}: {e}") from e
        log.info("{what} on {description}", what=what, description=description)
    return ports


def fatal(reactor: IReactorCore, message: str) -> None:
    """
    End the program because it cannot do its job: C{message} as one line on stderr (and in
    the log), then a clean shutdown with exit status 1.
    """
    log.critical("{message}", message=message)
    # twistd sends sys.stderr to the log; the line is for whoever started the program.
    stderr = sys.__stderr__ or sys.stderr
    stderr.write(f"{message}\n")
    stderr.flush()
    # twistd exits 0 whenever its reactor stops; the exit status is set last of all, once
    # twistd has cleaned up after itself (its pid file, its log).
    atexit.register(_exit_failed)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
