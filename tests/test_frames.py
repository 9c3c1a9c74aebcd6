"""
The control frames of node status, sightings and clock pings (welcome, status, sighting, ping,
pong, and hello's features): their bytes, their bounds, and that nothing decodes to anything
but a frame or a ProtocolError.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import web3  # noqa: F401  -- imported for its side effect: py_ecc raises the recursion limit
from hypothesis import given
from hypothesis import strategies as st

from ethtwisted.frames import (
    FEATURES,
    MAX_WIRE_INT,
    ControlFrame,
    Hello,
    Ping,
    Pong,
    Sighting,
    Status,
    SyncProgress,
    Welcome,
    decode_control,
    encode_control,
)
from ethtwisted.protocol import CONTROL_MARK, SOURCES, ProtocolError
from tests.names import names

SHA = "ab" * 32


def frame_bytes(obj: Any) -> bytes:
    return CONTROL_MARK + json.dumps(obj).encode()


def test_hello_without_features_is_the_older_hello() -> None:
    """
    A hello with no feature list encodes to the bytes today's clients send, and today's hello
    decodes to one with C{features} None; a new client's hello lists its features.
    """
    assert encode_control(Hello("a", "t")) == b'\xff{"type":"hello","name":"a","token":"t"}'
    assert decode_control(frame_bytes({"type": "hello", "name": "a"})) == Hello("a")
    new = Hello("a", features=FEATURES)
    assert json.loads(encode_control(new)[1:])["features"] == ["status", "sighting", "ping"]
    assert decode_control(encode_control(new)) == new


def test_the_agreed_examples_decode() -> None:
    """
    The frames as the wire document writes them decode to what they say.
    """
    status = {
        "type": "status", "client_version": "anvil/v1.0.0", "chain_id": 31337, "peers": 0,
        "syncing": {"current": 5, "highest": 9}, "gas_price": 1_000_000_000,
        "base_fee": 875_000_000, "safe": None, "finalized": 0, "pending": 3, "queued": None,
        "rtt_ms": 0.42,
    }  # fmt: skip
    assert decode_control(frame_bytes(status)) == Status(
        "anvil/v1.0.0", 31337, 0, SyncProgress(5, 9), 1_000_000_000, 875_000_000, None, 0,
        3, None, 0.42,
    )  # fmt: skip
    assert decode_control(frame_bytes({"type": "status", "syncing": False})) == Status(
        syncing=False
    )
    sighting = {"type": "sighting", "sha256": SHA, "seen_ms": 1_700_000_000_123, "via": "poll"}
    assert decode_control(frame_bytes(sighting)) == Sighting(SHA, 1_700_000_000_123, "poll")
    assert decode_control(frame_bytes({"type": "welcome", "features": ["ping"]})) == Welcome(
        ("ping",)
    )
    assert decode_control(frame_bytes({"type": "ping", "id": 7})) == Ping(7)
    assert decode_control(frame_bytes({"type": "pong", "id": 7, "client_ms": 9})) == Pong(7, 9)


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "welcome"},
        {"type": "welcome", "features": "status"},
        {"type": "welcome", "features": ["x"] * 17},
        {"type": "welcome", "features": ["status", "status"]},
        {"type": "welcome", "features": ["a" * 33]},
        {"type": "welcome", "features": ["Status"]},
        {"type": "welcome", "features": [1]},
        {"type": "hello", "name": "a", "features": ["\ud800"]},
        {"type": "status", "client_version": "v" * 257},
        {"type": "status", "client_version": "\ud800"},
        {"type": "status", "client_version": 5},
        {"type": "status", "peers": -1},
        {"type": "status", "peers": True},
        {"type": "status", "peers": 1.0},
        {"type": "status", "gas_price": 2**63},
        {"type": "status", "syncing": True},
        {"type": "status", "syncing": {"current": 1}},
        {"type": "status", "syncing": [1, 2]},
        {"type": "status", "rtt_ms": -0.1},
        {"type": "status", "rtt_ms": float("nan")},
        {"type": "status", "rtt_ms": float("inf")},
        {"type": "status", "rtt_ms": "1"},
        {"type": "sighting", "sha256": SHA.upper(), "seen_ms": 1, "via": "poll"},
        {"type": "sighting", "sha256": SHA[:-1], "seen_ms": 1, "via": "poll"},
        {"type": "sighting", "sha256": SHA, "seen_ms": 1, "via": "unknown"},
        {"type": "sighting", "sha256": SHA, "seen_ms": -1, "via": "poll"},
        {"type": "sighting", "sha256": SHA, "via": "poll"},
        {"type": "ping"},
        {"type": "ping", "id": "1"},
        {"type": "ping", "id": 2**63},
        {"type": "pong", "id": 1},
        {"type": "pong", "id": 1, "client_ms": 1.5},
        {"type": "nonsense"},
    ],
)
def test_values_out_of_bounds_are_protocol_errors(obj: dict[str, Any]) -> None:
    """
    Each value a new frame defines is checked where it is decoded: types (booleans are not
    integers), ranges (0 to 2**63-1, a finite non-negative round-trip time), string sizes, lone
    surrogates, hex case, the list of sources and of feature names.
    """
    with pytest.raises(ProtocolError, match="malformed control frame"):
        decode_control(frame_bytes(obj))


wire_ints = st.integers(0, MAX_WIRE_INT)
optional_ints = st.none() | wire_ints
feature_names = st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True)
statuses = st.builds(
    Status,
    client_version=st.none() | st.text(max_size=256).filter(lambda t: t.isprintable()),
    chain_id=optional_ints,
    peers=optional_ints,
    syncing=st.none() | st.just(False) | st.builds(SyncProgress, wire_ints, wire_ints),
    gas_price=optional_ints,
    base_fee=optional_ints,
    safe=optional_ints,
    finalized=optional_ints,
    pending=optional_ints,
    queued=optional_ints,
    rtt_ms=st.none() | st.floats(0, 3_600_000.0),
)
frames: st.SearchStrategy[ControlFrame] = st.one_of(
    st.builds(
        Hello,
        name=names,
        token=st.none() | st.text(max_size=20),
        features=st.none() | st.lists(feature_names, max_size=16, unique=True).map(tuple),
    ),
    st.builds(Welcome, st.lists(feature_names, max_size=16, unique=True).map(tuple)),
    statuses,
    st.builds(
        Sighting,
        st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
        wire_ints,
        st.sampled_from(SOURCES),
    ),
    st.builds(Ping, wire_ints),
    st.builds(Pong, wire_ints, wire_ints),
)


@pytest.mark.property
@given(frames)
def test_every_frame_round_trips(frame: ControlFrame) -> None:
    """
    Any frame within the bounds encodes to a control frame that decodes to the same frame.
    """
    data = encode_control(frame)
    assert data.startswith(CONTROL_MARK)
    assert decode_control(data) == frame


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)  # fmt: skip
frame_keys = st.sampled_from(["type", "name", "token", "features", "sha256", "seen_ms", "via",
                              "id", "client_ms", "client_version", "syncing", "current",
                              "highest", "rtt_ms", "peers", "gas_price"])  # fmt: skip
frame_types = st.sampled_from(["hello", "ack", "refusal", "welcome", "status", "sighting",
                               "ping", "pong"])  # fmt: skip
frame_like = st.fixed_dictionaries({"type": frame_types}, optional={}) | st.dictionaries(
    frame_keys, json_values, max_size=6
)


@pytest.mark.property
@given(st.one_of(json_values, frame_like, st.tuples(frame_like, frame_types)))
def test_arbitrary_json_decodes_or_is_a_protocol_error(value: Any) -> None:
    """
    Whatever JSON follows the control mark (frame types with arbitrary values too), decoding
    gives a control frame or raises ProtocolError, never anything else.
    """
    if isinstance(value, tuple):
        obj, kind = value
        value = {**obj, "type": kind}
    data = CONTROL_MARK + json.dumps(value).encode("utf-8", "surrogatepass")
    try:
        frame = decode_control(data)
    except ProtocolError:
        return
    assert decode_control(encode_control(frame)) == frame
