"""
Twisted endpoint strings (C{tcp6:8080:interface=\\:\\:1}) read the way Twisted reads them, and
whether a listening endpoint reaches beyond this machine.
"""

from __future__ import annotations

import ipaddress

TCP_KINDS = frozenset({"tcp", "tcp6", "ssl"})
"""The endpoint kinds that listen on a TCP port given as their first argument."""
CLIENT_TCP_KINDS = frozenset({"tcp", "ssl", "tls"})
"""The endpoint kinds that connect to a host and a TCP port, given as their first two
arguments."""


def parse_endpoint(description: str) -> tuple[list[str], dict[str, str]]:
    """
    The positional and keyword arguments of an endpoint string, by Twisted's rules: fields are
    separated by C{:}, the first C{=} of a field makes it a keyword argument, and a backslash
    takes the next character as it is.  C{tcp6:8080:interface=\\:\\:1} gives
    C{(["tcp6", "8080"], {"interface": "::1"})}.

    @raise ValueError: if C{description} ends in a lone backslash (Twisted refuses it too).
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    key: str | None = None
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError(f"{description!r} ends in a lone backslash")
            current.append(escaped)
        elif char == "=" and key is None:
            key, current = "".join(current), []
        elif char == ":":
            if key is None:
                args.append("".join(current))
            else:
                kwargs[key] = "".join(current)
            key, current = None, []
        else:
            current.append(char)
    if key is None:
        args.append("".join(current))
    else:
        kwargs[key] = "".join(current)
    return args, kwargs


def listening_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    The kind (lower case), the other positional arguments and the keyword arguments of the
    endpoint that listens: for C{haproxy:tcp:80}, the TCP endpoint it wraps.
    """
    args, kwargs = parse_endpoint(description)
    if args[0].lower() == "haproxy" and len(args) > 1:
        args = args[1:]
    return args[0].lower(), args[1:], kwargs


def is_loopback(interface: str) -> bool:
    """
    Whether listening on C{interface} reaches this machine only: a loopback address or
    C{localhost}.  An empty interface means every interface; a host name may resolve to any.
    """
    if interface.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def reachable_beyond_loopback(description: str) -> bool:
    """
    Whether a TCP or TLS endpoint description listens on more than the loopback interface.
    """
    kind, _, kwargs = listening_endpoint(description)
    return kind in TCP_KINDS and not is_loopback(kwargs.get("interface", ""))


def endpoint_port(description: str, *, server: bool) -> int | None:
    """
    The TCP port a server endpoint listens on or a client endpoint connects to, or L{None} when
    it has none (C{unix:}) or it is not a number (Twisted's parser refuses that).
    """
    if server:
        kind, args, kwargs = listening_endpoint(description)
        kinds, position = TCP_KINDS, 0
    else:
        args, kwargs = parse_endpoint(description)
        kind, args = args[0].lower(), args[1:]
        kinds, position = CLIENT_TCP_KINDS, 1
    if kind not in kinds:
        return None
    port = kwargs.get("port", args[position] if len(args) > position else "")
    try:
        return int(port)
    except ValueError:
        return None
