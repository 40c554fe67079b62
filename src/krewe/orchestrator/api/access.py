"""Who may call which endpoint, and how often.

Three kinds of endpoint:
- open: /healthz, /readyz, /metrics, /openapi.json and the miners' WebSocket, for probes, scrapers
  and miners, who log in on their own terms;
- operator: the dashboard (`/` and its files), /v1/events, /v1/workers, /v1/ledger,
  /v1/settlements, and workers' statements;
- client: every other endpoint.

With no key configured (`api_keys` and `admin_api_keys` both empty) every endpoint is open, for
loopback use. Otherwise a key is sent as `Authorization: Bearer <key>`, or as the password of HTTP
Basic authentication (any user name), which is what a browser asks for and sends again with the
dashboard's page, its files and its event stream:
- a client endpoint takes a client key, or an operator key (401 without one), while `api_keys` is
  set; with only operator keys configured it stays open;
- an operator endpoint takes an operator key (401, with a Basic challenge, without one);
- a worker's statement also takes that worker's own signature instead (see statements.py).

Every caller, a key, a worker, or else an address, has its own token bucket (429 with
Retry-After when it is empty), on this instance (`RateLimiter`) or shared by every instance
(`RedisRateLimiter`).
"""

import base64
import binascii
import logging
import math

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from krewe.orchestrator.api.errors import ApiError
from krewe.orchestrator.api.statements import SIGNATURE_HEADER, STATEMENT_ROUTE, signed_worker
from krewe.orchestrator.ratelimit import RateLimiter
from krewe.orchestrator.shared import RedisRateLimiter, StoreUnavailableError

__all__ = ["OPEN_PATHS", "OPERATOR_ROUTES", "access_middleware"]

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/workers/connect"})
OPERATOR_ROUTES = frozenset(
    {"/", "/dashboard/{asset}", "/v1/events", "/v1/workers", "/v1/ledger", "/v1/settlements", STATEMENT_ROUTE}
)


def access_middleware(
    api_keys: frozenset[str], admin_keys: frozenset[str], limiter: RateLimiter | RedisRateLimiter
) -> Middleware:
    keyed = bool(api_keys or admin_keys)

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        caller = request.remote or "unknown"
        if keyed:
            caller = caller_of(request, api_keys, admin_keys) or caller
        try:
            wait = limiter.take(caller) if isinstance(limiter, RateLimiter) else await limiter.take(caller)
        except StoreUnavailableError as error:
            log.warning("refusing a request: %s", error)
            message = "the store instances share cannot be reached now; retry later"
            raise ApiError(503, "store_unavailable", message, {"Retry-After": "1"}) from None
        if wait:
            retry = str(max(1, math.ceil(wait)))
            raise ApiError(
                429, "rate_limit_exceeded", f"too many requests; retry in {retry} s", {"Retry-After": retry}
            )
        return await handler(request)

    return access


def caller_of(request: web.Request, api_keys: frozenset[str], admin_keys: frozenset[str]) -> str | None:
    """Who calls, when keys are configured: the key, or the worker whose signature it carries;
    None for an open client endpoint (no client keys). Raises 401 for a caller without access."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    if route not in OPERATOR_ROUTES:
        return caller_key(request, api_keys | admin_keys) if api_keys else None
    if route == STATEMENT_ROUTE and SIGNATURE_HEADER in request.headers:
        return signed_worker(request)
    return caller_key(request, admin_keys, OPERATOR)


class _Asked:
    """How a 401 asks for the key an endpoint takes."""

    def __init__(self, what: str, invalid: str, headers: dict[str, str] | None = None) -> None:
        self.what, self.invalid, self.headers = what, invalid, headers


CLIENT = _Asked("your API key", "the API key is not valid")
OPERATOR = _Asked(
    "an operator key",
    "the key is not an operator key",
    {"WWW-Authenticate": 'Basic realm="krewe operator", charset="UTF-8"'},
)


def caller_key(request: web.Request, keys: frozenset[str], asked: _Asked = CLIENT) -> str:
    """The request's key, if it is one of `keys`."""
    key = presented_key(request)
    if key is None:
        message = f"send {asked.what} as 'Authorization: Bearer <key>'"
        raise ApiError(401, "missing_api_key", message, asked.headers)
    if key not in keys:
        raise ApiError(401, "invalid_api_key", asked.invalid, asked.headers)
    return key


def presented_key(request: web.Request) -> str | None:
    """The key in `Authorization`: a Bearer token, or the password of Basic authentication."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    if scheme.lower() == "basic" and token:
        try:
            _, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password or None
    return None
