"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, against real servers.

Playwright cannot download its own browser here, so it drives ``/usr/bin/chromium``
(``./scripts/test`` installs it with apt-get when it is missing). Every page runs with the
network cut off: a request to anything but the server under test is aborted and recorded, and
a test that made one fails.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from opendance.testing.server import LiveServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# A quick preview model (8 fps keeps the videos small) and a slow one to cancel while it runs.
MODELS_TOML = """
[models."preview-480p"]
resolution = "480p"
fps = 8
[models."preview-480p".default]
engine = "preview"

[models."slow"]
resolution = "480p"
fps = 8
[models."slow".default]
engine = "scenario"
behaviour = "sleep"
steps = 600
step_seconds = 0.1
"""


@pytest.fixture(scope="module")
def browser():
    """Per module, not per session: Playwright's sync API keeps an event loop running on the
    main thread while it is started, and ``asyncio.run`` in any later test would refuse to run."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: ./scripts/test installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def playground_server(tmp_path_factory) -> Iterator[LiveServer]:
    """An open server (no keys) with the two models above."""
    data = tmp_path_factory.mktemp("playground")
    config = data / "models.toml"
    config.write_text(MODELS_TOML)
    with LiveServer(data, config=config) as server:
        yield server


@dataclass
class Visit:
    """A browser context whose every non-local request is aborted and recorded."""

    origin: str
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def open_page(browser) -> Iterator[Callable[..., object]]:
    """``open_page(server, path="/", setup=None)``: a fresh context (empty localStorage) and page
    at that path; ``setup(context)`` runs before the page loads (to add routes). At the end, the
    test fails if the page tried to reach another origin or threw."""
    visits: list[tuple[Visit, object]] = []

    def open_(server: LiveServer, path: str = "/", *, setup: Callable | None = None):
        visit = Visit(origin=server.url)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        context.set_default_timeout(60_000)

        def route(r):
            if _origin(r.request.url) == visit.origin or r.request.url.startswith(("data:", "blob:")):
                r.continue_()
            else:
                visit.blocked.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        if setup is not None:
            setup(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: visit.errors.append(str(exc)))
        page.goto(server.url + path)
        page.visit = visit
        visits.append((visit, context))
        return page

    yield open_
    for _, context in visits:
        context.close()
    for visit, _ in visits:
        assert not visit.blocked, f"the page tried to reach other origins: {visit.blocked}"
        assert not visit.errors, f"the page threw: {visit.errors}"


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture
def created() -> Callable:
    """``created(page, click)``: does ``click()`` and returns the task object the page's create
    call got back (the page shows the task by this id)."""

    def created_(page, click) -> dict:
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/v1/video/generations")) as answer:
            click()
        response = answer.value
        assert response.status == 200, response.text()
        return response.json()

    return created_


@pytest.fixture(scope="session")
def screenshot_path() -> Path | None:
    """Where the README's screenshot goes when ``OPENDANCE_UPDATE_SCREENSHOT=1`` (docs/playground.md)."""
    if os.environ.get("OPENDANCE_UPDATE_SCREENSHOT") == "1":
        return Path(__file__).resolve().parents[2] / "docs" / "playground.png"
    return None
