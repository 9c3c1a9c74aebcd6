"""
Where ethtwisted's log events go: every module logs through C{Logger(observer=log_observer)},
so that debug messages appear only with C{--verbose}, whichever log twistd writes to.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.python.failure import Failure

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
log_observer = FilteringLogObserver(globalLogPublisher, [_levels])


def set_verbose(verbose: bool) -> None:
    """
    Let debug messages through, or not.
    """
    _levels.setLogLevelForNamespace("", LogLevel.debug if verbose else LogLevel.info)


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
