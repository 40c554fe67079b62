"""Miners that break the protocol below and inside the login: each gets its documented error and
close code, nothing they say reaches the log unescaped, and the orchestrator keeps serving."""

import json
import logging
from typing import Any

import aiohttp
import pytest

from krewe.keys import SigningKey
from krewe.miner.agent import login_message
from krewe.protocol.messages import Challenge, CloseCode
from tests.adversarial.wire import (
    OPCODE_CLOSE,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    RawWebSocket,
    ServerFrame,
    WireFrame,
)
from tests.service.conftest import Harness, until
from tests.support.scripted_miner import default_offers

HOST = "127.0.0.1"


async def raw_miner(harness: Harness) -> tuple[RawWebSocket, dict[str, Any]]:
    """A raw WebSocket to the orchestrator, and the challenge it was sent."""
    ws = await RawWebSocket.open(HOST, harness.orchestrator.port)
    challenge = await ws.message(timeout_s=10)
    assert challenge is not None and challenge.opcode == OPCODE_TEXT
    return ws, challenge.json()


def auth_frame(harness: Harness, challenge: dict[str, Any], index: int = 0, **fields: Any) -> dict[str, Any]:
    """A genuine auth frame of staked miner `index`, with `fields` replaced."""
    key = harness.miner(index).key
    signer = SigningKey.from_hex(key)
    text = login_message(Challenge(**{k: v for k, v in challenge.items() if k != "type"}), signer.address)
    frame = {
        "type": "auth",
        "message": text,
        "signature": signer.sign_message(text),
        "models": [{"id": o.id, "tasks": list(o.tasks), "engine": o.engine} for o in default_offers()],
        "max_concurrency": 4,
        "agent": "raw/1",
    }
    return frame | fields


async def until_closed(ws: RawWebSocket) -> list[ServerFrame]:
    """Every frame up to the server's close frame (bounded); answers the close as a client does."""
    frames = []
    while (frame := await ws.message(timeout_s=10)) is not None:
        frames.append(frame)
        if frame.opcode == OPCODE_CLOSE:
            await ws.send(WireFrame(OPCODE_CLOSE, frame.payload[:2]))
            break
    await ws.close()
    return frames


async def workers(harness: Harness) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(harness.url + "/v1/workers") as response:
        return response.status, await response.json()


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_frame_nested_100000_deep_right_after_the_challenge_is_refused_with_4400(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    ws, _ = await raw_miner(harness)
    await ws.send_text('{"type":"result","job_id":"x","output":' + "[" * 100_000 + "]" * 100_000 + "}")
    error, close = await until_closed(ws)  # frames, never HTTP bytes, in the WebSocket stream
    assert error.json()["code"] == "bad_message" and "nesting deeper than 65" in error.json()["message"]
    assert (close.opcode, close.close_code) == (OPCODE_CLOSE, CloseCode.BAD_MESSAGE)
    assert not errors_logged(caplog)
    assert (await workers(harness))[0] == 200


@pytest.mark.parametrize("value", [2**64, 2**64 - 1, 2**63, 1025, 0, -1, 1.5, "8", True, None, [8]])
async def test_max_concurrency_out_of_bounds_is_refused_and_the_workers_listing_stays_whole(
    harness: Harness, value: Any
) -> None:
    (honest,) = await harness.connected("honest")
    ws, challenge = await raw_miner(harness)
    await ws.send_text(json.dumps(auth_frame(harness, challenge, 1, max_concurrency=value)))
    error, close = await until_closed(ws)
    assert (error.json()["code"], close.close_code) == ("bad_message", CloseCode.BAD_MESSAGE)
    status_frame = {"type": "status", "models": honest.auth["models"], "max_concurrency": value}
    await honest.send(json.dumps(status_frame))
    await until(lambda: bool(honest.messages("error")), what="the status to be refused")
    status, listing = await workers(harness)
    assert status == 200
    assert [(w["worker"], w["max_concurrency"]) for w in listing["data"]] == [(honest.address, 8)]


async def test_what_a_miner_says_reaches_the_log_escaped(
    make_harness: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="krewe")
    harness = await make_harness(max_violations=2)
    forged = "scripted/1\nINFO krewe.orchestrator.endpoint: miner 0x0000 logged in\x1b[2J\r\u2028"
    miner = await harness.miner(0).__aenter__()
    reply = await miner.connect(auth=lambda frame: frame | {"agent": forged})
    assert reply["type"] == "welcome"
    await miner.send({"type": "reject", "job_id": "x", "reason": "busy\nINFO forged line\x1b[31m"})
    await miner.send('{"type":"result","job_id":"y\\n\\u001b[2J","output":{"a":1,"a":2}}')
    await miner.send({"type": "gossip\n\x1b[31m"})
    await until(lambda: miner.close_code is not None, what="the session to close at the limit")
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("krewe")]
    assert any("scripted/1\\nINFO" in message for message in messages)  # logged, escaped
    for message in messages:
        assert not set(message) & {"\n", "\r", "\x1b", "\u2028"}, message


async def test_an_unmasked_frame_fails_the_connection_with_1002_before_and_after_login(
    harness: Harness,
) -> None:
    ws, challenge = await raw_miner(harness)
    frame = auth_frame(harness, challenge)
    await ws.send(WireFrame(OPCODE_TEXT, str(frame).encode(), masked=False))
    (close,) = await until_closed(ws)
    assert (close.opcode, close.close_code) == (OPCODE_CLOSE, 1002)
    ws, challenge = await raw_miner(harness)
    await ws.send_text(auth_frame(harness, challenge))
    welcome = await ws.message(timeout_s=10)
    assert welcome is not None and welcome.json()["type"] == "welcome"
    await until(lambda: len(harness.orchestrator.pool.sessions) == 1, what="the session")
    await ws.send(WireFrame(OPCODE_TEXT, b'{"type":"reject","job_id":"x","reason":"busy"}', masked=False))
    (close,) = await until_closed(ws)
    assert (close.opcode, close.close_code) == (OPCODE_CLOSE, 1002)
    await until(lambda: not harness.orchestrator.pool.sessions, what="the session to end")
    assert (await workers(harness))[0] == 200


async def test_a_ping_before_login_is_answered_and_the_login_goes_on(harness: Harness) -> None:
    ws, challenge = await raw_miner(harness)
    await ws.send(WireFrame(OPCODE_PING, b"still there?"))
    pong = await ws.message(timeout_s=10)
    assert pong is not None and (pong.opcode, pong.payload) == (OPCODE_PONG, b"still there?")
    await ws.send_text(auth_frame(harness, challenge))
    welcome = await ws.message(timeout_s=10)
    assert welcome is not None and welcome.json()["type"] == "welcome"
    await ws.close()
