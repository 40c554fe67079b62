"""Every error leaves as OpenAI's envelope: `{"error": {"message", "type", "code"}}`.

Handlers raise `ApiError` (or the router's `JobError`); the error middleware turns it, aiohttp's
own HTTP errors, and anything unexpected (a 500, logged) into the envelope, and counts every
response by status.
"""

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.router import JobError

__all__ = ["ApiError", "error_middleware", "error_response", "json_response"]

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    kind = ERROR_TYPES.get(status, "server_error")
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": code}})
    response = web.Response(status=status, body=body, content_type="application/json", headers=headers)
    if status == 413:
        # The rest of the body is never read: the client is told to stop sending it.
        response.force_close()
    return response


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
            response = error_response(
                error.status, error.reason.lower().replace(" ", "_"), error.text or error.reason
            )
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            response = error_response(500, "internal_error", "the orchestrator failed to serve this request")
        metrics.http.labels(str(response.status)).inc()
        return response

    return errors
