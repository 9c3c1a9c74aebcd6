"""
Where ethtwisted's log events go: every module logs through C{Logger(observer=log_observer)},
so that debug messages appear only with C{--verbose}, whichever log twistd writes to.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
log_observer = FilteringLogObserver(globalLogPublisher, [_levels])


def set_verbose(verbose: bool) -> None:
    """
    Let debug messages through, or not.
    """
    _levels.setLogLevelForNamespace("", LogLevel.debug if verbose else LogLevel.info)
