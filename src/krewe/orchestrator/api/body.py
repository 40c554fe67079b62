"""Reading and checking a request body: a JSON object, then one field at a time.

Every way a body can be wrong is a 4xx in the error envelope, never a 500:
- a `Content-Length` over `max_body_bytes` is 413 at once, before any of the body is read, and a
  chunked body is 413 as soon as it passes the limit;
- a body that has not arrived within `http_body_timeout_s` is 408;
- nesting deeper than `MAX_DEPTH` is 400 before the body is decoded, so no deeper document
  reaches the decoder, the encoder of job frames, or a miner;
- a field of the wrong type is 400 `invalid_field`, and a missing one 400 `missing_field`.
"""

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from krewe.orchestrator.api.errors import ApiError
from krewe.protocol.canonical import CanonicalError, check_nesting

__all__ = [
    "INTEGER",
    "TEXT_OR_TOKENS",
    "Check",
    "is_boolean",
    "is_integer",
    "is_list_of_objects",
    "is_object",
    "is_string",
    "is_text_or_tokens",
    "optional",
    "read_json",
    "require",
]

Check = Callable[[Any], bool]  # whether a field's value is of the kind the endpoint takes

INTEGER = "an integer (no fraction or exponent, within 64 bits)"
TEXT_OR_TOKENS = "a string, a list of strings, a list of token ids, or a list of lists of token ids"


async def read_json(request: web.Request, max_bytes: int, timeout_s: float) -> dict[str, Any]:
    """The request's body, a JSON object of at most `max_bytes` bytes arriving within `timeout_s`."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _request_too_large(max_bytes)
    waits = not request.content.is_eof()  # once the whole body has arrived, reading it cannot wait
    try:
        async with asyncio.timeout(timeout_s) if waits else contextlib.nullcontext():
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _request_too_large(max_bytes) from None
    except TimeoutError:
        message = f"the request body did not arrive within {timeout_s:g} s"
        raise ApiError(408, "request_timeout", message) from None
    try:
        check_nesting(body)
        value = orjson.loads(body)
    except CanonicalError as error:
        raise ApiError(400, "invalid_json", f"the request body is refused: {error}") from None
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return value


def _request_too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "request_too_large", f"the request body is over {max_bytes} bytes")


def optional(body: dict[str, Any], name: str, accepts: Check, what: str) -> Any:
    """The field `name` (None when absent or null); 400 unless `accepts` it."""
    value = body.get(name)
    if value is not None and not accepts(value):
        raise ApiError(400, "invalid_field", f"'{name}' must be {what}")
    return value


def require(body: dict[str, Any], name: str, accepts: Check, what: str) -> Any:
    """The field `name`; 400 when it is absent, null, or not what `accepts` takes."""
    if body.get(name) is None:
        raise ApiError(400, "missing_field", f"'{name}' is required")
    return optional(body, name, accepts, what)


def is_string(value: Any) -> bool:
    return isinstance(value, str)


def is_object(value: Any) -> bool:
    return isinstance(value, dict)


def is_boolean(value: Any) -> bool:
    return isinstance(value, bool)


def is_integer(value: Any) -> bool:
    # JSON has no booleans among its numbers; and an integer too large for 64 bits decodes as a float.
    return isinstance(value, int) and not isinstance(value, bool)


def is_list_of_objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def is_text_or_tokens(value: Any) -> bool:
    """What OpenAI takes as a prompt or an embedding input: see TEXT_OR_TOKENS."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list):
        return False
    return (
        all(isinstance(item, str) for item in value)
        or _is_tokens(value)
        or all(_is_tokens(item) for item in value)
    )


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and all(is_integer(item) for item in value)
