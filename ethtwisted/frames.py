"""
The control frames (hello, ack, refusal, welcome, status, sighting, ping, pong): a netstring
whose first byte is C{CONTROL_MARK}, then a JSON object, each value checked where it is decoded.
``docs/protocol.md`` describes them for people.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

from ethtwisted.protocol import CONTROL_MARK, SOURCES, ProtocolError, loads_bounded

# -- control frames ---------------------------------------------------------------------------

FEATURES = ("status", "sighting", "ping")
"""What a client of this version understands beyond hello and ack (sent in its hello)."""
MAX_FEATURES = 16
MAX_FEATURE_LENGTH = 32
MAX_CLIENT_VERSION_LENGTH = 256
MAX_WIRE_INT = 2**63 - 1
"""Largest integer a status, sighting, ping or pong frame carries (SQL's signed BIGINT)."""
MAX_RTT_MS = 3_600_000.0
"""Largest node round-trip time a status frame carries: an hour, in ms."""
_FEATURE = re.compile(r"[a-z][a-z0-9_-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


MAX_NAME_LENGTH = 255
"""Characters in a client name (the hello's), on both sides."""
_NAME_BREAKING = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Unicode categories that break a name as a value: control characters, surrogates, line and
paragraph separators."""
_NAME_INVISIBLE = frozenset({"Cf", "Co", "Cn"})
"""Unicode categories that show nothing, or nothing agreed on, so that two names looking alike
would differ: format characters (zero-width ones, bidirectional overrides and isolates, the
byte order mark), private use, unassigned code points."""
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
"""Letters and symbols that show nothing: the Hangul fillers (Lo), the blank Braille pattern."""


def name_problem(name: str) -> str | None:
    """
    Why C{name} cannot be a client's name (a phrase), or L{None}.  A name is 1 to
    L{MAX_NAME_LENGTH} characters (a C{VARCHAR(255)} in utf8mb4 holds any 255), encodable as
    UTF-8 (no lone surrogate, which JSON's C{"\\ud800"} can carry), without control characters
    or line breaks; without invisible characters (L{_NAME_INVISIBLE}, L{_BLANK_GLYPHS}), no
    space but U+0020 and never two in a row nor around the name (MySQL compares names without
    trailing spaces); in Unicode's composed form (NFC), so that one look has one spelling.
    """
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"must be 1 to {MAX_NAME_LENGTH} characters"
    for c in name:
        category = unicodedata.category(c)
        if category in _NAME_BREAKING:
            return "must not contain control characters, line breaks or lone surrogates"
        if category in _NAME_INVISIBLE or c in _BLANK_GLYPHS:
            return (f"must not contain invisible, format, private-use or unassigned characters"
                    f" (U+{ord(c):04X})")  # fmt: skip
        if category == "Zs" and c != " ":
            return f"must not contain spaces other than U+0020 (U+{ord(c):04X})"
    if name != name.strip():
        return "must not begin or end with spaces"
    if "  " in name:
        return "must not contain two spaces in a row"
    if not unicodedata.is_normalized("NFC", name):
        return "must be in Unicode's composed form (NFC)"
    return None


@dataclass(frozen=True)
class Hello:
    """
    Client to server, first frame: who is sending, its token when the server asks for one, and
    the C{features} it understands (L{None}: a client that sends no list, as older ones).
    """

    name: str
    token: str | None = field(default=None, repr=False)
    features: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Ack:
    """
    Server to client: the payload with this SHA256 is committed to SQL.
    """

    sha256: str


@dataclass(frozen=True)
class Refusal:
    """
    Server to client, just before it closes the connection: why.
    """

    reason: str


@dataclass(frozen=True)
class Welcome:
    """
    Server to client, right after it accepted a hello that listed features: the features both
    understand.  Never sent to a client whose hello listed none.
    """

    features: tuple[str, ...]


@dataclass(frozen=True)
class SyncProgress:
    """
    A syncing node's progress: the block it is at and the highest it knows of.
    """

    current: int
    highest: int


@dataclass(frozen=True)
class Status:
    """
    Client to server: what the client's node says about itself.  Each field is L{None} when the
    node does not say (it lacks the method); C{syncing} is C{False} when it is not syncing.
    Integers are wei for the prices, block numbers for C{safe} and C{finalized}, counts of
    transactions for C{pending} and C{queued}; C{rtt_ms} is the node's round-trip time.
    """

    client_version: str | None = None
    chain_id: int | None = None
    peers: int | None = None
    syncing: SyncProgress | Literal[False] | None = None
    gas_price: int | None = None
    base_fee: int | None = None
    safe: int | None = None
    finalized: int | None = None
    pending: int | None = None
    queued: int | None = None
    rtt_ms: float | None = None


STATUS_INTS = ("chain_id", "peers", "gas_price", "base_fee", "safe", "finalized", "pending",
               "queued")  # fmt: skip


@dataclass(frozen=True)
class Sighting:
    """
    Client to server, right before the payload it describes: the client learnt of that block
    at C{seen_ms} (ms since the epoch, on its own clock) by C{via}, one of L{SOURCES}.
    """

    sha256: str
    seen_ms: int
    via: str


@dataclass(frozen=True)
class Ping:
    """
    Server to client: answer at once with a L{Pong} of the same C{id}.
    """

    id: int


@dataclass(frozen=True)
class Pong:
    """
    Client to server, the answer to a L{Ping}: C{client_ms} is the client's clock, in ms since
    the epoch, when it answered.
    """

    id: int
    client_ms: int


ControlFrame = Hello | Ack | Refusal | Welcome | Status | Sighting | Ping | Pong


def encode_control(frame: ControlFrame) -> bytes:
    """
    The bytes of a control frame (without netstring framing).
    """
    obj: dict[str, Any]
    if isinstance(frame, Hello):
        obj = {"type": "hello", "name": frame.name}
        if frame.token is not None:
            obj["token"] = frame.token
        if frame.features is not None:
            obj["features"] = list(frame.features)
    elif isinstance(frame, Ack):
        obj = {"type": "ack", "sha256": frame.sha256}
    elif isinstance(frame, Refusal):
        obj = {"type": "refusal", "reason": frame.reason}
    elif isinstance(frame, Welcome):
        obj = {"type": "welcome", "features": list(frame.features)}
    elif isinstance(frame, Status):
        syncing = frame.syncing
        obj = {"type": "status", "client_version": frame.client_version}
        obj.update((name, getattr(frame, name)) for name in STATUS_INTS)
        obj["syncing"] = (
            {"current": syncing.current, "highest": syncing.highest}
            if isinstance(syncing, SyncProgress)
            else syncing
        )
        obj["rtt_ms"] = frame.rtt_ms
    elif isinstance(frame, Sighting):
        obj = {"type": "sighting", "sha256": frame.sha256, "seen_ms": frame.seen_ms,
               "via": frame.via}  # fmt: skip
    elif isinstance(frame, Ping):
        obj = {"type": "ping", "id": frame.id}
    else:
        obj = {"type": "pong", "id": frame.id, "client_ms": frame.client_ms}
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return CONTROL_MARK + text.encode("utf-8", "surrogatepass")


def _wire_int(value: object) -> int:
    """
    C{value} if it is an integer 0 to L{MAX_WIRE_INT}; else L{ProtocolError}.
    """
    if type(value) is not int or not 0 <= value <= MAX_WIRE_INT:
        raise ProtocolError("malformed control frame: not an integer in range")
    return value


def _optional_int(value: object) -> int | None:
    return None if value is None else _wire_int(value)


def _text(value: object, limit: int) -> str:
    """
    C{value} if it is a string of at most C{limit} characters without lone surrogates.
    """
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError("malformed control frame: not a string in bounds")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("malformed control frame: a lone surrogate") from None
    return value


def _features(value: object) -> tuple[str, ...]:
    """
    A list of feature names: at most L{MAX_FEATURES}, each short, lowercase, once.
    """
    if not isinstance(value, list) or len(value) > MAX_FEATURES:
        raise ProtocolError("malformed control frame: features is not a short list")
    features = tuple(value)
    for feature in features:
        if not (isinstance(feature, str) and len(feature) <= MAX_FEATURE_LENGTH
                and _FEATURE.fullmatch(feature)):  # fmt: skip
            raise ProtocolError("malformed control frame: not a feature name")
    if len(set(features)) < len(features):
        raise ProtocolError("malformed control frame: a feature listed twice")
    return features


def _rtt(value: object) -> float | None:
    if value is None:
        return None
    if not (type(value) is int or type(value) is float) or not 0 <= value <= MAX_RTT_MS:
        # NaN fails the range too (json.loads takes NaN and Infinity).
        raise ProtocolError("malformed control frame: rtt_ms is not a time in range")
    return float(value)


def _syncing(value: object) -> SyncProgress | Literal[False] | None:
    if value is None or value is False:
        return value
    if not isinstance(value, dict):
        raise ProtocolError("malformed control frame: syncing is not false or an object")
    return SyncProgress(_wire_int(value.get("current")), _wire_int(value.get("highest")))


def _decode(kind: object, obj: dict[str, Any]) -> ControlFrame:
    if kind == "hello":
        name, token, features = obj["name"], obj.get("token"), obj.get("features")
        if isinstance(name, str) and (token is None or isinstance(token, str)):
            if (problem := name_problem(name)) is not None:
                raise ProtocolError(f"malformed control frame: client name {problem}")
            return Hello(name=name, token=token,
                         features=None if features is None else _features(features))  # fmt: skip
    elif kind == "ack":
        sha = obj["sha256"]
        if isinstance(sha, str):
            return Ack(sha256=sha)
    elif kind == "refusal":
        reason = obj["reason"]
        if isinstance(reason, str):
            return Refusal(reason=reason)
    elif kind == "welcome":
        return Welcome(features=_features(obj["features"]))
    elif kind == "status":
        version = obj.get("client_version")
        ints = {name: _optional_int(obj.get(name)) for name in STATUS_INTS}
        return Status(
            client_version=None if version is None else _text(version, MAX_CLIENT_VERSION_LENGTH),
            syncing=_syncing(obj.get("syncing")),
            rtt_ms=_rtt(obj.get("rtt_ms")),
            **ints,
        )
    elif kind == "sighting":
        sha, via = obj["sha256"], obj["via"]
        if isinstance(sha, str) and _SHA256.fullmatch(sha) and via in SOURCES:
            return Sighting(sha256=sha, seen_ms=_wire_int(obj["seen_ms"]), via=via)
    elif kind == "ping":
        return Ping(id=_wire_int(obj["id"]))
    elif kind == "pong":
        return Pong(id=_wire_int(obj["id"]), client_ms=_wire_int(obj["client_ms"]))
    raise ProtocolError("malformed control frame")


def decode_control(data: bytes) -> ControlFrame:
    """
    Parse a control frame (starting with C{CONTROL_MARK}), or raise L{ProtocolError}.  Keys a
    frame does not define are ignored; every value it defines is checked (type, range, size).
    """
    try:
        obj = loads_bounded(data[len(CONTROL_MARK) :])
        if isinstance(obj, dict):
            return _decode(obj.get("type"), obj)
    except ProtocolError as e:
        if str(e).startswith("malformed control frame"):
            raise
    except (KeyError, TypeError):
        pass
    raise ProtocolError("malformed control frame")
