"""Nothing the pages need comes from the internet: /docs and /redoc render with the network cut
off, and the playground's own files name no origin but the page's."""

from __future__ import annotations

import re
import urllib.parse
from importlib.resources import files

import httpx
import pytest
from playwright.sync_api import expect

CREATE_ROUTE = "/v1/video/generations"
ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-\[\]:@%]+")
# What a page, module or style sheet loads: src/href attributes, ES module imports, CSS url().
REFERENCE = re.compile(
    r"""(?:src|href)="([^"]+)"|\b(?:from|import)\s*["'](\.{1,2}/[^"']+)["']|(?<![\w-])url\(\s*["']?([^"')]+)"""
)


@pytest.mark.browser
def test_docs_render_with_the_network_cut_off_and_list_the_create_route(playground_server, open_page):
    page = open_page(playground_server, "/docs")
    create = page.locator(f'.opblock-post .opblock-summary-path[data-path="{CREATE_ROUTE}"]')
    expect(create).to_be_visible()
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("opendance")
    create.click()  # the operation opens, with the documented body
    body = page.locator(".opblock-post.is-open .opblock-section-request-body")
    expect(body).to_contain_text("Request body")
    expect(body).to_contain_text("last_image")
    # open_page's teardown fails the test if any request left 127.0.0.1 (it would have been aborted).


@pytest.mark.browser
def test_redoc_renders_with_the_network_cut_off(playground_server, open_page):
    page = open_page(playground_server, "/redoc")
    expect(page.locator("h1")).to_contain_text("opendance")
    # ReDoc lists each operation in its menu and shows the route of the open one.
    page.get_by_role("menuitem", name=re.compile("Create Task")).first.click()
    expect(page.get_by_text(CREATE_ROUTE, exact=True).first).to_be_visible()


def test_the_playground_names_no_origin_but_its_own(playground_server):
    """Crawl what / loads (pages, modules, style sheets) and look for http(s) origins in it.
    The crawl must reach every file of the package's static folder, so none goes unchecked."""
    seen: dict[str, str] = {}
    todo = ["/"]
    with httpx.Client(base_url=playground_server.url) as http:
        while todo:
            path = todo.pop()
            r = http.get(path)
            assert r.status_code == 200, path
            seen[path] = r.text
            for match in REFERENCE.finditer(r.text):
                ref = next(g for g in match.groups() if g)
                if ref.startswith(("data:", "#")):
                    continue
                target = urllib.parse.urljoin(path, ref)
                if target.startswith("/playground/") and target not in seen and target not in todo:
                    todo.append(target)
    foreign = {path: ORIGIN.findall(text) for path, text in seen.items() if ORIGIN.search(text)}
    assert not foreign, f"origins other than the page's own: {foreign}"
    static = {f"/playground/{f.name}" for f in files("opendance.web").joinpath("static").iterdir() if f.name != "index.html"}
    assert static <= set(seen), f"files the crawl did not reach: {static - set(seen)}"
    # The crawl found the real thing: the page, its entry module and what that imports.
    assert {"/", "/playground/app.js", "/playground/style.css", "/playground/tasks.js", "/playground/snippets.js"} <= set(seen)


def test_the_page_forbids_scripts_and_connections_to_other_origins(playground_server):
    r = httpx.get(playground_server.url + "/")
    policy = dict(item.strip().split(" ", 1) for item in r.headers["content-security-policy"].split(";"))
    assert policy["script-src"] == "'self'" and policy["connect-src"] == "'self'" and policy["default-src"] == "'self'"
    assert r.headers["content-type"].startswith("text/html")
