"""
Netstrings over a connection, shared by eth-client and eth-server: L{FrameProtocol} reads
C{<decimal length>:<bytes>,} frames under a length cap, hands each to L{payloadReceived} or,
decoded, to L{controlReceived} (what a frame means is L{ethtwisted.protocol}'s), writes frames
the same way, and drops the connection of a peer that breaks the rules, saying why once.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol

from ethtwisted.frames import ControlFrame, decode_control, encode_control
from ethtwisted.logs import Logger
from ethtwisted.protocol import CONTROL_MARK, ProtocolError

DEFAULT_MAX_MESSAGE_BYTES = 65536

DROP_KINDS = (
    "too_large",
    "framing",
    "bad_message",
    "unauthorized",
    "idle",
    "no_hello",
    "slow_reader",
    "too_many_connections",
    "buffered_bytes",
    "internal",
    "rejected",
    "name_in_use",
    "replaced",
)
"""Every sort of reason for dropping a connection (L{FrameProtocol.drop} says what each means),
as the metrics count them."""


class FrameProtocol(Protocol):
    """
    Netstring framing with a length cap, split into payloads and control frames.

    A peer that breaks the framing, exceeds the cap or sends a bad frame loses its connection;
    the reason is logged once, with the peer.  Nothing a peer sends raises out of
    L{dataReceived}.  Subclasses implement L{payloadReceived} and L{controlReceived}.

    The netstrings are parsed here rather than by Twisted's C{NetstringReceiver}, which keeps
    the reason of a parse error and the size of what it buffers to itself.
    """

    log = Logger()

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self.dropped: str | None = None
        self._buffer = bytearray()
        self._expected: int | None = None
        """Length of the frame being read, its comma included; None while reading a length."""

    @property
    def buffered(self) -> int:
        """
        Bytes received and not yet handled: the part of a frame that has arrived so far, and
        the frames held back while L{holding}.
        """
        return len(self._buffer)

    @property
    def peer(self) -> str:
        address = self.transport.getPeer() if self.transport else None
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        return f"{host}:{port}" if host is not None else str(address)

    @property
    def peer_host(self) -> str:
        address = self.transport.getPeer() if self.transport else None
        return str(getattr(address, "host", "unknown"))

    def dataReceived(self, data: bytes) -> None:
        if self.dropped:
            return
        self._buffer += data
        self.deliver()

    def holding(self) -> bool:
        """
        Whether to hand on no more frames for now: those received stay in the buffer until
        L{deliver} is called again.  Never, here; a subclass that bounds what it takes says when.
        """
        return False

    def deliver(self) -> None:
        """
        Hand on each whole frame in the buffer, in order, until there is none or L{holding}.
        """
        while not self.dropped and not self.holding():
            if self._expected is None and not self._read_length():
                return
            assert self._expected is not None
            if len(self._buffer) < self._expected:
                return
            end = self._expected - 1
            if self._buffer[end] != ord(","):
                self.drop("broken netstring framing: no comma after a frame", "framing")
                return
            frame = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._expected = None
            self.stringReceived(frame)

    def _read_length(self) -> bool:
        """
        Take a length prefix off the buffer; whether one was there whole.  A prefix longer
        than the cap's own digits is a frame over the cap, refused before it is parsed.
        """
        digits = len(str(self.max_message_bytes))
        colon = self._buffer.find(b":", 0, digits + 1)
        prefix = bytes(self._buffer[: digits + 1] if colon < 0 else self._buffer[:colon])
        if (prefix and not prefix.isdigit()) or (prefix.startswith(b"0") and len(prefix) > 1):
            self.drop("broken netstring framing", "framing")
            return False
        if colon < 0:
            if len(prefix) > digits:
                self.drop(f"message over the {self.max_message_bytes}-byte cap", "too_large")
            return False
        if not prefix:
            self.drop("broken netstring framing", "framing")
            return False
        length = int(prefix)
        if length > self.max_message_bytes:
            cap = self.max_message_bytes
            self.drop(f"message of {length} bytes is over the {cap}-byte cap", "too_large")
            return False
        del self._buffer[: colon + 1]
        self._expected = length + 1
        return True

    def drop(self, reason: str, kind: str = "bad_message") -> None:
        """
        Close this connection because of C{reason}, logged once; what it had buffered is
        let go.  C{kind} names the sort of reason, for counting; one of L{DROP_KINDS}:

          - C{framing}: broken netstring framing (a bad length prefix, no comma after a frame);
          - C{too_large}: a frame over the cap, or a length prefix longer than its digits;
          - C{bad_message}: a frame that does not parse or is not expected here (any
            L{ProtocolError}: an empty or non-UTF-8 payload, a malformed control frame, a second
            hello, a hello after payloads, a bad client name);
          - C{internal}: a bug while handling a frame (logged with its traceback);

        and the server's own (L{ethtwisted.server}):

          - C{unauthorized}: a missing or invalid token, or one that may not use the name;
          - C{name_in_use}: a hello naming a client another live connection is;
          - C{replaced}: the client connected again (same token, or same address without
            tokens) and its new connection took over;
          - C{no_hello}: no hello within the hello timeout, when tokens are required;
          - C{idle}: silent for the idle timeout before saying hello;
          - C{slow_reader}: acknowledgements left unread, too many or for too long;
          - C{too_many_connections}: over the connection limit, closed as soon as it is made
            (counted without calling this);
          - C{buffered_bytes}: holding the most when the connections together hold too much;
          - C{rejected}: one of its messages is refused by a store.
        """
        if self.dropped:
            return
        self.dropped = reason
        self._buffer = bytearray()
        self.log.warn("dropping connection from {peer}: {reason}", peer=self.peer, reason=reason)
        if self.transport is not None:
            self.transport.loseConnection()

    def stringReceived(self, string: bytes) -> None:
        if self.dropped:
            return
        try:
            if string.startswith(CONTROL_MARK):
                self.controlReceived(decode_control(string))
            else:
                self.payloadReceived(string)
        except ProtocolError as e:
            self.drop(str(e))
        except Exception:
            self.log.failure("bug while handling a message from {peer}", peer=self.peer)
            self.drop("internal error", "internal")

    def sendString(self, string: bytes) -> None:
        """
        Write C{string} as one netstring.
        """
        assert self.transport is not None, "sending before the connection is made"
        self.transport.write(b"%d:%s," % (len(string), string))

    def send_control(self, frame: ControlFrame) -> None:
        self.sendString(encode_control(frame))

    def payloadReceived(self, payload: bytes) -> None:
        raise ProtocolError("unexpected payload")

    def controlReceived(self, frame: ControlFrame) -> None:
        raise ProtocolError(f"unexpected {type(frame).__name__.lower()} frame")
