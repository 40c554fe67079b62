"""The OpenAPI document, built from the same route list the app is built from.

Each operation's summary is the first line of its handler's docstring, and its id the handler's
name, so the document cannot drift from what is served.
"""

import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from krewe import __version__
from krewe.orchestrator.api.errors import json_response

__all__ = ["DOCUMENT", "ROUTE", "openapi_document"]

DOCUMENT = web.AppKey("openapi_document", dict[str, Any])

ERROR_SCHEMA = {
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


async def openapi(request: web.Request) -> web.StreamResponse:
    """This OpenAPI document."""
    return json_response(request.app[DOCUMENT])


ROUTE = web.route("GET", "/openapi.json", openapi)


def openapi_document(routes: Iterable[web.RouteDef]) -> dict[str, Any]:
    """The OpenAPI description of `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "krewe orchestrator", "version": __version__},
        "paths": paths,
        "components": {
            "responses": {
                "Error": {
                    "description": "OpenAI-style error",
                    "content": {"application/json": {"schema": ERROR_SCHEMA}},
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def operation(route: web.RouteDef) -> dict[str, Any]:
    handler = route.handler
    described: dict[str, Any] = {
        "summary": (handler.__doc__ or handler.__name__).strip().splitlines()[0],
        "operationId": handler.__name__,
        "responses": {
            "200": {"description": "success"},
            "default": {"$ref": "#/components/responses/Error"},
        },
    }
    if route.method == "POST":
        described["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    names = re.findall(r"\{(\w+)\}", route.path)
    if names:
        described["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names
        ]
    return described
