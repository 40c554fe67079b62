"""The client API (PROTOCOL.md §4): OpenAI-compatible endpoints, native jobs, and operations.

Every error, whatever raised it, leaves as OpenAI's envelope `{"error": {"message", "type", "code"}}`
with a fitting status. Client endpoints take `Authorization: Bearer <key>` when keys are
configured, each key limited by a token bucket (429 with Retry-After). Operations endpoints
(/healthz, /readyz, /metrics) are open, for probes and scrapers.
"""

import base64
import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from krewe import __version__
from krewe.orchestrator.bookkeeper import LedgerService
from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.endpoint import WorkerEndpoint
from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.pool import SessionPool
from krewe.orchestrator.records import JobStore
from krewe.orchestrator.router import Decision, JobError, JobRouter

__all__ = ["ApiError", "Services", "build_app"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/workers/connect")
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


class Services(Protocol):
    """What the API reads from the running orchestrator."""

    settings: OrchestratorSettings
    metrics: Metrics
    pool: SessionPool
    endpoint: WorkerEndpoint
    router: JobRouter
    ledger: LedgerService
    records: JobStore

    @property
    def settlements(self) -> Iterable[dict[str, Any]]: ...

    async def ready(self) -> dict[str, bool]: ...


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    kind = ERROR_TYPES.get(status, "server_error")
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": code}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")


class RateLimiter:
    """A token bucket per caller (API key, or address when no keys are set). When too many callers
    are kept, those whose bucket has refilled are forgotten: a full bucket is the same as a new one."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_callers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self._max_callers, self._clock = rate, burst, max_callers, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when counted)

    def take(self, caller: str) -> float:
        """0 if the caller may go now, else the seconds until it may."""
        now = self._clock()
        if caller not in self._buckets and len(self._buckets) >= self._max_callers:
            self._buckets = {
                who: (tokens, when)
                for who, (tokens, when) in self._buckets.items()
                if tokens + (now - when) * self.rate < self.burst
            }
        tokens, when = self._buckets.get(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens >= 1:
            self._buckets[caller] = (tokens - 1, now)
            return 0.0
        self._buckets[caller] = (tokens, now)
        return (1 - tokens) / self.rate


def build_app(services: Services) -> web.Application:
    settings = services.settings
    limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    keys = frozenset(settings.api_keys)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as error:
            response = error_response(error.status, error.code, error.message, error.headers)
        except JobError as error:
            response = error_response(error.status, error.code, error.message)
        except web.HTTPRequestEntityTooLarge:
            limit = settings.max_body_bytes
            response = error_response(413, "request_too_large", f"the request body is over {limit} bytes")
        except web.HTTPException as error:
            if error.status < 400:
                raise
            response = error_response(
                error.status, error.reason.lower().replace(" ", "_"), error.text or error.reason
            )
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            response = error_response(500, "internal_error", "the orchestrator failed to serve this request")
        services.metrics.http.labels(str(response.status)).inc()
        return response

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        caller = request.remote or "unknown"
        if keys:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise ApiError(401, "missing_api_key", "send your API key as 'Authorization: Bearer <key>'")
            if token not in keys:
                raise ApiError(401, "invalid_api_key", "the API key is not valid")
            caller = token
        wait = limiter.take(caller)
        if wait:
            retry = str(max(1, math.ceil(wait)))
            raise ApiError(
                429, "rate_limit_exceeded", f"too many requests; retry in {retry} s", {"Retry-After": retry}
            )
        return await handler(request)

    app = web.Application(middlewares=[errors, access], client_max_size=settings.max_body_bytes)
    handlers = _Handlers(services)
    app.router.add_get("/v1/workers/connect", services.endpoint.handle)
    for method, path, handler in handlers.routes():
        app.router.add_route(method, path, handler)
    return app


async def read_json(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return value


def require(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        raise ApiError(400, "missing_field", f"'{name}' is required")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ApiError(400, "invalid_field", f"'{name}' must be {what}")
    return value


def optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ApiError(400, "invalid_field", f"'{name}' must be an integer")
    return value


def krewe_info(decision: Decision) -> dict[str, Any]:
    record = decision.record
    return {
        "job_id": record["job_id"],
        "verdict": record["verdict"],
        "agreeing": len(decision.verdict.agreeing),
        "replicas": record["replicas"],
        "digest": record["digest"],
    }


def _output_field(output: Any, name: str, decision: Decision) -> Any:
    if not isinstance(output, dict) or name not in output:
        raise ApiError(
            502, "invalid_output", f"the agreed output has no '{name}' (job {decision.record['job_id']})"
        )
    return output[name]


class _Handlers:
    def __init__(self, services: Services) -> None:
        self.s = services

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/chat/completions", self.chat),
            ("POST", "/v1/completions", self.completions),
            ("POST", "/v1/embeddings", self.embeddings),
            ("GET", "/v1/models", self.models),
            ("POST", "/v1/jobs", self.create_job),
            ("GET", "/v1/jobs/{job_id}", self.get_job),
            ("GET", "/v1/workers", self.list_workers),
            ("GET", "/v1/ledger", self.ledger),
            ("GET", "/v1/settlements", self.settlements),
            ("GET", "/healthz", self.healthz),
            ("GET", "/readyz", self.readyz),
            ("GET", "/metrics", self.metrics),
            ("GET", "/openapi.json", self.openapi),
        ]

    async def _generate(
        self, request: web.Request, task: str, prompt: str, kind: type | tuple[type, ...], what: str
    ) -> tuple[Decision, str, bool, list[Any], dict[str, Any]]:
        """What chat and completions share: validate, run the job, read the agreed choices and usage."""
        body = await read_json(request)
        model = require(body, "model", str, "a model id")
        require(body, prompt, kind, what)
        if optional_int(body, "n") not in (None, 1):
            message = "only n=1 is supported: every answer is agreed by several miners"
            raise ApiError(400, "unsupported_n", message)
        job_input = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "user", "n")}
        decision = await self.s.router.submit(model, task, job_input)
        choices = _output_field(decision.output, "choices", decision)
        usage = dict(_output_field(decision.output, "usage", decision))
        usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        return decision, model, body.get("stream") is True, choices, usage

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """OpenAI chat completions, agreed by several miners."""
        decision, model, stream, choices, usage = await self._generate(
            request, "chat", "messages", list, "a list of messages"
        )
        head = {"id": f"chatcmpl-{decision.record['job_id']}", "created": int(time.time()), "model": model}
        if not stream:
            response = {**head, "object": "chat.completion", "choices": choices, "usage": usage}
            return json_response({**response, "krewe": krewe_info(decision)})
        chunks = []
        for choice in choices:
            index = choice.get("index", 0)
            delta = {"role": "assistant", "content": choice.get("message", {}).get("content", "")}
            for piece in (
                {"delta": delta, "finish_reason": None},
                {"delta": {}, "finish_reason": choice.get("finish_reason")},
            ):
                chunks.append(
                    {**head, "object": "chat.completion.chunk", "choices": [{"index": index, **piece}]}
                )
        chunks[-1] |= {"usage": usage, "krewe": krewe_info(decision)}
        return await self._stream(request, chunks)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """OpenAI (legacy) completions, agreed by several miners."""
        decision, model, stream, choices, usage = await self._generate(
            request, "completion", "prompt", (str, list), "a string or a list"
        )
        head = {
            "id": f"cmpl-{decision.record['job_id']}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        if not stream:
            return json_response({**head, "choices": choices, "usage": usage, "krewe": krewe_info(decision)})
        chunks = [{**head, "choices": [choice]} for choice in choices]
        chunks[-1] |= {"usage": usage, "krewe": krewe_info(decision)}
        return await self._stream(request, chunks)

    async def _stream(self, request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for chunk in chunks:
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """OpenAI embeddings, agreed by several miners."""
        body = await read_json(request)
        model = require(body, "model", str, "a model id")
        require(body, "input", (str, list), "a string or a list")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise ApiError(400, "invalid_field", "'encoding_format' must be 'float' or 'base64'")
        job_input = {k: v for k, v in body.items() if k not in ("encoding_format", "user")}
        decision = await self.s.router.submit(model, "embedding", job_input)
        data = _output_field(decision.output, "data", decision)
        usage = dict(_output_field(decision.output, "usage", decision))
        usage.setdefault("total_tokens", usage.get("prompt_tokens", 0))
        items = []
        for item in data:
            vector = item.get("embedding", []) if isinstance(item, dict) else []
            if encoding == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            items.append({"object": "embedding", "index": item.get("index", 0), "embedding": vector})
        return json_response(
            {"object": "list", "data": items, "model": model, "usage": usage, "krewe": krewe_info(decision)}
        )

    async def models(self, request: web.Request) -> web.StreamResponse:
        """The models that connected miners serve."""
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "krewe", "krewe": {"tasks": tasks}}
            for model, tasks in self.s.pool.models().items()
        ]
        return json_response({"object": "list", "data": data})

    async def create_job(self, request: web.Request) -> web.StreamResponse:
        """Run a native job; returns its verdict record."""
        body = await read_json(request)
        model = require(body, "model", str, "a model id")
        task = require(body, "task", str, "one of chat, completion, embedding")
        job_input = require(body, "input", dict, "a JSON object")
        try:
            decision = await self.s.router.submit(
                model,
                task,
                job_input,
                replicas=optional_int(body, "replicas"),
                threshold=optional_int(body, "threshold"),
                timeout_ms=optional_int(body, "timeout_ms"),
            )
        except JobError as error:
            if error.record is None:
                raise
            return json_response(error.record)
        return json_response(decision.record)

    async def get_job(self, request: web.Request) -> web.StreamResponse:
        """A job's verdict record."""
        job_id = request.match_info["job_id"]
        record = await self.s.records.get(job_id)
        if record is None:
            raise ApiError(
                404, "job_not_found", f"no job {job_id} (unknown, or older than the retention period)"
            )
        return json_response(record)

    async def list_workers(self, request: web.Request) -> web.StreamResponse:
        """Connected miners, their scores and load."""
        pool = self.s.pool
        rows = []
        for session in pool.sessions.values():
            score = pool.score(session.address)
            rows.append(
                {
                    "worker": session.address,
                    "models": [
                        {"id": offer.id, "tasks": list(offer.tasks), "engine": offer.engine}
                        for offer in session.offers
                    ],
                    "max_concurrency": session.max_concurrency,
                    "in_flight": session.in_flight,
                    "agent": session.agent,
                    "score": round(score.quality, 6),
                    "latency_ms": score.latency_ms,
                    "jobs": score.jobs,
                    "violations": session.violations,
                }
            )
        return json_response({"object": "list", "data": sorted(rows, key=lambda row: row["worker"])})

    async def ledger(self, request: web.Request) -> web.StreamResponse:
        """Credited, paid, pending and in-flight wei."""
        totals = await self.s.ledger.totals()
        pending = await self.s.ledger.pending()
        return json_response(
            {
                "credited": str(totals.credited),
                "paid": str(totals.paid),
                "pending": str(totals.pending),
                "in_flight": str(totals.in_flight),
                "pending_by_worker": {worker: str(amount) for worker, amount in sorted(pending.items())},
            }
        )

    async def settlements(self, request: web.Request) -> web.StreamResponse:
        """Recent settlement batches and the open ones."""
        open_batches = [
            {
                "batch": b.id,
                "workers": len(b.workers),
                "total": str(b.total),
                "batch_nonce": b.send.batch_nonce if b.send else None,
            }
            for b in await self.s.ledger.open_batches()
        ]
        return json_response({"recent": list(self.s.settlements), "open": open_batches})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Liveness."""
        return json_response({"status": "ok", "version": __version__})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """Readiness: the chain answers and the ledger is open."""
        checks = await self.s.ready()
        return json_response(
            {"ready": all(checks.values()), "checks": checks}, 200 if all(checks.values()) else 503
        )

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """Prometheus metrics."""
        totals = await self.s.ledger.totals()
        self.s.metrics.pending_wei.set(totals.pending + totals.in_flight)
        body = generate_latest(self.s.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        """This OpenAPI document."""
        return json_response(openapi_document(self.routes()))


def openapi_document(routes: list[tuple[str, str, Handler]]) -> dict[str, Any]:
    """The OpenAPI description of the routes, built from the same list the app is built from."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler in routes:
        operation: dict[str, Any] = {
            "summary": (handler.__doc__ or handler.__name__).strip().splitlines()[0],
            "operationId": handler.__name__,
            "responses": {
                "200": {"description": "success"},
                "default": {"$ref": "#/components/responses/Error"},
            },
        }
        if method == "POST":
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        if "{job_id}" in path:
            operation["parameters"] = [
                {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ]
        paths.setdefault(path, {})[method.lower()] = operation
    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": "string"},
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "krewe orchestrator", "version": __version__},
        "paths": paths,
        "components": {
            "responses": {
                "Error": {
                    "description": "OpenAI-style error",
                    "content": {"application/json": {"schema": error}},
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
