"""``/metrics`` has a bounded number of series whatever clients send: unknown HTTP methods and
unknown paths each map to one fixed label, so random method names or paths cannot grow it."""

from __future__ import annotations

import re
import secrets

import httpx

SERIES = re.compile(r'^opendance_http_requests_total\{method="([^"]*)",route="([^"]*)",status="([^"]*)"\}', re.M)
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}
PAGES = ("/docs", "/redoc", "/playground", "/openapi.json")  # the app's own pages and their files, and "/"


def test_unknown_methods_and_routes_share_one_label_each(open_server):
    names = [f"X{secrets.token_hex(4).upper()}" for _ in range(40)]
    tokens = [secrets.token_hex(6) for _ in range(40)]
    with httpx.Client(base_url=open_server.url, timeout=30) as c:
        for name, token in zip(names, tokens):
            c.request(name, "/v1/video/generations")  # a known route, an unknown method
            c.request(name, f"/no/such/{token}")  # an unknown route too
            c.get(f"/v1/{token}")
        api_paths = set(c.get("/openapi.json").json()["paths"])
        body = c.get("/metrics").text
        before = len(SERIES.findall(body))
        for name in names[:10]:
            c.request(name + "Y", "/v1/models")
        after = len(SERIES.findall(c.get("/metrics").text))
    series = SERIES.findall(body)
    methods = {m for m, _, _ in series}
    routes = {r for _, r, _ in series}
    assert methods <= METHODS, sorted(methods - METHODS)[:5]
    assert "OTHER" in methods and "unmatched" in routes
    strays = {r for r in routes - api_paths - {"unmatched", "/"} if not r.startswith(PAGES)}
    assert not strays, sorted(strays)[:5]
    assert not any(name in body for name in names) and not any(token in body for token in tokens)
    assert after - before <= 2  # at most one new (OTHER, /v1/models, status) series, not one per name
