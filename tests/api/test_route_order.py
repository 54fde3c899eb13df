"""The polled and created routes go first in the router (api/route_order.py), and that changes
no request's route: every request a route of the app takes (its path with sample parameters, by
every method the app knows) that more than one route would take fully is taken by routes that
were not moved, whose order among themselves is kept (today no request has two such routes). The OpenAPI document keeps the declared
order."""

from __future__ import annotations

import re

import pytest
from starlette.routing import Match

from opendance.api.app import KNOWN_METHODS, create_app
from opendance.api.route_order import HOT
from opendance.config import Settings


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("routes")))


def sample_path(route) -> str:
    return re.sub(r"\{[^}]+\}", "sample", getattr(route, "path", "/"))


def request_scope(method: str, path: str) -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}


def test_the_hot_routes_are_tried_first_in_their_order(app):
    first = [
        next(m for m in route.methods if (m, route.path) in HOT) + " " + route.path for route in app.router.routes[: len(HOT)]
    ]
    assert first == [f"{m} {p}" for m, p in HOT]


def test_no_request_that_two_routes_take_goes_to_a_moved_route(app):
    routes = app.router.routes
    hot = {id(r) for r in routes[: len(HOT)]}
    for path in {sample_path(r) for r in routes} | {"/v1/videos/generations", "/api/v3/contents/generations/tasks/x"}:
        for method in KNOWN_METHODS:
            takers = [r for r in routes if r.matches(request_scope(method, path))[0] is Match.FULL]
            if len(takers) > 1:
                assert not any(id(r) in hot for r in takers), (method, path, [getattr(r, "path", r) for r in takers])


def test_the_openapi_document_keeps_the_declared_order(app):
    paths = list(app.openapi()["paths"])
    assert paths.index("/v1/video/generations") < paths.index("/v1/video/generations/{task_id}") < paths.index("/v1/videos")
    assert list(app.openapi()["paths"]["/v1/video/generations"]) == ["post", "get"]  # create, then list
