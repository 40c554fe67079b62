"""Who may call the client endpoints, and how often.

With API keys configured, a client endpoint takes `Authorization: Bearer <key>` (401 without a
valid one). Every caller, a key or else an address, has its own token bucket (429 with
Retry-After when it is empty). Operations endpoints and the miners' WebSocket are open, for
probes, scrapers and miners, who log in on their own terms.
"""

import math

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from krewe.orchestrator.api.errors import ApiError
from krewe.orchestrator.ratelimit import RateLimiter

__all__ = ["OPEN_PATHS", "access_middleware"]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/workers/connect"})


def access_middleware(api_keys: frozenset[str], limiter: RateLimiter) -> Middleware:
    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        caller = caller_key(request, api_keys) if api_keys else request.remote or "unknown"
        wait = limiter.take(caller)
        if wait:
            retry = str(max(1, math.ceil(wait)))
            raise ApiError(
                429, "rate_limit_exceeded", f"too many requests; retry in {retry} s", {"Retry-After": retry}
            )
        return await handler(request)

    return access


def caller_key(request: web.Request, api_keys: frozenset[str]) -> str:
    """The request's API key, if it is one of `api_keys`."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing_api_key", "send your API key as 'Authorization: Bearer <key>'")
    if token not in api_keys:
        raise ApiError(401, "invalid_api_key", "the API key is not valid")
    return token
