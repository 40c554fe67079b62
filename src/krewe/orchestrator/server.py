"""The orchestrator's HTTP server: aiohttp's, made to answer as docs/protocol.md says where aiohttp's
own parts answer before any middleware runs.

- Request headers must be complete within `http_header_timeout_s` of connecting or of the last
  response. This is aiohttp's keep-alive timer: it also runs before a connection's first request,
  bytes that trickle in do not put it off, and it closes idle keep-alive connections too.
- A request aiohttp's parser refuses (a bad request line or header, a line too long) is a 400 in
  the error envelope instead of aiohttp's plain text (`invalid_request`, or `invalid_body` for a
  body its parser could not decode), and is logged at debug level, escaped, instead of at error
  level with a traceback.
- Past `max_connections` open connections, a new one is answered 503 `too_many_connections` and
  closed, so that a flood of connections leaves file descriptors to the chain client and the stores.
- A WebSocket frame from a client that is not masked, or a new message inside a fragmented one,
  fails the connection with 1002 (RFC 6455 §5.1, §5.4), which aiohttp's reader lets through
  (`krewe.orchestrator.frame_check`).
- Once the endpoint takes a session's pongs (`frame_check.take_pongs`), a pong that arrives alone
  in one read goes to it and not to aiohttp's reader.
- A request of HTTP/0.9 or HTTP/2.0 in HTTP/1 syntax, which aiohttp's parser takes and would
  answer in HTTP/1 syntax under that version's number, gets 505 `http_version_not_supported`.
- An HTTP error aiohttp raises before the app's middlewares run (417 for an `Expect` other than
  `100-continue`) is in the envelope too.

aiohttp makes one `RequestHandler` per connection through its `Server`; `make_runner` returns an
`AppRunner` whose server makes `_Connection`s, the handler with the rules above.
"""

import asyncio
import logging
import resource
from typing import Any, cast

from aiohttp import web
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11, WebSocketReader
from aiohttp.http_exceptions import ContentEncodingError

from krewe.orchestrator.api.errors import (
    UNDECODABLE_BODY,
    envelope,
    error_response,
    http_error_response,
)
from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.frame_check import CheckedFeed
from krewe.orchestrator.metrics import Metrics
from krewe.untrusted import untrusted

__all__ = ["FD_RESERVE", "connection_limit", "make_runner"]

log = logging.getLogger(__name__)

FD_RESERVE = 100  # file descriptors kept for the chain client, the stores and the logs
_CLOSE_1002 = b"\x88\x02" + (1002).to_bytes(2, "big")  # a close frame: FIN + close opcode, code 1002
SERVED_VERSIONS = (HttpVersion10, HttpVersion11)
_REQUESTED_VERSION = web.RequestKey("requested_version", HttpVersion)  # of a request that gets 505


def connection_limit(configured: int | None) -> int | None:
    """The most connections at once: `configured`, or else the open-file limit less FD_RESERVE."""
    if configured is not None:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(1, soft - FD_RESERVE)


def make_runner(app: web.Application, settings: OrchestratorSettings, metrics: Metrics) -> web.AppRunner:
    """The runner that serves `app` under the rules of this module."""
    return _Runner(
        app,
        header_timeout_s=settings.http_header_timeout_s,
        max_connections=connection_limit(settings.max_connections),
        metrics=metrics,
    )


class _Runner(web.AppRunner):
    def __init__(
        self, app: web.Application, *, header_timeout_s: float, max_connections: int | None, metrics: Metrics
    ) -> None:
        super().__init__(app, handle_signals=False, access_log=None)
        self._header_timeout_s = header_timeout_s
        self._max_connections = max_connections
        self._metrics = metrics

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # freezes the app and runs its start-up hooks
        app_handler, make_request = made.request_handler, made.request_factory

        def request_factory(message: Any, *args: Any) -> web.BaseRequest:
            if message.version in SERVED_VERSIONS:
                return make_request(message, *args)
            request = make_request(message._replace(version=HttpVersion11, should_close=True), *args)
            request[_REQUESTED_VERSION] = message.version
            return request

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            requested = request.get(_REQUESTED_VERSION)
            if requested is not None:
                message = f"HTTP/{requested.major}.{requested.minor} is not served; use HTTP/1.1"
                response = error_response(505, "http_version_not_supported", message)
                response.force_close()
            else:
                try:
                    return await app_handler(request)
                except web.HTTPException as error:  # from before the middlewares: a bad `Expect`
                    if error.status < 400:
                        raise
                    response = http_error_response(error)
            self._metrics.http.labels(str(response.status)).inc()
            return response

        return _Server(
            handler,
            request_factory=request_factory,
            max_connections=self._max_connections,
            metrics=self._metrics,
            keepalive_timeout=self._header_timeout_s,
            access_log=None,
        )


class _Server(web.Server):
    def __init__(
        self,
        handler: Any,
        *,
        request_factory: Any,
        max_connections: int | None,
        metrics: Metrics,
        **handler_options: Any,
    ) -> None:
        super().__init__(handler, request_factory=request_factory, **handler_options)
        self.max_connections = max_connections
        self.metrics = metrics
        self._handler_options = handler_options

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=asyncio.get_running_loop(), **self._handler_options)


class _Connection(web.RequestHandler):
    """One connection's handler: aiohttp's, with this module's rules."""

    def __init__(self, server: _Server, **options: Any) -> None:
        super().__init__(server, **options)
        self._server = server
        self.checked_feed: CheckedFeed | None = None  # once upgraded to a WebSocket (`take_pongs`)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limit = self._server.max_connections
        if limit is not None and len(self._server.connections) >= limit:
            self._server.metrics.http.labels("503").inc()
            body = envelope(503, "too_many_connections", f"the orchestrator has {limit} connections open")
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            cast(asyncio.Transport, transport).write(head.encode() + body)
            transport.close()
            return
        super().connection_made(transport)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The response to a request that failed before or outside the app: the envelope."""
        if status >= 500:
            log.error("failed to serve a request from %s", request.remote, exc_info=exc)
            code, text = "internal_error", "the orchestrator failed to serve this request"
        else:
            reason = " ".join((message or repr(exc)).split())  # aiohttp's text spans lines
            log.debug("refused a malformed request from %s: %s", request.remote, untrusted(reason))
            if isinstance(exc, ContentEncodingError):  # as the error middleware says it
                code, text = "invalid_body", UNDECODABLE_BODY
            else:
                code, text = "invalid_request", f"the request is not valid HTTP/1.1: {reason[:200]}"
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun; no error response can follow it")
        self._server.metrics.http.labels(str(status)).inc()
        response = error_response(status, code, text)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's log of a failure. After an answer it reads what is left of the request's body,
        which fails again when the client sent an undecodable body or left: that is no failure."""
        failure = kwargs.get("exc_info")
        if isinstance(failure, web.RequestPayloadError | ConnectionError):
            log.debug("a request's body could not be read to its end: %s", untrusted(str(failure)))
            return
        super().log_exception(*args, **kwargs)

    def set_parser(self, parser: WebSocketReader, data_received_cb: Any = None) -> None:
        """Upgraded to a WebSocket: the client's frames pass the frame check on their way to `parser`."""
        self.checked_feed = CheckedFeed(parser, self._fail_websocket)
        super().set_parser(cast(WebSocketReader, self.checked_feed), data_received_cb)

    def _fail_websocket(self, breach: str) -> None:
        transport = self.transport
        if transport is not None:
            peer = transport.get_extra_info("peername")
            log.info("closing the WebSocket of %s with 1002: %s", peer, breach)
            transport.write(_CLOSE_1002)
        self.force_close()
