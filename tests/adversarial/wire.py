"""Raw HTTP/1.1 and WebSocket clients over asyncio streams, for bytes no well-behaved client sends:
malformed request lines and headers, partial requests, unmasked frames, reserved opcodes.

Every read is bounded in time; a server that does not answer within the bound raises `HangError`.
"""

import asyncio
import base64
import contextlib
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "OPCODE_BINARY",
    "OPCODE_CLOSE",
    "OPCODE_CONTINUATION",
    "OPCODE_PING",
    "OPCODE_PONG",
    "OPCODE_TEXT",
    "HangError",
    "HttpAnswer",
    "RawWebSocket",
    "ServerFrame",
    "WireFrame",
    "http_exchange",
    "read_http_answer",
]

OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY = 0x0, 0x1, 0x2
OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x8, 0x9, 0xA
SERVER_OPCODES = (OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG)
MAX_HEAD_BYTES = 65_536


class HangError(Exception):
    """The server neither answered nor closed the connection within the bound."""


class GarbageError(Exception):
    """The server sent bytes that are not what the protocol allows at that point."""


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_http_answer(
    reader: asyncio.StreamReader, *, head_only_body: bool = False, timeout_s: float
) -> HttpAnswer | None:
    """One response from `reader`, or None when the server closed without one."""
    try:
        async with asyncio.timeout(timeout_s):
            answer = await _read_answer(reader, head_only_body)
            while answer is not None and 100 <= answer.status < 200 and answer.status != 101:
                answer = await _read_answer(reader, head_only_body)  # past interim answers (100 Continue)
    except TimeoutError:
        raise HangError(f"no complete response within {timeout_s} s") from None
    return answer


async def _read_answer(reader: asyncio.StreamReader, head_only_body: bool) -> HttpAnswer | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as partial:
        if partial.partial:
            message = f"the connection closed inside a response head: {partial.partial!r}"
            raise GarbageError(message) from None
        return None
    except asyncio.LimitOverrunError:
        raise GarbageError("a response head over the stream limit") from None
    except ConnectionError:  # reset, or a broken pipe: a write after the server closed
        return None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
    version, _, rest = status_line.partition(" ")
    status_text = rest.split(" ", 1)[0]
    if not version.startswith("HTTP/1.") or not status_text.isdigit():
        raise GarbageError(f"not an HTTP/1.x status line: {status_line!r}")
    status = int(status_text)
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        body = await _read_body(reader, headers, status, head_only_body)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError) as error:
        raise GarbageError(f"a response body cut short or mis-framed: {error!r}") from None
    return HttpAnswer(status, headers, body)


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], status: int, head_only: bool
) -> bytes:
    if head_only or status in (101, 204, 304) or 100 <= status < 200:
        return b""
    if headers.get("content-type", "").startswith("text/event-stream"):
        return b""  # a stream: its head is the answer
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(body)
            body += await reader.readexactly(size + 2)
            del body[-2:]
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


async def http_exchange(
    host: str, port: int, request: bytes, *, timeout_s: float, half_close: bool = False, head: bool = False
) -> HttpAnswer | None:
    """Send `request` as it is on a new connection and read one response (None: closed unanswered).
    `half_close` shuts the sending side after the request, as a client whose request ends there."""
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD_BYTES)
    try:
        try:
            writer.write(request)
            await writer.drain()
            if half_close:
                writer.write_eof()
        except ConnectionError:
            pass  # the server may answer and close before it read everything
        return await read_http_answer(reader, head_only_body=head, timeout_s=timeout_s)
    finally:
        writer.close()


@dataclass(frozen=True)
class WireFrame:
    """A frame as a client puts it on the wire, flaws included."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    masked: bool = True
    rsv: int = 0  # the three reserved bits, as a number 0-7

    def encode(self, mask_key: bytes = b"\x37\xfa\x21\x3d") -> bytes:
        first = (0x80 if self.fin else 0) | (self.rsv & 0x7) << 4 | (self.opcode & 0xF)
        length = len(self.payload)
        mask_bit = 0x80 if self.masked else 0
        if length < 126:
            head = struct.pack("!BB", first, mask_bit | length)
        elif length < 1 << 16:
            head = struct.pack("!BBH", first, mask_bit | 126, length)
        else:
            head = struct.pack("!BBQ", first, mask_bit | 127, length)
        if not self.masked:
            return head + self.payload
        key = (mask_key * (length // 4 + 1))[:length]
        masked = (int.from_bytes(self.payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
        return head + mask_key + masked


@dataclass(frozen=True)
class ServerFrame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None

    def json(self) -> Any:
        return orjson.loads(self.payload)


@dataclass
class RawWebSocket:
    """A WebSocket client that sends any frame and reports every frame it receives."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    handshake: HttpAnswer
    received: list[ServerFrame] = field(default_factory=list)
    reset: bool = False  # the connection ended with a reset, not a close

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        path: str = "/v1/workers/connect",
        *,
        version: str = "13",
        timeout_s: float = 10.0,
    ) -> "RawWebSocket":
        """Connect and upgrade; raises GarbageError when the server answers anything but 101."""
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD_BYTES)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        )
        writer.write(request.encode())
        answer = await read_http_answer(reader, head_only_body=True, timeout_s=timeout_s)
        if answer is None or answer.status != 101:
            writer.close()
            raise GarbageError(f"the upgrade was answered {answer and answer.status}")
        return cls(reader, writer, answer)

    async def send(self, *frames: WireFrame) -> None:
        try:
            self.writer.write(b"".join(frame.encode() for frame in frames))
            await self.writer.drain()
        except ConnectionError:
            pass  # the server failed the connection; what it sent first is still read

    async def send_text(self, value: Any) -> None:
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        await self.send(WireFrame(OPCODE_TEXT, text.encode()))

    async def receive(self, timeout_s: float) -> ServerFrame | None:
        """The next frame from the server (None: the connection ended)."""
        try:
            async with asyncio.timeout(timeout_s):
                head = await self.reader.readexactly(2)
                length = head[1] & 0x7F
                if head[1] & 0x80:
                    raise GarbageError("the server masked a frame")
                if length == 126:
                    length = struct.unpack("!H", await self.reader.readexactly(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
                payload = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return None
        except ConnectionError:  # reset, or a broken pipe: a write after the server closed
            self.reset = True
            return None
        except TimeoutError:
            raise HangError(f"no frame within {timeout_s} s") from None
        opcode = head[0] & 0x0F
        if opcode not in SERVER_OPCODES or not head[0] & 0x80:
            raise GarbageError(f"not a frame a server sends: {head!r}")
        frame = ServerFrame(opcode, payload)
        self.received.append(frame)
        return frame

    async def message(self, timeout_s: float) -> ServerFrame | None:
        """The next text or close frame, or pong; the server's pings are answered on the way."""
        while True:
            frame = await self.receive(timeout_s)
            if frame is None or frame.opcode != OPCODE_PING:
                return frame
            await self.send(WireFrame(OPCODE_PONG, frame.payload))

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(self.writer.wait_closed(), timeout=5)
