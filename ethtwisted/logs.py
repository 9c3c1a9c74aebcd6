"""
Where ethtwisted's log events go: every module logs through this module's L{Logger}, whose
events pass the one level filter that C{--verbose} sets (L{set_verbose}) before they reach the
global log publisher, so that debug messages appear only with C{--verbose}, whichever log
twistd writes to.  (twistd adds its own observer to the global publisher after C{makeService}
has run, and the publisher offers no public way to wrap an observer already added: the filter
has to sit on our side of the publisher.)
"""

from __future__ import annotations

from inspect import currentframe
from typing import Any

from twisted.internet import defer
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.logger import Logger as _TwistedLogger
from twisted.python.failure import Failure

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
log_observer = FilteringLogObserver(globalLogPublisher, [_levels])


class Logger(_TwistedLogger):
    """
    Twisted's L{Logger}, sending to the C{--verbose} filter rather than straight to the global
    publisher; the namespace is still the calling module's unless given.
    """

    def __init__(
        self,
        namespace: str | None = None,
        source: object | None = None,
        observer: ILogObserver | None = None,
    ) -> None:
        if namespace is None:
            caller = currentframe()
            caller = caller.f_back if caller is not None else None
            namespace = caller.f_globals.get("__name__", "<unknown>") if caller else "<unknown>"
        super().__init__(namespace, source, log_observer if observer is None else observer)


def set_verbose(verbose: bool) -> None:
    """
    Let debug messages through, or not.
    """
    _levels.setLogLevelForNamespace("", LogLevel.debug if verbose else LogLevel.info)


class Trouble:
    """
    A repeated condition, said once per reason and once when it ends: L{say} logs C{message}
    (with C{reason} and the values given) at C{level} only when the reason differs from the
    one said last; L{ended} logs C{ended_message} once, at info, if there was trouble.
    """

    def __init__(
        self, log: _TwistedLogger, level: LogLevel, message: str, ended_message: str | None = None
    ) -> None:
        self.log = log
        self.level = level
        self.message = message
        self.ended_message = ended_message
        self.reason: str | None = None
        """The reason said last, while the trouble lasts."""

    def say(self, reason: str, **values: object) -> bool:
        """
        The trouble goes on, for C{reason}: log it if that is news; return whether it was.
        """
        if reason == self.reason:
            return False
        self.reason = reason
        self.log.emit(self.level, self.message, reason=reason, **values)
        return True

    def ended(self, **values: object) -> bool:
        """
        The trouble is over: log so, once, with C{values}; return whether there was trouble.
        """
        if self.reason is None:
            return False
        self.reason = None
        if self.ended_message is not None:
            self.log.info(self.ended_message, **values)
        return True


def describe(error: Failure | BaseException) -> str:
    """
    A one-line reason for people: the first line of the error's message (looking through the
    wrapper of a failed Deferred list), or its type's name when it has none; a Deferred's
    timeout (whose message is its arguments, C{(5.0, 'Deferred')}) as "timed out after 5 s".
    """
    value: Any = error.value if isinstance(error, Failure) else error
    while hasattr(value, "subFailure"):
        value = value.subFailure.value
    if isinstance(value, defer.TimeoutError) and value.args:
        seconds = value.args[0]
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            return f"timed out after {seconds:g} s"
    text = str(value).strip() or type(value).__name__
    return text.splitlines()[0]
