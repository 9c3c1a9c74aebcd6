"""
Endpoint strings read with Twisted's escapes, and which listening endpoints reach beyond this
machine.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import endpoints

from ethtwisted.endpoints import (
    endpoint_port,
    is_loopback,
    parse_endpoint,
    reachable_beyond_loopback,
)


def test_parse_plain() -> None:
    """
    Fields split at C{:}; those with a C{=} are keyword arguments, the others positional.
    """
    assert parse_endpoint("tcp:8080:interface=127.0.0.1") == (
        ["tcp", "8080"],
        {"interface": "127.0.0.1"},
    )
    assert parse_endpoint("tcp:host=127.0.0.1:port=9999") == (
        ["tcp"],
        {"host": "127.0.0.1", "port": "9999"},
    )
    assert parse_endpoint("unix:/run/x.sock") == (["unix", "/run/x.sock"], {})


def test_parse_escapes() -> None:
    """
    A backslash takes the next character as it is: an escaped C{:} does not end a field, an
    escaped C{=} does not make one a keyword; a C{=} in a value is part of the value.
    """
    assert parse_endpoint("tcp6:8080:interface=\\:\\:1") == (
        ["tcp6", "8080"],
        {"interface": "::1"},
    )
    assert parse_endpoint("unix:/tmp/a\\=b") == (["unix", "/tmp/a=b"], {})
    assert parse_endpoint("ssl:443:privateKey=C\\:/k=1.pem") == (
        ["ssl", "443"],
        {"privateKey": "C:/k=1.pem"},
    )
    assert parse_endpoint("unix:/tmp/back\\\\slash") == (["unix", "/tmp/back\\slash"], {})


def test_parse_refuses_a_lone_trailing_backslash() -> None:
    """
    A string ending in an unfinished escape is refused, as Twisted refuses it.
    """
    with pytest.raises(ValueError, match="lone backslash"):
        parse_endpoint("tcp:8080\\")


def twisted_parse(description: str) -> tuple[list[str], dict[str, str]] | None:
    # Twisted's own reading, as the oracle: private, so this test is where a change in
    # Twisted's rules shows.
    try:
        args, kwargs = endpoints._parse(description)
    except RuntimeError:  # its tokenizer's StopIteration on a trailing backslash
        return None
    return args, kwargs


@pytest.mark.property
@given(st.text(alphabet=":=\\a1", max_size=30))
def test_parse_reads_as_twisted_does(description: str) -> None:
    """
    Any string over the characters that matter reads as Twisted's parser reads it, or is
    refused where Twisted's is.
    """
    expected = twisted_parse(description)
    if expected is None:
        with pytest.raises(ValueError):
            parse_endpoint(description)
    else:
        assert parse_endpoint(description) == expected


@pytest.mark.parametrize(
    ("interface", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),  # noqa: S104
        ("::", False),
        ("", False),
        ("::10", False),
        ("10.1.2.3", False),
        ("127.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(interface: str, loopback: bool) -> None:
    """
    Only loopback addresses and C{localhost} are loopback; every interface (empty), other
    addresses and host names (which may resolve to anything) are not.
    """
    assert is_loopback(interface) is loopback


@pytest.mark.parametrize(
    ("description", "reachable"),
    [
        ("tcp:8080:interface=127.0.0.1", False),
        ("tcp6:8080:interface=\\:\\:1", False),
        ("tcp:8080:interface=localhost", False),
        ("ssl:8443:interface=127.0.0.1:privateKey=k.pem", False),
        ("tcp:8080:interface=0.0.0.0", True),
        ("tcp6:8080:interface=\\:\\:", True),
        ("tcp6:8080", True),
        ("tcp:8080", True),
        ("tcp:port=8080", True),
        ("tcp:8080:interface=127.example.com", True),
        ("tcp6:8080:interface=\\:\\:10", True),
        ("haproxy:tcp:8080", True),
        ("haproxy:tcp:8080:interface=127.0.0.1", False),
        ("unix:/run/stats.sock", False),
    ],
)
def test_reachable_beyond_loopback(description: str, reachable: bool) -> None:
    """
    A TCP or TLS endpoint with no interface, every interface, or an interface that is not a
    loopback address (escaped or not) is reachable from other machines; a UNIX socket is not.
    """
    assert reachable_beyond_loopback(description) is reachable


@pytest.mark.parametrize(
    ("description", "server", "port"),
    [
        ("tcp:8080", True, 8080),
        ("tcp:port=99999:interface=127.0.0.1", True, 99999),
        (r"tcp6:0:interface=\:\:1", True, 0),
        ("haproxy:tcp:80", True, 80),
        ("ssl:443:privateKey=k.pem", True, 443),
        ("unix:/tmp/x", True, None),
        ("tcp:host=127.0.0.1:port=70000", False, 70000),
        ("tcp:127.0.0.1:9999", False, 9999),
        ("tls:example.com:443", False, 443),
        ("unix:/tmp/x", False, None),
    ],
)
def test_endpoint_port(description: str, server: bool, port: int | None) -> None:
    """
    The port of a TCP endpoint is read from its description, positional or keyword, for a
    server (through haproxy) and for a client; a UNIX endpoint has none.
    """
    assert endpoint_port(description, server=server) == port
