"""The native jobs API: run a job and get its verdict record, now or later.

`POST /v1/jobs` answers with the verdict record as soon as the verdict is final; a job that ran
and ended without consensus or past its deadline still answers its record with 200.
`GET /v1/jobs/{job_id}` reads the record back while it is retained.
"""

from aiohttp import web

from krewe.orchestrator.api.body import (
    INTEGER,
    is_integer,
    is_object,
    is_string,
    optional,
    read_json,
    require,
)
from krewe.orchestrator.api.errors import ApiError, json_response
from krewe.orchestrator.api.services import SERVICES
from krewe.orchestrator.router import JobError

__all__ = ["ROUTES"]


async def create_job(request: web.Request) -> web.StreamResponse:
    """Run a native job; returns its verdict record."""
    services = request.app[SERVICES]
    body = await read_json(request, services.settings.max_body_bytes, services.settings.http_body_timeout_s)
    model = require(body, "model", is_string, "a model id")
    task = require(body, "task", is_string, "one of chat, completion, embedding")
    job_input = require(body, "input", is_object, "a JSON object")
    try:
        decision = await services.router.submit(
            model,
            task,
            job_input,
            replicas=optional(body, "replicas", is_integer, INTEGER),
            threshold=optional(body, "threshold", is_integer, INTEGER),
            timeout_ms=optional(body, "timeout_ms", is_integer, INTEGER),
        )
    except JobError as error:
        if error.record is None:
            raise
        return json_response(error.record)
    return json_response(decision.record)


async def get_job(request: web.Request) -> web.StreamResponse:
    """A job's verdict record."""
    job_id = request.match_info["job_id"]
    record = await request.app[SERVICES].records.get(job_id)
    if record is None:
        raise ApiError(404, "job_not_found", f"no job {job_id} (unknown, or older than the retention period)")
    return json_response(record)


ROUTES = [
    web.route("POST", "/v1/jobs", create_job),
    web.route("GET", "/v1/jobs/{job_id}", get_job),
]
