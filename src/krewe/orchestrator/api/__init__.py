"""The client API (PROTOCOL.md §4): OpenAI-compatible endpoints, native jobs, and operations.

One concept per module:
- services.py: what the API reads from the running orchestrator (`Services`);
- errors.py: `ApiError` and the error envelope every error leaves as;
- access.py: API keys and rate limits (the bucket itself is krewe.orchestrator.ratelimit);
- body.py: reading a request body and checking its fields;
- openai.py: chat, completions, embeddings, models, and server-sent events;
- jobs.py: the native jobs API;
- operations.py: health, readiness, metrics, workers, ledger, settlements;
- statements.py: each worker's statement of credits and payouts;
- dashboard.py: the operator's dashboard page and its event stream;
- openapi.py: the OpenAPI document of the routes below.

The miners' WebSocket endpoint (endpoint.py) shares the port.
"""

from aiohttp import web

from krewe.orchestrator.api import dashboard, jobs, openai, openapi, operations, statements
from krewe.orchestrator.api.access import access_middleware
from krewe.orchestrator.api.errors import ApiError, error_middleware
from krewe.orchestrator.api.services import SERVICES, Services

__all__ = ["ROUTES", "ApiError", "Services", "build_app"]

ROUTES = [
    *openai.ROUTES,
    *jobs.ROUTES,
    *operations.ROUTES,
    *statements.ROUTES,
    *dashboard.ROUTES,
    openapi.ROUTE,
]


def build_app(services: Services) -> web.Application:
    settings = services.settings
    app = web.Application(
        middlewares=[
            error_middleware(services.metrics),
            access_middleware(
                frozenset(settings.api_keys), frozenset(settings.admin_api_keys), services.limiter
            ),
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SERVICES] = services
    app[openapi.DOCUMENT] = openapi.openapi_document(ROUTES)
    app.router.add_get("/v1/workers/connect", services.endpoint.handle)
    app.router.add_routes(ROUTES)
    return app
