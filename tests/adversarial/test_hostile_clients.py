"""HTTP clients that break the rules: every request gets a documented answer in the error envelope,
and connections that hold the server without finishing a request are dropped in bounded time."""

import asyncio
import logging
import time
from typing import Any

import aiohttp
import pytest

from tests.adversarial.wire import RawWebSocket, http_exchange, read_http_answer
from tests.service.conftest import Harness, until

HOST = "127.0.0.1"
POST_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/jobs")


def assert_envelope(answer: Any, status: int, code: str) -> None:
    assert answer is not None, "the connection closed without an answer"
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    error = answer.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)


async def healthz(harness: Harness) -> int:
    async with aiohttp.ClientSession() as http, http.get(harness.url + "/healthz") as response:
        return response.status


POST_JOBS = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
MALFORMED = {
    "header_without_colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nnot a header\r\n\r\n",
    "method_with_a_bad_character": b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls_hello_on_the_plain_port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "content_length_not_a_number": POST_JOBS + b"Content-Length: abc\r\n\r\n",
    "two_content_lengths": POST_JOBS + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "chunked_and_content_length": (POST_JOBS + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}"),
    "request_line_too_long": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header_too_long": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n",
    "too_many_headers": b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: 1\r\n" * 200 + b"\r\n",
    "http_version_1_2": b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n",
    "control_character_in_the_path": b"GET /heal\x01thz HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_chunk_size": POST_JOBS + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_a_request_the_http_parser_refuses_gets_400_in_the_envelope(
    harness: Harness, name: str
) -> None:
    answer = await http_exchange(HOST, harness.orchestrator.port, MALFORMED[name], timeout_s=10)
    assert answer is not None
    assert answer.status == 400, (answer.status, answer.body)
    assert answer.json()["error"]["code"] in ("invalid_request", "invalid_body")
    assert_envelope(answer, 400, answer.json()["error"]["code"])
    assert await healthz(harness) == 200


@pytest.mark.parametrize("version", ["0.9", "2.0"])
async def test_a_request_of_http_0_9_or_2_0_in_http_1_syntax_gets_505(harness: Harness, version: str) -> None:
    request = f"GET /healthz HTTP/{version}\r\nHost: x\r\n\r\n".encode()
    answer = await http_exchange(HOST, harness.orchestrator.port, request, timeout_s=10)
    assert_envelope(answer, 505, "http_version_not_supported")


async def test_a_wrong_method_gets_405_with_allow_in_the_envelope(harness: Harness) -> None:
    request = b"DELETE /v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await http_exchange(HOST, harness.orchestrator.port, request, timeout_s=10)
    assert_envelope(answer, 405, "method_not_allowed")
    assert answer is not None and answer.headers["allow"] == "POST"


@pytest.mark.parametrize("version", ["8", "7", "12", "14", "", "13, 8"])
async def test_a_websocket_upgrade_of_another_version_than_13_gets_426(
    harness: Harness, version: str
) -> None:
    header = f"Sec-WebSocket-Version: {version}\r\n" if version else ""
    request = (
        "GET /v1/workers/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{header}\r\n"
    ).encode()
    answer = await http_exchange(HOST, harness.orchestrator.port, request, timeout_s=10)
    assert_envelope(answer, 426, "upgrade_required")
    assert answer is not None and answer.headers["sec-websocket-version"] == "13"
    ws = await RawWebSocket.open(HOST, harness.orchestrator.port, version="13")
    assert ws.handshake.status == 101
    await ws.close()


@pytest.mark.parametrize("path", POST_PATHS)
@pytest.mark.parametrize("depth", [65, 66, 200, 1023])
async def test_bodies_nested_65_to_1023_deep_get_400_on_every_post_endpoint(
    harness: Harness, path: str, depth: int
) -> None:
    miners = await harness.connected("honest", "honest", "honest")
    body = b'{"model":"test-model","task":"chat","input":{},"messages":[],"prompt":"x","x":'
    body += b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    answer = await http_exchange(HOST, harness.orchestrator.port, request, timeout_s=10)
    assert_envelope(answer, 400, "invalid_json")
    assert all(miner.jobs == [] for miner in miners)


async def test_half_sent_requests_are_dropped_within_the_header_timeout_while_others_are_served(
    make_harness: Any,
) -> None:
    harness = await make_harness(http_header_timeout_s=1.0)
    port = harness.orchestrator.port
    opened = [await asyncio.open_connection(HOST, port) for _ in range(60)]
    for index, (_, writer) in enumerate(opened):
        if index < 50:  # request line and a header, never the blank line that ends them
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # the other 10 send nothing at all

    async def trickle(writer: asyncio.StreamWriter) -> None:
        """One byte of a header every 0.2 s: each arrives well within the timeout, the whole never."""
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(100):
            await asyncio.sleep(0.2)  # the slow client under test, not synchronisation
            if writer.is_closing():
                return
            writer.write(b"x")

    trickled = [await asyncio.open_connection(HOST, port) for _ in range(5)]
    trickling = [asyncio.ensure_future(trickle(writer)) for _, writer in trickled]
    started = time.monotonic()
    assert await healthz(harness) == 200  # served while 65 connections hang on
    endings = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in opened + trickled)), 10)
    elapsed = time.monotonic() - started
    assert endings == [b""] * 65  # closed by the server, with no response
    assert elapsed < 1.0 + 4.0, f"dropped after {elapsed:.1f} s; the timeout is 1 s"
    for task in trickling:
        task.cancel()
    for _, writer in opened + trickled:
        writer.close()
    assert await healthz(harness) == 200


async def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout(make_harness: Any) -> None:
    harness = await make_harness(http_header_timeout_s=0.5)
    reader, writer = await asyncio.open_connection(HOST, harness.orchestrator.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_http_answer(reader, timeout_s=10)
    assert answer is not None and answer.status == 200
    assert await asyncio.wait_for(reader.read(), timeout=10) == b""
    writer.close()


async def test_connections_past_max_connections_get_503_and_later_ones_are_served(make_harness: Any) -> None:
    harness = await make_harness(max_connections=4)
    port = harness.orchestrator.port
    held = [await asyncio.open_connection(HOST, port) for _ in range(4)]
    await until(lambda: len(harness.orchestrator.runner.server.connections) == 4, what="4 connections")
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await http_exchange(HOST, port, request, timeout_s=10)
    assert_envelope(answer, 503, "too_many_connections")
    for _, writer in held:
        writer.close()
    await until(lambda: not harness.orchestrator.runner.server.connections, what="the connections to close")
    answer = await http_exchange(HOST, port, request, timeout_s=10)
    assert answer is not None and answer.status == 200


async def test_a_body_that_stops_arriving_gets_408(make_harness: Any) -> None:
    harness = await make_harness(http_body_timeout_s=0.5)
    port = harness.orchestrator.port
    for path in POST_PATHS:
        request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode() + b'{"model":'
        started = time.monotonic()
        answer = await http_exchange(HOST, port, request, timeout_s=10)
        assert_envelope(answer, 408, "request_timeout")
        assert time.monotonic() - started < 0.5 + 4.0
    chunked = POST_JOBS + b"Transfer-Encoding: chunked\r\n\r\n"
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(chunked)
    await writer.drain()
    writer.write(b"zz\r\n{}\r\n0\r\n\r\n")  # a chunk size that is not hexadecimal
    answer = await read_http_answer(reader, timeout_s=10)
    # Refused by the parser when the chunk arrives with the head; else the body never arrives.
    assert answer is not None and answer.status in (400, 408)
    assert_envelope(answer, answer.status, {400: "invalid_request", 408: "request_timeout"}[answer.status])
    writer.close()


async def test_a_body_cut_short_or_undecodable_is_no_server_error(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    port = harness.orchestrator.port
    cut = POST_JOBS + b"Content-Length: 100\r\n\r\n" + b'{"model":'
    assert await http_exchange(HOST, port, cut, timeout_s=10, half_close=True) is None
    gzip = POST_JOBS + b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello"
    assert_envelope(await http_exchange(HOST, port, gzip, timeout_s=10), 400, "invalid_body")
    assert await healthz(harness) == 200
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
