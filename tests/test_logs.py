"""
The one helper for a repeated condition: said once per reason, and once when it ends.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent

from ethtwisted.logs import Trouble


def test_trouble_is_said_once_per_reason_and_once_when_it_ends() -> None:
    """
    L{Trouble.say} logs at its level only when the reason changes; L{Trouble.ended} logs the
    end once, at info, and only after trouble; each event keeps the logger's namespace.
    """
    log = Logger(namespace="ethtwisted.example")
    trouble = Trouble(log, LogLevel.warn, "cannot reach {what}: {reason}", "{what} is back")
    with capturedLogs() as events:
        assert not trouble.ended(what="it")
        assert trouble.say("refused", what="it")
        assert not trouble.say("refused", what="it")
        assert trouble.say("timed out", what="it")
        assert trouble.reason == "timed out"
        assert trouble.ended(what="it")
        assert not trouble.ended(what="it")
        assert trouble.say("refused", what="it")
    said = [(e["log_level"], e["log_namespace"], formatEvent(e)) for e in events]
    assert said == [
        (LogLevel.warn, "ethtwisted.example", "cannot reach it: refused"),
        (LogLevel.warn, "ethtwisted.example", "cannot reach it: timed out"),
        (LogLevel.info, "ethtwisted.example", "it is back"),
        (LogLevel.warn, "ethtwisted.example", "cannot reach it: refused"),
    ]
