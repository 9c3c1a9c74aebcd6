"""
Bytes on the wire: netstrings, a protocol fed in small chunks, the frames a transport was
sent, and one block.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from ethtwisted.framing import FrameProtocol
from ethtwisted.protocol import Block

BLOCK = Block(
    chain_id=1,
    number=4242,
    hash="0x" + "AB" * 32,
    parent_hash="0x" + "cd" * 32,
    timestamp=1_700_000_000,
)


def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def feed(protocol: FrameProtocol, data: bytes) -> None:
    """
    Hand C{data} over in chunks of 1 to 9 bytes, as a slow network would.
    """
    sizes = [1, 2, 3, 5, 7, 9, 4, 6, 8]
    i = n = 0
    while i < len(data):
        size = sizes[n % len(sizes)]
        protocol.dataReceived(data[i : i + size])
        i, n = i + size, n + 1


def sent_frames(transport: StringTransport) -> list[bytes]:
    data, frames = transport.value(), []
    while data:
        length, _, rest = data.partition(b":")
        frames.append(rest[: int(length)])
        data = rest[int(length) + 1 :]
    return frames
