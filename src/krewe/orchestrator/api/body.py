"""Reading a request body, a JSON object, and checking it one field at a time.

Every way a body can be wrong is a 4xx in the error envelope: 413 when it is over
`max_body_bytes`, 400 `invalid_json` when it is not a JSON object, 400 `missing_field` or
`invalid_field` for a field.
"""

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from krewe.orchestrator.api.errors import ApiError

__all__ = [
    "INTEGER",
    "Check",
    "is_integer",
    "is_list",
    "is_object",
    "is_string",
    "optional",
    "read_json",
    "require",
]

Check = Callable[[Any], bool]  # whether a field's value is of the kind the endpoint takes

INTEGER = "an integer"


async def read_json(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request's body, a JSON object of at most `max_bytes` bytes."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "request_too_large", f"the request body is over {max_bytes} bytes") from None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return value


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


def is_list(value: Any) -> bool:
    return isinstance(value, list)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's numbers have no booleans
