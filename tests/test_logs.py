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


def test_debug_lines_pass_only_when_verbose() -> None:
    """
    A debug line of ours reaches the global log only after C{set_verbose(True)}; info always
    does; the namespace is the calling module's.
    """
    from ethtwisted.logs import Logger as OurLogger
    from ethtwisted.logs import set_verbose

    log = OurLogger()
    try:
        with capturedLogs() as quiet:
            log.debug("hidden")
            log.info("shown")
        set_verbose(True)
        with capturedLogs() as verbose:
            log.debug("hidden no more")
    finally:
        set_verbose(False)
    assert [formatEvent(e) for e in quiet] == ["shown"]
    assert quiet[0]["log_namespace"] == __name__
    assert [formatEvent(e) for e in verbose] == ["hidden no more"]
