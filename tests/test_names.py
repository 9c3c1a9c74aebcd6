"""
Client names where they enter: the hello frame as the server decodes it, and eth-client's
--name.  A name shows what it is: no control, format, private-use, unassigned or blank
characters, no space but U+0020 and never two in a row nor around it, in NFC.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ethtwisted.frames import Hello, decode_control, encode_control, name_problem
from ethtwisted.protocol import CONTROL_MARK, ProtocolError
from tests.helpers import usage_error
from tests.names import names

forbidden = st.characters(categories=["Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"]) | (
    st.characters(categories=["Zs"], exclude_characters=" ")
)
"""A character that no name may hold anywhere."""


def hello_bytes(name: str) -> bytes:
    """A hello naming C{name}, as JSON escapes (a lone surrogate can only arrive as one)."""
    return CONTROL_MARK + json.dumps({"type": "hello", "name": name}).encode("ascii")


@pytest.mark.property
@given(names)
def test_names_of_visible_characters_are_taken_as_they_are(name: str) -> None:
    """
    A name of letters, marks, digits, punctuation and symbols of any script, with single
    spaces between words, is a good name: the hello carrying it decodes to it, unchanged.
    """
    assert name_problem(name) is None
    assert decode_control(hello_bytes(name)) == Hello(name)
    assert decode_control(encode_control(Hello(name))) == Hello(name)


@pytest.mark.property
@given(names, forbidden, st.integers(0, 255))
def test_a_forbidden_character_anywhere_costs_the_hello(name: str, bad: str, where: int) -> None:
    """
    One control, format (zero-width, bidirectional), private-use, unassigned, surrogate,
    separator or non-ASCII space character anywhere in a name makes the hello undecodable (the
    server drops the connection) and makes eth-client's --name a one-line usage error.
    """
    where = min(where, len(name))
    spoiled = name[:where] + bad + name[where:]
    problem = name_problem(spoiled)
    assert problem is not None
    with pytest.raises(ProtocolError, match=r"^malformed control frame: client name must "):
        decode_control(hello_bytes(spoiled))
    if bad != "\x00":  # not in a command line: the operating system's strings end there
        error = usage_error("--name", spoiled)
        assert f"--name {problem}" in error and "\n" not in error


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("\u200balice", "invisible, format, private-use or unassigned characters (U+200B)"),
        ("alice\u202e", "(U+202E)"),  # right-to-left override
        ("a\u2066b\u2069", "(U+2066)"),  # a bidirectional isolate
        ("\ufeffalice", "(U+FEFF)"),
        ("al\u00adice", "(U+00AD)"),  # soft hyphen
        ("alice\ue000", "(U+E000)"),  # private use
        ("alice\u0378", "(U+0378)"),  # unassigned
        ("\u3164", "(U+3164)"),  # Hangul filler: a letter that shows nothing
        ("a\u2800", "(U+2800)"),  # blank Braille pattern
        ("alice\u00a0b", "spaces other than U+0020 (U+00A0)"),
        ("alice\u3000b", "spaces other than U+0020 (U+3000)"),
        ("alice  b", "two spaces in a row"),
        ("alice ", "must not begin or end with spaces"),
        ("e\u0301", "composed form (NFC)"),  # é, decomposed
        ("a\u2028b", "line breaks"),
    ],
)
def test_names_that_look_like_others_are_refused(name: str, reason: str) -> None:
    """
    Each kind of name that could pass for another, or hide part of itself, is refused, and
    the reason names the rule and the code point, never the character itself.
    """
    problem = name_problem(name)
    assert problem is not None and reason in problem
    assert problem.isascii()
    with pytest.raises(ProtocolError, match="client name"):
        decode_control(hello_bytes(name))


def test_good_names_of_several_scripts() -> None:
    """
    Names in several scripts, composed accents, emoji and single spaces are taken.
    """
    for name in ["node-1", "ñandú ☃ 😀", "Zürich 1", "東京-2", "Ελλάδα", "a b", "x" * 255]:
        assert name_problem(name) is None, name
