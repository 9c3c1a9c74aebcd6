"""
The wire format shared by client and server: payloads, control frames and framing.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import web3  # noqa: F401  -- imported for its side effect: py_ecc raises the recursion limit
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from ethtwisted.frames import Ack, ControlFrame, Hello, Refusal, decode_control, encode_control
from ethtwisted.framing import DROP_KINDS, FrameProtocol
from ethtwisted.protocol import (
    CONTROL_MARK,
    MAX_BLOCK_INT,
    Block,
    ProtocolError,
    block_html,
    block_json,
    check_payload,
    encode_payload,
    json_depth_over,
    loads_bounded,
    parse_block,
    payload_hash,
)
from tests.wire import BLOCK, feed, netstring


@pytest.mark.parametrize(
    ("number", "sha256"),
    [
        (0, "eef07d95574204b4dae2661f23ca58c63433a7e7d3e54174e3251f9fb07341ac"),
        (4242, "1618609a4b044ee50d82cf66cad21fe8c5fcb2c5b68c00bca8c0aa89cc5d9ab0"),
        (21000000, "be7cbed5bab6fc9c253937977f34aa3c9cf5fc3d8985d9cec7edc353994ca633"),
    ],
)
def test_html_page_matches_older_client(number: int, sha256: str) -> None:
    """
    The html payload is byte for byte the older client's page (its known SHA256 vectors).
    """
    assert payload_hash(block_html(number)) == sha256
    assert encode_payload(BLOCK.__class__(1, number, "0x00", "0x00", 0), "html") == block_html(
        number
    )


def test_json_payload_is_canonical() -> None:
    """
    The json payload has exactly the five keys, sorted, no spaces, hashes in lowercase.
    """
    payload = block_json(BLOCK)
    assert payload == (
        b'{"chain_id":1,"hash":"0x' + b"ab" * 32 + b'","number":4242,"parent_hash":"0x'
        + b"cd" * 32 + b'","timestamp":1700000000}'
    )  # fmt: skip
    assert encode_payload(BLOCK, "json") == payload
    assert json.loads(payload)["hash"] == BLOCK.hash.lower()


def test_parse_block_reads_both_formats() -> None:
    """
    The server learns the block from either payload format, and nothing from other text.
    """
    parsed = parse_block(block_json(BLOCK))
    assert isinstance(parsed, Block)
    assert parsed.number == 4242 and parsed.hash == BLOCK.hash.lower()
    assert parse_block(block_html(77)) == 77
    assert parse_block(b"<html>not the page</html>") is None
    assert parse_block(b'{"number": "x"}') is None
    assert parse_block(b'{"chain_id":1,"hash":"0x","number":"1","parent_hash":"0x",'
                       b'"timestamp":1}') is None  # fmt: skip
    assert parse_block(block_html(5).replace(b"<p>5</p>", b"<p>5a</p>")) is None


@pytest.mark.parametrize(
    "frame",
    [Hello("node-1"), Hello("node-2", token="s3cret"), Ack("ab" * 32), Refusal("no token")],
)
def test_control_frames_round_trip(frame: ControlFrame) -> None:
    """
    Every control frame decodes to what was encoded, and starts with the control mark.
    """
    data = encode_control(frame)
    assert data.startswith(CONTROL_MARK)
    assert decode_control(data) == frame


@pytest.mark.parametrize(
    "data",
    [b"\xff", b"\xffnot json", b'\xff{"type":"ack"}', b'\xff{"type":"bye"}', b"\xff[1]",
     b'\xff{"type":"hello","name":5}'],
)  # fmt: skip
def test_malformed_control_frames_are_refused(data: bytes) -> None:
    """
    A control frame that does not parse is a protocol error, not a crash.
    """
    with pytest.raises(ProtocolError):
        decode_control(data)


def test_token_never_in_repr() -> None:
    """
    A hello's token does not show in its repr (and so in no log line that formats it).
    """
    assert "s3cret" not in repr(Hello("n", token="s3cret"))


def test_no_utf8_payload_looks_like_a_control_frame() -> None:
    """
    Every UTF-8 text accepted as a payload starts with a byte other than the control mark.
    """
    for text in ["\u00ff", "\uffff", "ÿ", "\U0001f600", block_html(1).decode()]:
        data = text.encode("utf-8")
        assert check_payload(data) == text
        assert not data.startswith(CONTROL_MARK)


def test_check_payload_rejects_empty_and_non_utf8() -> None:
    """
    Empty messages and bytes that are not UTF-8 are protocol errors naming the problem.
    """
    with pytest.raises(ProtocolError, match="empty"):
        check_payload(b"")
    with pytest.raises(ProtocolError, match="not UTF-8"):
        check_payload(b"ok\xc3(")


class Recorder(FrameProtocol):
    def __init__(self, max_message_bytes: int = 100) -> None:
        super().__init__(max_message_bytes)
        self.payloads: list[bytes] = []
        self.frames: list[ControlFrame] = []

    def payloadReceived(self, payload: bytes) -> None:
        self.payloads.append(payload)

    def controlReceived(self, frame: ControlFrame) -> None:
        self.frames.append(frame)


def connected(protocol: FrameProtocol) -> StringTransport:
    transport = StringTransport()
    protocol.makeConnection(transport)
    return transport


def test_framing_splits_payloads_and_control_frames() -> None:
    """
    Netstrings fed a few bytes at a time come out whole, payloads and frames apart.
    """
    protocol = Recorder()
    connected(protocol)
    feed(protocol, netstring(b"one") + netstring(encode_control(Ack("ff" * 32))) + netstring(b"2"))
    assert protocol.payloads == [b"one", b"2"]
    assert protocol.frames == [Ack("ff" * 32)]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"101:" + b"x" * 101 + b",", "101 bytes is over the 100-byte cap"),
        (b"99999999999:", "over the 100-byte cap"),
        (b"3:abc;", "broken netstring framing"),
        (b"GET / HTTP/1.1\r\n", "broken netstring framing"),
        (netstring(b"\xff{}"), "malformed control frame"),
    ],
)
def test_bad_input_drops_connection_logged_once(data: bytes, reason: str) -> None:
    """
    Broken framing, a message over the cap or a bad frame closes the connection, and the
    reason is logged once with the peer.
    """
    protocol = Recorder()
    transport = connected(protocol)
    with capturedLogs() as events:
        feed(protocol, data + netstring(b"after"))
    assert transport.disconnecting
    assert protocol.payloads == []
    warnings = [e for e in events if "dropping connection" in e["log_format"]]
    assert len(warnings) == 1
    assert reason in warnings[0]["reason"]
    assert warnings[0]["peer"] == "192.168.1.1:54321"


def drop_kinds_in(package: Path) -> set[str]:
    """
    The kinds of drop the code under C{package} names: the literal C{kind} of every
    C{drop(reason, kind)} call and of every observer's C{dropped(kind)}, and drop's default.
    """
    kinds = {"bad_message"}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            position = {"drop": 1, "dropped": 0}.get(node.func.attr)
            if position is None:
                continue
            args = [*node.args, *(k.value for k in node.keywords if k.arg == "kind")]
            arg = args[position] if len(args) > position else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                kinds.add(arg.value)
    return kinds


def test_every_drop_kind_is_listed_and_explained() -> None:
    """
    Every kind of drop the code names is one of C{DROP_KINDS} (each a label of the metric that
    counts them) and explained in C{FrameProtocol.drop}'s docstring, and no kind is listed that
    the code no longer names.
    """
    used = drop_kinds_in(Path(__file__).parent.parent / "ethtwisted")
    assert used == set(DROP_KINDS)
    assert len(DROP_KINDS) == len(set(DROP_KINDS))
    doc = FrameProtocol.drop.__doc__ or ""
    assert [k for k in DROP_KINDS if f"C{{{k}}}:" not in doc] == []


@pytest.mark.expected_log_errors("^bug while handling a message from .*RuntimeError: boom")
def test_bug_in_handler_is_logged_and_costs_only_the_connection() -> None:
    """
    An exception escaping a handler is logged as a failure and drops that connection.
    """

    class Broken(Recorder):
        def payloadReceived(self, payload: bytes) -> None:
            raise RuntimeError("boom")

    protocol = Broken()
    transport = connected(protocol)
    with capturedLogs() as events:
        feed(protocol, netstring(b"x"))
    assert transport.disconnecting
    assert any(e.get("log_failure") is not None for e in events)


# -- bounded JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_json_is_a_protocol_error_not_a_crash(opener: bytes) -> None:
    """
    JSON nested 100,000 deep (deep enough to overflow the C stack once web3 has raised the
    recursion limit) is refused with ProtocolError before it is parsed.
    """
    closer = b"]" if opener == b"[" else b"}"
    with pytest.raises(ProtocolError, match="nested more than"):
        loads_bounded(opener * 100_000 + b"1" + closer * 100_000)
    with pytest.raises(ProtocolError):
        decode_control(CONTROL_MARK + opener * 100_000)
    assert parse_block(b"{" + b'"a":{' * 100_000) is None


def test_brackets_inside_strings_do_not_count() -> None:
    """
    Brackets inside JSON strings (escaped quotes included) are not nesting.
    """
    text = json.dumps({"a": "[" * 1000 + '\\"' + "{" * 1000}).encode()
    assert not json_depth_over(text)
    assert loads_bounded(text) == json.loads(text)


def test_huge_integer_is_a_protocol_error() -> None:
    """
    An integer of more digits than Python converts is malformed JSON, not a ValueError.
    """
    with pytest.raises(ProtocolError, match="malformed JSON"):
        loads_bounded(b"[" + b"9" * 5000 + b"]")


@pytest.mark.property
@given(
    st.recursive(
        st.none() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_bounded_depth_agrees_with_the_parser(value: object) -> None:
    """
    For any JSON value, json_depth_over agrees with the nesting the value really has, and
    loads_bounded returns what json.loads does whenever the value is within the bound.
    """

    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    text = json.dumps(value).encode()
    for limit in (1, 3, 32):
        assert json_depth_over(text, limit) == (depth(value) > limit)
    if depth(value) <= 32:
        assert loads_bounded(text) == value


@pytest.mark.parametrize(
    "change",
    [
        {"number": 10**30},
        {"chain_id": 10**20},
        {"timestamp": 10**26},
        {"number": -1},
        {"number": True},
        {"hash": "0x" + "ab" * 51},
        {"parent_hash": "0xzz" + "ab" * 31},
    ],
)
def test_block_fields_out_of_range_make_an_opaque_payload(change: dict[str, object]) -> None:
    """
    A canonical-looking payload whose block fields no SQL column can hold (integers past a
    signed 64-bit, negative, booleans, hashes that are not 32 bytes of hex) says nothing about a
    block: it is stored as an opaque payload instead of failing the store.
    """
    fields = {
        "chain_id": 1,
        "number": 4242,
        "hash": "0x" + "ab" * 32,
        "parent_hash": "0x" + "cd" * 32,
        "timestamp": 1_700_000_000,
    }
    assert isinstance(
        parse_block(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()), Block
    )
    fields.update(change)
    assert parse_block(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()) is None


def test_older_page_with_a_huge_number_is_opaque() -> None:
    """
    The older page with a block number past a signed 64-bit integer is an opaque payload.
    """
    assert parse_block(block_html(2**63 - 1)) == 2**63 - 1
    assert parse_block(block_html(2**63)) is None
    assert parse_block(block_html(10**30)) is None


hashes = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())
blocks = st.builds(
    Block,
    chain_id=st.integers(0, MAX_BLOCK_INT),
    number=st.integers(0, MAX_BLOCK_INT),
    hash=hashes,
    parent_hash=hashes,
    timestamp=st.integers(0, MAX_BLOCK_INT),
)


def _upper_one(text: str, at: int) -> str:
    """C{text} with its hex letter nearest after C{at} in upper case (C{text} if none)."""
    letters = [i for i, c in enumerate(text) if c in "abcdef" and i >= 2]
    if not letters:
        return text
    i = min(letters, key=lambda j: (j < at, abs(j - at)))
    return text[:i] + text[i].upper() + text[i + 1 :]


@pytest.mark.property
@given(blocks, st.sampled_from(["hash", "parent_hash"]), st.integers(2, 65), st.integers(0, 4))
def test_only_the_canonical_bytes_of_a_block_are_a_block(
    block: Block, field: str, at: int, how: int
) -> None:
    """
    The canonical message of any block is that block; the same block in any other JSON (a hex
    letter of a hash in upper case, spaces, keys out of order, one key more, the hash quoted
    with an escape) is an opaque payload: it says nothing about the chain, on any backend.
    """
    assert parse_block(block_json(block)) == block
    fields = json.loads(block_json(block))
    if how == 0:
        upper = _upper_one(fields[field], at)
        if upper == fields[field]:
            return  # a hash of digits only has no case
        fields[field] = upper
        variant = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    elif how == 1:
        variant = json.dumps(fields, sort_keys=True).encode()
    elif how == 2:
        variant = json.dumps(dict(reversed(fields.items())), separators=(",", ":")).encode()
    elif how == 3:
        fields["extra"] = 1
        variant = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    else:
        variant = block_json(block).replace(b'"0x', b'"\\u0030x', 1)
    assert parse_block(variant) is None
