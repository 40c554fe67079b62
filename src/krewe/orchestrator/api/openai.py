"""OpenAI-compatible endpoints: chat completions, completions, embeddings, models.

A request is checked, run as one job by the router, and its agreed output reshaped into OpenAI's
response, with a `krewe` object that tells the verdict. `stream: true` is served as server-sent
events of the agreed answer once the verdict is in: nothing is final before that. An agreed
output that lacks what the response needs is 502 `invalid_output`, never a 500.
"""

import base64
import struct
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from krewe.orchestrator.api.body import (
    INTEGER,
    TEXT_OR_TOKENS,
    Check,
    is_boolean,
    is_integer,
    is_list_of_objects,
    is_string,
    is_text_or_tokens,
    optional,
    read_json,
    require,
)
from krewe.orchestrator.api.errors import ApiError, json_response
from krewe.orchestrator.api.services import SERVICES
from krewe.orchestrator.router import Decision

__all__ = ["ROUTES"]

NOT_FOR_MINERS = ("stream", "stream_options", "user", "n")  # what the orchestrator itself serves
ENCODINGS = ("float", "base64")
NUMBER_TYPES = {int, float}


async def chat(request: web.Request) -> web.StreamResponse:
    """OpenAI chat completions, agreed by several miners."""
    answer = await generate(request, "chat", "messages", is_list_of_objects, "a list of message objects")
    head = {"id": f"chatcmpl-{answer.job_id}", "created": int(time.time()), "model": answer.model}
    if not answer.stream:
        completion = {**head, "object": "chat.completion", "choices": answer.choices, "usage": answer.usage}
        return json_response({**completion, "krewe": answer.krewe})
    chunks: list[dict[str, Any]] = []
    for choice in answer.choices:
        index, content = choice.get("index", 0), choice["message"].get("content", "")
        pieces: tuple[dict[str, Any], ...] = (
            {"index": index, "delta": {"role": "assistant", "content": content}, "finish_reason": None},
            {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")},
        )
        chunks += [{**head, "object": "chat.completion.chunk", "choices": [piece]} for piece in pieces]
    chunks[-1] |= {"usage": answer.usage, "krewe": answer.krewe}
    return await server_sent_events(request, chunks)


async def completions(request: web.Request) -> web.StreamResponse:
    """OpenAI (legacy) completions, agreed by several miners."""
    answer = await generate(request, "completion", "prompt", is_text_or_tokens, TEXT_OR_TOKENS)
    head = {
        "id": f"cmpl-{answer.job_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": answer.model,
    }
    if not answer.stream:
        return json_response(
            {**head, "choices": answer.choices, "usage": answer.usage, "krewe": answer.krewe}
        )
    chunks = [{**head, "choices": [choice]} for choice in answer.choices]
    chunks[-1] |= {"usage": answer.usage, "krewe": answer.krewe}
    return await server_sent_events(request, chunks)


async def embeddings(request: web.Request) -> web.StreamResponse:
    """OpenAI embeddings, agreed by several miners."""
    services = request.app[SERVICES]
    body = await read_json(request, services.settings.max_body_bytes, services.settings.http_body_timeout_s)
    model = require(body, "model", is_string, "a model id")
    require(body, "input", is_text_or_tokens, TEXT_OR_TOKENS)
    encoding = optional(body, "encoding_format", is_encoding, "'float' or 'base64'") or "float"
    job_input = {k: v for k, v in body.items() if k not in ("encoding_format", "user")}
    decision = await services.router.submit(model, "embedding", job_input)
    data = agreed(decision, "data", is_embedding_list, "a list of embedding objects")
    usage = dict(agreed(decision, "usage", is_usage, "an object of token counts"))
    usage.setdefault("total_tokens", usage.get("prompt_tokens", 0))
    vectors = [item["embedding"] for item in data]
    if encoding == "base64":
        vectors = [float32_base64(vector, decision) for vector in vectors]
    items = [
        {"object": "embedding", "index": item.get("index", 0), "embedding": vector}
        for item, vector in zip(data, vectors, strict=True)
    ]
    return json_response(
        {"object": "list", "data": items, "model": model, "usage": usage, "krewe": krewe_info(decision)}
    )


async def models(request: web.Request) -> web.StreamResponse:
    """The models that connected miners serve, with the tasks they serve them for."""
    served = request.app[SERVICES].pool.models()
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "krewe", "krewe": {"tasks": tasks}}
        for model, tasks in served.items()
    ]
    return json_response({"object": "list", "data": data})


ROUTES = [
    web.route("POST", "/v1/chat/completions", chat),
    web.route("POST", "/v1/completions", completions),
    web.route("POST", "/v1/embeddings", embeddings),
    web.route("GET", "/v1/models", models),
]


@dataclass(frozen=True, slots=True)
class Generated:
    """A chat or completion job's agreed answer, checked and ready to be shaped."""

    model: str
    stream: bool
    choices: list[dict[str, Any]]
    usage: dict[str, Any]
    job_id: str
    krewe: dict[str, Any]


async def generate(
    request: web.Request, task: str, prompt: str, accepts_prompt: Check, prompt_is: str
) -> Generated:
    """What chat and completions share: check the request, run the job, read the agreed answer."""
    services = request.app[SERVICES]
    body = await read_json(request, services.settings.max_body_bytes, services.settings.http_body_timeout_s)
    model = require(body, "model", is_string, "a model id")
    require(body, prompt, accepts_prompt, prompt_is)
    stream = optional(body, "stream", is_boolean, "true or false")
    if optional(body, "n", is_integer, INTEGER) not in (None, 1):
        message = "only n=1 is supported: every answer is agreed by several miners"
        raise ApiError(400, "unsupported_n", message)
    job_input = {k: v for k, v in body.items() if k not in NOT_FOR_MINERS}
    decision = await services.router.submit(model, task, job_input)
    choices_are = is_chat_choices if task == "chat" else is_choices
    choices = agreed(decision, "choices", choices_are, "a non-empty list of choice objects")
    usage = dict(agreed(decision, "usage", is_usage, "an object of token counts"))
    usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    return Generated(model, stream is True, choices, usage, decision.record["job_id"], krewe_info(decision))


async def server_sent_events(request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def krewe_info(decision: Decision) -> dict[str, Any]:
    record = decision.record
    return {
        "job_id": record["job_id"],
        "verdict": record["verdict"],
        "agreeing": len(decision.verdict.agreeing),
        "replicas": record["replicas"],
        "digest": record["digest"],
        "creditable": record["creditable"],
    }


def agreed(decision: Decision, name: str, accepts: Check, what: str) -> Any:
    """The field `name` of the agreed output; 502 when it is missing or not what `accepts` takes."""
    output, job_id = decision.output, decision.record["job_id"]
    if not isinstance(output, dict) or name not in output:
        raise ApiError(502, "invalid_output", f"the agreed output has no '{name}' (job {job_id})")
    if not accepts(output[name]):
        raise ApiError(502, "invalid_output", f"the agreed output's '{name}' is not {what} (job {job_id})")
    return output[name]


def is_encoding(value: Any) -> bool:
    return value in ENCODINGS


def is_choices(value: Any) -> bool:
    return is_list_of_objects(value) and bool(value)


def is_chat_choices(value: Any) -> bool:
    return is_choices(value) and all(isinstance(choice.get("message"), dict) for choice in value)


def is_usage(value: Any) -> bool:
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    return isinstance(value, dict) and all(is_integer(value[name]) for name in counts if name in value)


def is_embedding_list(value: Any) -> bool:
    return is_list_of_objects(value) and all(_is_vector(item.get("embedding")) for item in value)


def _is_vector(value: Any) -> bool:
    # by exact type, which leaves out booleans, and at C speed: a response may hold many vectors
    return isinstance(value, list) and set(map(type, value)) <= NUMBER_TYPES


def float32_base64(vector: list[float], decision: Decision) -> str:
    """The vector as little-endian float32, in base64 (what the openai SDK asks for by default)."""
    try:
        packed = struct.pack(f"<{len(vector)}f", *vector)
    except OverflowError:
        job_id = decision.record["job_id"]
        raise ApiError(
            502, "invalid_output", f"the agreed output's 'embedding' is beyond float32 (job {job_id})"
        ) from None
    return base64.b64encode(packed).decode()
