"""DNS rebinding through HTTP: a name that answers a public address first and a private one next.

There is no internet here, so 127.0.0.2 plays the public address (it is allow-listed) and
127.0.0.1 the private one (it is not). The server runs in this process with a resolver the test
controls (``create_app(settings, resolver=...)``), and a second host listens on 127.0.0.1 at the
same port, so that any request that reached the private address would be seen.
"""

from __future__ import annotations

import time

import httpx
import pytest

from opendance.config import Settings
from opendance.testing import media

M = "jisudance2.0-480p"
PNG = media.image_bytes(320, 240)


@pytest.fixture(scope="module")
def rebinding(tmp_path_factory, make_host, in_process_server, name_map):
    public = make_host("127.0.0.2")
    private = make_host("127.0.0.1", public.port)
    names = name_map(
        {
            "hop.rebind.test": [["127.0.0.2"], ["127.0.0.1"]],
            "pinned.rebind.test": [["127.0.0.2"], ["127.0.0.1"]],
            "hook.rebind.test": [["127.0.0.2"], ["127.0.0.1"]],
        }
    )
    data_dir = tmp_path_factory.mktemp("rebind")
    settings = Settings(
        data_dir=data_dir,
        allow_hosts=["127.0.0.2"],
        fetch_connect_timeout=2,
        fetch_read_timeout=2,
        fetch_total_timeout=5,
        callback_attempts=1,
        rate_limit_per_minute=0,
        log_level="warning",
    )
    with in_process_server(settings, resolver=names) as server:
        server.data_dir = data_dir
        yield server, public, private, names


def test_redirect_to_the_same_name_is_resolved_again_and_refused(rebinding, find_leftovers, error_body):
    server, public, private, names = rebinding
    port = public.port
    public.redirect("/hop", f"http://hop.rebind.test:{port}/secret.png")
    private.add("/secret.png", PNG, "image/png")
    r = httpx.post(server.url + "/v1/video/generations", json={"model": M, "image": f"http://hop.rebind.test:{port}/hop"})
    assert r.status_code == 400, r.text
    error = error_body(r)
    assert (error["param"], error["code"]) == ("image", "url_not_allowed")
    assert "hop.rebind.test resolves to a loopback address (127.0.0.1)" in error["message"]
    assert names.calls.count("hop.rebind.test") == 2  # once per hop
    assert public.paths() == ["/hop"] and private.requests == []
    assert find_leftovers(server.data_dir) == []


def test_one_lookup_per_hop_so_the_connection_cannot_move(rebinding):
    server, public, private, names = rebinding
    url = public.add("/a.png", PNG, "image/png").replace("127.0.0.2", "pinned.rebind.test")
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/v1/video/generations", json={"model": M, "image": url})
        assert r.status_code == 200, r.text
        c.post(f"/v1/video/generations/{r.json()['id']}/cancel")
    assert names.calls.count("pinned.rebind.test") == 1
    assert "/a.png" in public.paths() and private.requests == []
    assert public.requests[-1]["headers"]["Host"] == f"pinned.rebind.test:{public.port}"


@pytest.mark.timeout(60)
def test_callback_rebound_to_a_private_address_is_never_posted(rebinding):
    server, public, private, names = rebinding
    hook = f"http://hook.rebind.test:{public.port}/hook"
    body = {"model": M, "prompt": "x", "extra_body": {"callback_url": hook}}
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/v1/video/generations", json=body)
        assert r.status_code == 200, r.text  # the check at create time saw the public answer
        c.post(f"/v1/video/generations/{r.json()['id']}/cancel")
    deadline = time.monotonic() + 30
    while names.calls.count("hook.rebind.test") < 3:  # create check, then the queued and cancelled posts
        assert time.monotonic() < deadline, names.calls
        time.sleep(0.05)
    assert private.requests == []
