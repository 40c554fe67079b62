"""A session's socket writes each frame itself: the same bytes aiohttp's writer would, and a miner
that leaves too much unread is disconnected rather than let the orchestrator's buffer grow."""

import asyncio
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp._websocket.writer import WebSocketWriter
from aiohttp.base_protocol import BaseProtocol

from krewe.orchestrator.endpoint import _Socket, text_frame_header


class _Transport(asyncio.Transport):
    """A stand-in for the connection: keeps what was written, and reports it all as unread."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.aborted = False

    def write(self, data: Any) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return len(self.written)

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
async def test_a_frame_is_the_bytes_aiohttps_writer_makes(length: int) -> None:
    payload = bytes(range(48, 58)) * (length // 10) + b"x" * (length % 10)
    theirs = _Transport()
    writer = WebSocketWriter(BaseProtocol(asyncio.get_running_loop()), theirs)
    await writer.send_frame(payload, WSMsgType.TEXT)
    assert text_frame_header(length) + payload == bytes(theirs.written)

    ours = _Transport()
    assert _Socket(web.WebSocketResponse(), ours, largest_frame=1 << 20).send(payload.decode())
    assert bytes(ours.written) == bytes(theirs.written)


async def test_a_miner_that_leaves_too_much_unread_is_disconnected() -> None:
    transport = _Transport()
    socket = _Socket(web.WebSocketResponse(), transport, largest_frame=250)  # 4 frames: 1,000 bytes
    assert socket.send("x" * 400) and socket.send("x" * 400)  # 808 bytes wait: within the limit
    assert not transport.aborted
    assert not socket.send("x" * 400)  # 1,212 bytes would wait
    assert transport.aborted
    assert not socket.send("{}")  # the connection is gone
    assert len(transport.written) == 1212


async def test_a_miner_may_leave_a_frame_unread_per_job_it_takes_at_once() -> None:
    transport = _Transport()
    socket = _Socket(web.WebSocketResponse(), transport, largest_frame=250)
    socket.capacity = 2  # 6 frames: 1,500 bytes
    assert all(socket.send("x" * 400) for _ in range(3))  # 1,212 bytes
    assert not transport.aborted
    assert not socket.send("x" * 400)  # 1,616 bytes
    assert transport.aborted


async def test_nothing_is_written_to_a_closed_connection() -> None:
    assert not _Socket(web.WebSocketResponse(), None, largest_frame=250).send("{}")
