"""The order the app's router tries its routes in: the polled and created routes first.

Starlette's router tries the routes in list order until one takes the request fully (path and
method), and a failed try costs a few microseconds (FastAPI 0.165's ``APIRoute.matches`` builds
its route context each time). Declared by module, GET task came sixth, after the OpenAPI
route and the creates, the OpenAI retrieve eighteenth and the Ark one twenty-fourth: a tenth of
a GET's time on the server went to routes it was not for. ``hot_routes_first`` moves the routes
clients call most (polling and creating) to the front.

The order changes which route serves a request only where two routes would both take it fully;
the moved routes share no method and path with any other (``tests/api/test_route_order.py``
checks every route's own requests against the declared order). The OpenAPI document is
FastAPI's own for the declared order (what /docs and /redoc show, and the order the schema
fuzzing walks the operations in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

# (method, path) in the order they go first: GETs of one task (polled), the list, the creates.
HOT = (
    ("GET", "/v1/video/generations/{task_id}"),
    ("GET", "/v1/video/generations"),
    ("POST", "/v1/video/generations"),
    ("GET", "/v1/videos/{video_id}"),
    ("GET", "/api/v3/contents/generations/tasks/{task_id}"),
    ("POST", "/v1/videos"),
    ("POST", "/api/v3/contents/generations/tasks"),
)


def hot_routes_first(app: FastAPI, hot: tuple[tuple[str, str], ...] = HOT) -> None:
    """Move the ``hot`` routes to the front of ``app``'s router, in ``hot``'s order; the OpenAPI
    document stays the one the declared order gives."""
    routes = app.router.routes
    declared = list(routes)
    rank = {operation: i for i, operation in enumerate(hot)}

    def place(route: Any) -> int:
        if isinstance(route, APIRoute):
            found = [rank[m, route.path] for m in route.methods or () if (m, route.path) in rank]
            if found:
                return min(found)
        return len(rank)

    routes[:] = sorted(routes, key=place)  # stable: the rest keep their declared order
    app.openapi = _in_declared_order(app, app.openapi, declared)  # type: ignore[method-assign]


def _in_declared_order(app: FastAPI, generate: Callable[[], dict[str, Any]], declared: list) -> Callable[[], dict[str, Any]]:
    """FastAPI's own ``openapi()``, generated from the routes in their declared order: the
    router's list is swapped back for that one synchronous call (no request runs meanwhile:
    they run on the same loop) and restored; FastAPI keeps the document once made."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        routes = app.router.routes
        matching = list(routes)
        routes[:] = declared
        try:
            return generate()
        finally:
            routes[:] = matching

    return openapi
