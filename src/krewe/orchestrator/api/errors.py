"""Every error leaves as OpenAI's envelope: `{"error": {"message", "type", "code"}}`.

Handlers raise `ApiError` (or the router's `JobError`); the error middleware turns it, aiohttp's
own HTTP errors (keeping their headers, such as a 405's `Allow`), a body that cannot be decoded,
and anything unexpected (a 500, logged) into the envelope, and counts every response by status.
A client that closed its connection mid-request is logged at debug level only. What aiohttp
answers before the app runs (krewe.orchestrator.server) uses the same envelope.
"""

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.router import JobError
from krewe.untrusted import untrusted

__all__ = [
    "UNDECODABLE_BODY",
    "ApiError",
    "envelope",
    "error_middleware",
    "error_response",
    "http_error_response",
    "json_response",
]

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    426: "invalid_request_error",
    429: "rate_limit_error",
}
UNDECODABLE_BODY = "the request body cannot be decoded as its Content-Encoding says"
# Headers of aiohttp's HTTP errors that describe its plain-text body, which the envelope replaces.
BODY_HEADERS = frozenset({"content-type", "content-length"})


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def envelope(status: int, code: str, message: str) -> bytes:
    """The JSON body of an error response."""
    kind = ERROR_TYPES.get(status, "server_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "code": code}})


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = envelope(status, code, message)
    response = web.Response(status=status, body=body, content_type="application/json", headers=headers)
    if status in (408, 413):
        # The rest of the body is never read: the connection cannot carry another request.
        response.force_close()
    return response


def http_error_response(error: web.HTTPException) -> web.Response:
    """One of aiohttp's HTTP errors (404, 405, 417...) in the envelope, with its headers but those of
    its plain-text body."""
    headers = {name: text for name, text in error.headers.items() if name.lower() not in BODY_HEADERS}
    code = error.reason.lower().replace(" ", "_")
    return error_response(error.status, code, error.text or error.reason, headers)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")


def error_middleware(metrics: Metrics) -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as error:
            response = error_response(error.status, error.code, error.message, error.headers)
        except JobError as error:
            response = error_response(error.status, error.code, error.message)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            response = http_error_response(error)
        except web.RequestPayloadError:
            response = error_response(400, "invalid_body", UNDECODABLE_BODY)
            response.force_close()
        except ConnectionResetError:  # the client left before its request was complete: none will read this
            log.debug("%s %s: the client closed the connection", request.method, untrusted(request.path))
            response = error_response(400, "incomplete_request", "the connection closed mid-request")
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, untrusted(request.path))
            response = error_response(500, "internal_error", "the orchestrator failed to serve this request")
        metrics.http.labels(str(response.status)).inc()
        return response

    return errors
