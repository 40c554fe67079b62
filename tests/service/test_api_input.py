"""Hostile and malformed request bodies over real HTTP: each is a 4xx in the error envelope, never
a 500, and nothing that is refused reaches a miner."""

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from krewe.protocol.canonical import MAX_DEPTH
from tests.service.conftest import Harness, until
from tests.service.test_jobs import CHAT, post

POST_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/jobs")


def nested_list(depth: int) -> str:
    """JSON text of a list nested `depth` deep."""
    return "[" * depth + "]" * depth


def body_of_depth(path: str, depth: int) -> bytes:
    """A body for `path`, valid but for its nesting, `depth` deep counting the body itself."""
    if path == "/v1/jobs":  # body > input > x > the list
        return f'{{"model":"test-model","task":"chat","input":{{"x":{nested_list(depth - 2)}}}}}'.encode()
    field = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/embeddings": "input"}[path]
    return f'{{"model":"test-model","{field}":"hi","extra":{nested_list(depth - 1)}}}'.encode()


async def post_raw(harness: Harness, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(harness.url + path, data=body, headers={"Content-Type": "application/json"}) as response,
    ):
        return response.status, await response.json()


def assert_envelope(body: dict[str, Any], code: str) -> str:
    error = body["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", body
    message: str = error["message"]
    return message


@pytest.mark.parametrize("path", POST_PATHS)
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 5000])
async def test_nesting_deeper_than_the_limit_is_refused_before_any_miner_sees_it(
    harness: Harness, path: str, depth: int
) -> None:
    miners = await harness.connected("honest", "honest", "honest")
    status, body = await post_raw(harness, path, body_of_depth(path, depth))
    assert status == 400
    assert f"nesting deeper than {MAX_DEPTH}" in assert_envelope(body, "invalid_json")
    assert all(miner.jobs == [] for miner in miners)


async def test_nesting_at_the_limit_and_brackets_in_strings_are_served(harness: Harness) -> None:
    miners = await harness.connected("honest", "honest", "honest")
    status, record = await post_raw(harness, "/v1/jobs", body_of_depth("/v1/jobs", MAX_DEPTH))
    assert (status, record["verdict"]) == (200, "agreed")
    job = next(frame for miner in miners for frame in miner.received if frame["type"] == "job")
    assert orjson.dumps(job["input"]).count(b"[") == MAX_DEPTH - 2
    brackets = {"role": "user", "content": "[" * 1000 + "{" * 1000}
    status, reply = await post(harness, "/v1/chat/completions", {**CHAT, "messages": [brackets]})
    assert status == 200, reply


@pytest.mark.parametrize("declared", [1001, 10**12])
async def test_a_declared_length_over_the_limit_gets_413_before_the_body_is_sent(
    make_harness: Any, declared: int
) -> None:
    harness = await make_harness(max_body_bytes=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", harness.orchestrator.port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {declared}\r\n\r\n".encode()
        )
        await writer.drain()
        # Only the headers were sent: a server that waited for the body would never answer.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        status_line, *header_lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in header_lines if line)
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout=10)
    finally:
        writer.close()
    assert status_line.split()[1] == "413"
    assert headers["connection"] == "close" and headers["content-type"].startswith("application/json")
    assert "1000 bytes" in assert_envelope(orjson.loads(body), "request_too_large")


async def test_a_chunked_body_gets_413_once_it_passes_the_limit(make_harness: Any) -> None:
    harness = await make_harness(max_body_bytes=1000)

    async def chunks() -> Any:
        yield b'{"model": "test-model", "pad": "'
        for _ in range(4):
            yield b"x" * 500
        yield b'"}'

    async with (
        aiohttp.ClientSession() as http,
        http.post(harness.url + "/v1/chat/completions", data=chunks()) as response,
    ):
        assert response.status == 413
        assert_envelope(await response.json(), "request_too_large")


CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH, JOBS_PATH = POST_PATHS
HUGE = "1" + "0" * 30  # an integer beyond 64 bits
MODEL = '"model": "test-model", '
JOB = MODEL + '"task": "chat", "input": {}'


@pytest.mark.parametrize(
    ("path", "fields", "code", "message"),
    [
        (
            CHAT_PATH,
            MODEL + '"messages": ["hi"]',
            "invalid_field",
            "'messages' must be a list of message objects",
        ),
        (
            CHAT_PATH,
            MODEL + '"messages": [[{"role": "user"}]]',
            "invalid_field",
            "'messages' must be a list of",
        ),
        (CHAT_PATH, MODEL + '"messages": {"role": "user"}', "invalid_field", "'messages' must be a list of"),
        (
            CHAT_PATH,
            MODEL + '"messages": [], "stream": "yes"',
            "invalid_field",
            "'stream' must be true or false",
        ),
        (CHAT_PATH, MODEL + '"messages": [], "stream": 1', "invalid_field", "'stream' must be true or false"),
        (CHAT_PATH, MODEL + f'"messages": [], "n": {HUGE}', "invalid_field", "'n' must be an integer"),
        (CHAT_PATH, MODEL + '"messages": [], "n": 1.5', "invalid_field", "'n' must be an integer"),
        (CHAT_PATH, MODEL + '"messages": [], "n": true', "invalid_field", "'n' must be an integer"),
        (CHAT_PATH, MODEL + '"messages": [], "n": 1e400', "invalid_json", "not valid JSON"),
        (
            COMPLETIONS_PATH,
            MODEL + '"prompt": [["a"]]',
            "invalid_field",
            "'prompt' must be a string, a list of",
        ),
        (COMPLETIONS_PATH, MODEL + '"prompt": [1.5]', "invalid_field", "'prompt' must be"),
        (COMPLETIONS_PATH, MODEL + '"prompt": [true, false]', "invalid_field", "'prompt' must be"),
        (COMPLETIONS_PATH, MODEL + '"prompt": [[1, "a"]]', "invalid_field", "'prompt' must be"),
        (COMPLETIONS_PATH, MODEL + '"prompt": {"text": "hi"}', "invalid_field", "'prompt' must be"),
        (
            EMBEDDINGS_PATH,
            MODEL + '"input": [[["x"]]]',
            "invalid_field",
            "'input' must be a string, a list of",
        ),
        (EMBEDDINGS_PATH, MODEL + '"input": [[[1]]]', "invalid_field", "'input' must be"),
        (EMBEDDINGS_PATH, MODEL + '"input": ["a", 1]', "invalid_field", "'input' must be"),
        (EMBEDDINGS_PATH, MODEL + '"input": [{"text": "x"}]', "invalid_field", "'input' must be"),
        (
            EMBEDDINGS_PATH,
            MODEL + '"input": "x", "encoding_format": ["float"]',
            "invalid_field",
            "'float' or 'base64'",
        ),
        (JOBS_PATH, f'{JOB}, "timeout_ms": {HUGE}', "invalid_field", "'timeout_ms' must be an integer"),
        (JOBS_PATH, f'{JOB}, "timeout_ms": {2**64 - 1}', "invalid_timeout", "timeout_ms must be between"),
        (JOBS_PATH, f'{JOB}, "replicas": {HUGE}', "invalid_field", "'replicas' must be an integer"),
        (JOBS_PATH, f'{JOB}, "replicas": 3.0', "invalid_field", "'replicas' must be an integer"),
        (JOBS_PATH, f'{JOB}, "replicas": true', "invalid_field", "'replicas' must be an integer"),
        (JOBS_PATH, f'{JOB}, "threshold": "2"', "invalid_field", "'threshold' must be an integer"),
        (
            JOBS_PATH,
            '"model": "test-model", "task": 5, "input": {}',
            "invalid_field",
            "'task' must be one of",
        ),
        (
            JOBS_PATH,
            '"model": ["test-model"], "task": "chat", "input": {}',
            "invalid_field",
            "'model' must be",
        ),
        (
            JOBS_PATH,
            '"model": "test-model", "task": "chat", "input": [{}]',
            "invalid_field",
            "'input' must be",
        ),
        (
            JOBS_PATH,
            '"model": "test-model", "task": "chat", "input": null',
            "missing_field",
            "'input' is required",
        ),
    ],
)
async def test_fields_of_the_wrong_type_get_400_with_a_clear_message(
    harness: Harness, path: str, fields: str, code: str, message: str
) -> None:
    miners = await harness.connected("honest", "honest", "honest")  # anything let through would be served
    status, reply = await post_raw(harness, path, b"{" + fields.encode() + b"}")
    assert status == 400
    assert message in assert_envelope(reply, code)
    assert all(miner.jobs == [] for miner in miners)


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        (CHAT_PATH, {"messages": [{"role": "user", "content": "hi"}], "stream": False, "n": 1}),
        (COMPLETIONS_PATH, {"prompt": ["a", "b"]}),
        (COMPLETIONS_PATH, {"prompt": [1, 2, 3]}),
        (COMPLETIONS_PATH, {"prompt": [[1, 2], [3]]}),
        (EMBEDDINGS_PATH, {"input": []}),
        (EMBEDDINGS_PATH, {"input": [[1, 2], []]}),
        (JOBS_PATH, {"task": "chat", "input": {}, "replicas": 3, "threshold": 2, "timeout_ms": 5000}),
    ],
)
async def test_every_documented_shape_of_a_field_is_served(
    harness: Harness, path: str, fields: dict[str, Any]
) -> None:
    await harness.connected("honest", "honest", "honest")
    status, body = await post(harness, path, {"model": "test-model", **fields})
    assert status == 200, body


@pytest.mark.parametrize(
    ("path", "request_fields", "output", "field"),
    [
        (CHAT_PATH, {"messages": [], "stream": True}, {"choices": [], "usage": {}}, "choices"),
        (
            CHAT_PATH,
            {"messages": [], "stream": True},
            {"choices": [{"message": "hi"}], "usage": {}},
            "choices",
        ),
        (
            CHAT_PATH,
            {"messages": []},
            {"choices": [{"message": {}}], "usage": {"prompt_tokens": "3"}},
            "usage",
        ),
        (COMPLETIONS_PATH, {"prompt": "hi"}, {"choices": "abc", "usage": {}}, "choices"),
        (EMBEDDINGS_PATH, {"input": "hi"}, {"data": ["x"], "usage": {}}, "data"),
        (
            EMBEDDINGS_PATH,
            {"input": "hi", "encoding_format": "base64"},
            {"data": [{"embedding": [1e39]}], "usage": {}},
            "embedding",
        ),
    ],
)
async def test_an_agreed_output_the_response_cannot_be_made_from_is_502(
    harness: Harness, path: str, request_fields: dict[str, Any], output: dict[str, Any], field: str
) -> None:
    miners = await harness.connected("silent", "silent", "silent")
    reply = asyncio.ensure_future(post(harness, path, {"model": "test-model", **request_fields}))
    await until(lambda: all(miner.jobs for miner in miners), what="the job to reach every miner")
    for miner in miners:
        await miner.send({"type": "result", "job_id": miner.jobs[0], "output": output})
    status, body = await reply
    assert status == 502
    assert body["error"]["code"] == "invalid_output" and f"'{field}'" in body["error"]["message"]
