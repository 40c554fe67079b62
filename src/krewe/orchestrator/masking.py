"""Every frame a WebSocket client sends must be masked (RFC 6455 §5.1); this finds one that is not.

A sans-I/O scanner of the client's byte stream: it reads each frame's header (the mask bit, the
payload length) and skips the payload, so it costs a few operations per frame whatever the frame's
size. aiohttp's reader decodes unmasked frames as if they were masked, so the server feeds the
stream through this first (`krewe.orchestrator.server`) and fails the connection with 1002 at the
first unmasked frame.
"""

__all__ = ["MaskScanner"]

_MASK_BIT = 0x80
_LENGTH_BITS = 0x7F
_EXTENDED_LENGTH = {126: 2, 127: 8}  # a 7-bit length of 126 or 127 announces a longer length field
_MASK_KEY_BYTES = 4


class MaskScanner:
    """Fed a client's bytes in order; says whether every frame so far was masked."""

    def __init__(self) -> None:
        self._header = bytearray()  # the current frame's header, as far as it has arrived
        self._payload_left = 0  # bytes of the current frame's payload still to skip
        self.unmasked = False  # once True, it stays True: the connection is to be failed

    def feed(self, data: bytes) -> bool:
        """Scan `data`; False once any frame header seen so far lacks the mask bit."""
        position, end = 0, len(data)
        while position < end and not self.unmasked:
            if self._payload_left:
                skipped = min(self._payload_left, end - position)
                self._payload_left -= skipped
                position += skipped
                continue
            wanted = self._header_length() - len(self._header)
            self._header += data[position : position + wanted]
            position += min(wanted, end - position)
            if len(self._header) >= 2 and not self._header[1] & _MASK_BIT:
                self.unmasked = True
            elif len(self._header) == self._header_length():
                self._payload_left = self._payload_length()
                self._header.clear()
        return not self.unmasked

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
