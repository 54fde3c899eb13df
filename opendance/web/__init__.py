"""The browser playground at ``/`` and the API docs at ``/docs`` and ``/redoc``.

Both are served from files inside installed packages, so they work on a machine with no
network at all:

- the playground is plain ES modules, CSS and HTML in ``opendance/web/static`` (no build step);
  it talks only to the public API of this server, with the key the user types in;
- the docs pages load Swagger UI 5.32.6 and ReDoc 2.5.3 from the pinned ``fastapi-offline``
  package (``fastapi_offline/static``), never from a CDN, and a Content-Security-Policy keeps
  them from reaching anything but this server.

Nothing here needs a key: the pages hold no data of their own; every call they make is an
API call that the API authorises.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

PLAYGROUND_ASSETS = "/playground"
DOCS_ASSETS = "/docs/assets"

# The playground's pages may run only the server's own scripts and talk only to the server; videos
# and images may come from elsewhere (an S3 redirect, OPENDANCE_PUBLIC_URL on another host).
PLAYGROUND_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob: http: https:",
        "media-src 'self' data: blob: http: https:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

# The docs pages run the bundles' inline start-up scripts, so only what they may reach is held in:
# ReDoc's footer shows a logo from its CDN, which would tell that CDN who reads these docs.
DOCS_CSP = "connect-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'"


class _Assets(StaticFiles):
    """Package files, revalidated on every load, so an upgraded server never runs a stale module
    beside a new page."""

    async def get_response(self, path: str, scope: Scope):
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def add_web_routes(app: FastAPI) -> None:
    """``/`` (the playground), ``/playground/*`` (its files), ``/docs``, ``/redoc`` and their files."""
    playground = _Assets(packages=[("opendance.web", "static")])
    index = playground.lookup_path("index.html")[0]

    @app.get("/", include_in_schema=False)
    async def playground_page() -> FileResponse:
        return FileResponse(
            index,
            media_type="text/html",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": PLAYGROUND_CSP, "X-Content-Type-Options": "nosniff"},
        )

    app.mount(PLAYGROUND_ASSETS, playground, name="playground")
    app.mount(DOCS_ASSETS, _Assets(packages=[("fastapi_offline", "static")]), name="docs-assets")
    _add_docs_routes(app)


def _add_docs_routes(app: FastAPI) -> None:
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            oauth2_redirect_url=root + oauth2_redirect,
            # No online validator badge: it would send the spec's URL to swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
