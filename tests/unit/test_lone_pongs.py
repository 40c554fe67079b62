"""A pong that arrives alone in one read goes to the callback `take_pongs` set, not to the
WebSocket's reader; every other frame, and a pong in the company of other bytes, reaches the
reader as before."""

from collections.abc import AsyncIterator

import pytest
from aiohttp import WSMsgType, web

from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.frame_check import CheckedFeed, take_pongs
from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.server import make_runner
from tests.adversarial.wire import OPCODE_PING, OPCODE_PONG, OPCODE_TEXT, RawWebSocket, WireFrame
from tests.service.conftest import until

PONG = WireFrame(OPCODE_PONG, b"beat")
TEXT = WireFrame(OPCODE_TEXT, b'{"type":"status"}')


class _Reader:
    """What a WebSocket reader was fed."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.fed.append(data)
        return False, b""

    def feed_eof(self) -> None:
        raise AssertionError("not reached")


def checked(pongs: list[None]) -> tuple[CheckedFeed, _Reader]:
    reader = _Reader()
    feed = CheckedFeed(reader, on_breach=pytest.fail)  # type: ignore[arg-type]
    feed.on_pong = lambda: pongs.append(None)
    return feed, reader


def test_a_lone_pong_goes_to_the_callback_and_not_to_the_reader() -> None:
    pongs: list[None] = []
    feed, reader = checked(pongs)
    assert feed.feed_data(PONG.encode()) == (False, b"")
    assert feed.feed_data(WireFrame(OPCODE_PONG).encode()) == (False, b"")  # no payload
    assert (len(pongs), reader.fed) == (2, [])


@pytest.mark.parametrize(
    "data",
    [
        PONG.encode() + TEXT.encode(),  # with another frame in the same read
        PONG.encode()[:5],  # a pong cut short
        WireFrame(OPCODE_PING, b"beat").encode(),
        TEXT.encode(),
    ],
    ids=["pong-and-text", "partial-pong", "ping", "text"],
)
def test_any_other_read_goes_to_the_reader(data: bytes) -> None:
    pongs: list[None] = []
    feed, reader = checked(pongs)
    feed.feed_data(data)
    assert (pongs, reader.fed) == ([], [data])


def test_bytes_like_a_pong_inside_a_frame_go_to_the_reader() -> None:
    pongs: list[None] = []
    feed, reader = checked(pongs)
    inner = PONG.encode()
    frame = WireFrame(OPCODE_TEXT, b"0123" + inner).encode(mask_key=bytes(4))  # payload as it is
    head = frame[: len(frame) - len(inner)]
    tail = frame[len(head) :]
    assert tail == inner
    feed.feed_data(head)
    feed.feed_data(tail)
    assert (pongs, reader.fed) == ([], [head, tail])


def test_an_unmasked_pong_is_a_breach() -> None:
    breaches: list[str] = []
    reader = _Reader()
    feed = CheckedFeed(reader, on_breach=breaches.append)  # type: ignore[arg-type]
    feed.on_pong = lambda: pytest.fail("an unmasked pong was taken")
    assert feed.feed_data(WireFrame(OPCODE_PONG, b"beat", masked=False).encode()) == (True, b"")
    assert breaches == ["a frame that is not masked"]


class _Endpoint:
    """A WebSocket route that takes its pongs once `take` is set, and lists the frames it receives."""

    def __init__(self) -> None:
        self.pongs = 0
        self.received: list[WSMsgType] = []

    def heard(self) -> None:
        self.pongs += 1

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        take_pongs(request, self.heard)
        async for frame in ws:
            self.received.append(frame.type)
            if frame.type is WSMsgType.TEXT and frame.data == "pass pongs":
                take_pongs(request, None)
        return ws


@pytest.fixture
async def served() -> AsyncIterator[tuple[_Endpoint, int]]:
    endpoint = _Endpoint()
    app = web.Application()
    app.router.add_get("/ws", endpoint.handle)
    runner = make_runner(app, OrchestratorSettings(), Metrics())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield endpoint, runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_a_real_connection_hands_lone_pongs_to_the_callback(served: tuple[_Endpoint, int]) -> None:
    endpoint, port = served
    client = await RawWebSocket.open("127.0.0.1", port, "/ws")
    try:
        await client.send(PONG)
        await until(lambda: endpoint.pongs == 1, what="the pong to reach the callback")
        await client.send(TEXT)
        await until(lambda: endpoint.received == [WSMsgType.TEXT], what="the text frame")
        await client.send(WireFrame(OPCODE_TEXT, b"pass pongs"))
        await until(lambda: len(endpoint.received) == 2, what="the second text frame")
        await client.send(PONG)
        await until(lambda: len(endpoint.received) == 3, what="the pong to reach the reader")
        assert endpoint.received[2] is WSMsgType.PONG and endpoint.pongs == 1
    finally:
        await client.close()
