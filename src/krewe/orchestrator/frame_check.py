"""The rules of RFC 6455 for a client's frames that aiohttp's reader does not enforce.

- Every frame from a client is masked (§5.1). aiohttp decodes an unmasked frame as if it were.
- Inside a fragmented message only control frames and continuations may come (§5.4). aiohttp
  takes a new text or binary frame after an empty first fragment, and is then out of step: the
  connection's next fragmented message fails.

A sans-I/O scanner of the client's byte stream: it reads each frame's header (first byte, mask
bit, payload length) and skips the payload, so it costs a few operations per frame whatever the
frame's size. The server feeds the stream through it (`CheckedFeed`) before aiohttp's reader
(`krewe.orchestrator.server`) and fails the connection with 1002 at the first breach.

Once the endpoint takes a session's pongs (`take_pongs`), a pong that arrives alone in one read, as
a heartbeat's does, goes to the endpoint's callback and never reaches aiohttp's reader, so it does
not wake the session's receive loop: the heartbeat pongs of thousands of idle miners cost a header
check each. A pong that arrives with other bytes goes to the reader as any frame does.
"""

from collections.abc import Callable

from aiohttp import web
from aiohttp.http import WebSocketReader

__all__ = ["CheckedFeed", "FrameCheck", "take_pongs"]

_FIN_BIT = 0x80
_OPCODE_BITS = 0x0F
_MASK_BIT = 0x80
_LENGTH_BITS = 0x7F
_EXTENDED_LENGTH = {126: 2, 127: 8}  # a 7-bit length of 126 or 127 announces a longer length field
_MASK_KEY_BYTES = 4
_CONTINUATION = 0x0
_PONG = 0x8A  # a pong frame's first byte: FIN + the pong opcode
_MAX_CONTROL_PAYLOAD = 125  # RFC 6455 §5.5
_DATA = (0x1, 0x2)  # text, binary


class FrameCheck:
    """Fed a client's bytes in order; says whether its frames so far keep the rules above."""

    def __init__(self) -> None:
        self._header = bytearray()  # the current frame's header, as far as it has arrived
        self._payload_left = 0  # bytes of the current frame's payload still to skip
        self._fragmented = False  # a text or binary message has begun and not ended
        self.breach: str | None = None  # the first rule broken; once set, it stays

    @property
    def between_frames(self) -> bool:
        """Whether the bytes so far end where a frame ends, with no rule broken."""
        return not self._header and not self._payload_left and self.breach is None

    def feed(self, data: bytes) -> bool:
        """Scan `data`; False once the frames so far break a rule (`breach` says which)."""
        position, end = 0, len(data)
        while position < end and self.breach is None:
            if self._payload_left:
                skipped = min(self._payload_left, end - position)
                self._payload_left -= skipped
                position += skipped
                continue
            wanted = self._header_length() - len(self._header)
            self._header += data[position : position + wanted]
            position += min(wanted, end - position)
            if len(self._header) >= 2 and not self._header[1] & _MASK_BIT:
                self.breach = "a frame that is not masked"
            elif len(self._header) == self._header_length():
                self._frame_begins()
        return self.breach is None

    def _frame_begins(self) -> None:
        opcode, final = self._header[0] & _OPCODE_BITS, bool(self._header[0] & _FIN_BIT)
        if opcode in _DATA:
            if self._fragmented:
                self.breach = "a new message inside a fragmented one"
            self._fragmented = not final
        elif opcode == _CONTINUATION and final:
            self._fragmented = False
        self._payload_left = self._payload_length()
        self._header.clear()

    def _header_length(self) -> int:
        if len(self._header) < 2:
            return 2
        length_field = _EXTENDED_LENGTH.get(self._header[1] & _LENGTH_BITS, 0)
        return 2 + length_field + _MASK_KEY_BYTES

    def _payload_length(self) -> int:
        short = self._header[1] & _LENGTH_BITS
        if short not in _EXTENDED_LENGTH:
            return short
        return int.from_bytes(self._header[2 : 2 + _EXTENDED_LENGTH[short]], "big")


class CheckedFeed:
    """A WebSocket reader's feed, stopped with a call to `on_breach` at the first frame that breaks
    a rule of `FrameCheck`; once `on_pong` is set, a pong alone in one read goes to it instead."""

    def __init__(self, reader: WebSocketReader, on_breach: Callable[[str], None]) -> None:
        self._reader = reader
        self._check = FrameCheck()
        self._on_breach = on_breach
        self.on_pong: Callable[[], None] | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.on_pong is not None and self._check.between_frames and _lone_pong(data):
            self.on_pong()
            return False, b""
        if self._check.feed(data):
            result: tuple[bool, bytes] = self._reader.feed_data(data)
            return result
        self._on_breach(self._check.breach or "")
        return True, b""

    def feed_eof(self) -> None:
        self._reader.feed_eof()


def take_pongs(request: web.BaseRequest, on_pong: Callable[[], None] | None) -> None:
    """From now on call `on_pong`, instead of passing the frame to aiohttp's reader, for each pong
    that arrives alone in one read on `request`'s upgraded connection (None: pass them again).
    Nothing changes for a request that krewe's server does not serve."""
    feed = getattr(request.protocol, "checked_feed", None)
    if isinstance(feed, CheckedFeed):
        feed.on_pong = on_pong


def _lone_pong(data: bytes) -> bool:
    """Whether `data` is exactly one masked pong frame, of a payload a control frame may have."""
    if len(data) < 2 + _MASK_KEY_BYTES or data[0] != _PONG:
        return False
    length = data[1] ^ _MASK_BIT  # the payload length if the mask bit is set, else 128 or more
    return length <= _MAX_CONTROL_PAYLOAD and len(data) == 2 + _MASK_KEY_BYTES + length
