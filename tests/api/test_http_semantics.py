"""HTTP as RFC 9110 and the docs promise it: HEAD on content, Range read the way the RFC reads
it, 405 and 416 in the error shape with a correct ``Allow``, the OpenAPI schema as strict as the
validator, the README's ``/v1/videos/generations...`` aliases, ``DATA:`` in capitals, and only
ASCII digits as numbers."""

from __future__ import annotations

import httpx
import pytest

from opendance.testing import media
from opendance.testing.server import wait_for_task

M = "jisudance2.0-480p"


def error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.headers, r.text)
    assert r.headers["content-type"] == "application/json", r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture(scope="module")
def done(server):
    """A completed task with a last frame."""
    with server.client() as c:
        body = {"model": M, "prompt": "semantics", "extra_body": {"return_last_frame": True}}
        return wait_for_task(c, c.post("/v1/video/generations", json=body).json()["id"])


CONTENT = [
    "/v1/video/generations/{id}/content",
    "/v1/videos/generations/{id}/content",
    "/v1/videos/{id}/content",
    "/v1/video/generations/{id}/content?variant=last_frame",
    "/v1/videos/{id}/content?variant=thumbnail",
]


@pytest.mark.parametrize("path", CONTENT)
def test_head_on_content_is_the_get_without_its_body(client, done, path):
    url = path.format(id=done["id"])
    full = client.get(url)
    head = client.head(url)
    assert full.status_code == head.status_code == 200, (full.text, head.text)
    assert head.content == b""
    assert head.headers["content-type"] == full.headers["content-type"]
    assert int(head.headers["content-length"]) == len(full.content) > 0


@pytest.mark.parametrize(
    "header",
    [
        "bytes=abc",
        "bytes=5-3",  # an invalid range-spec (last before first)
        "items=0-10",  # a unit we do not know
        "bytes=",
        "bytes=-",
        "bytes=\u0660-\u0669",  # Arabic-Indic digits
        "bytes=1_0-",  # int() reads this as 10
        "bytes 0-10",
        "0-10",
    ],
)
@pytest.mark.parametrize("path", ["/v1/video/generations/{id}/content", "/v1/videos/{id}/content"])
def test_a_malformed_or_unknown_range_is_ignored_and_the_whole_file_sent(client, done, header, path):
    url = path.format(id=done["id"])
    whole = client.get(url).content
    r = client.get(url, headers={"Range": header.encode()})  # bytes: a client may send any octets
    assert r.status_code == 200, (header, r.status_code, r.text[:200])
    assert r.content == whole and "content-range" not in r.headers


def test_byte_ranges_still_work(client, done):
    url = f"/v1/video/generations/{done['id']}/content"
    whole = client.get(url).content
    part = client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == whole[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(whole)}"
    tail = client.get(url, headers={"Range": "Bytes = -5"})  # units are case-insensitive; spaces are allowed
    assert tail.status_code == 206 and tail.content == whole[-5:]
    several = client.get(url, headers={"Range": "bytes=0-1, 4-5"})
    assert several.status_code == 206 and several.headers["content-type"].startswith("multipart/byteranges")


@pytest.mark.parametrize("header", ["bytes=999999999-", "bytes=999999999-1000000000", "bytes=-0"])
def test_an_unsatisfiable_range_is_a_416_in_the_error_shape(client, done, header):
    url = f"/v1/video/generations/{done['id']}/content"
    size = len(client.get(url).content)
    r = client.get(url, headers={"Range": header})
    e = error(r, 416, "range_not_satisfiable")
    assert e["param"] == "Range" and str(size) in e["message"]
    assert r.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize(
    "method,path,allow",
    [
        ("PUT", "/v1/video/generations", "GET, POST"),
        ("DELETE", "/v1/video/generations", "GET, POST"),
        ("PATCH", "/v1/video/generations/{id}", "DELETE, GET"),
        ("POST", "/v1/video/generations/{id}/content", "GET, HEAD"),
        ("GET", "/v1/video/generations/{id}/cancel", "POST"),
        ("PUT", "/v1/videos", "GET, POST"),
        ("POST", "/v1/videos/{id}", "DELETE, GET"),
        ("DELETE", "/v1/videos/{id}/content", "GET, HEAD"),
        ("POST", "/v1/models", "GET"),
        ("FROB", "/v1/models", "GET"),
    ],
)
def test_405_is_in_the_error_shape_and_allows_every_method_of_the_path(client, done, method, path, allow):
    r = client.request(method, path.format(id=done["id"]))
    e = error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == allow
    assert allow in e["message"]


def test_the_openapi_schema_is_as_strict_as_the_validator(client, done):
    doc = client.get("/openapi.json").json()
    create = doc["paths"]["/v1/video/generations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    props = create["properties"]
    assert props["model"]["minLength"] == 1
    assert props["prompt"]["anyOf"][0]["maxLength"] == 5000
    assert props["images"]["anyOf"][0]["maxItems"] == 9 and props["videos"]["anyOf"][0]["maxItems"] == 3
    assert props["duration"]["anyOf"][0] == {"type": "integer", "minimum": 5, "maximum": 15}
    seed = props["extra_body"]["anyOf"][0]["properties"]["seed"]["anyOf"][0]
    assert (seed["minimum"], seed["maximum"]) == (-1, 4294967295)

    def query(path: str, method: str, name: str) -> dict:
        (param,) = [p for p in doc["paths"][path][method]["parameters"] if p["name"] == name]
        return param["schema"]

    assert query("/v1/video/generations/{task_id}/content", "get", "variant")["enum"] == ["video", "last_frame"]
    assert query("/v1/videos/{video_id}/content", "get", "variant")["enum"] == ["video", "thumbnail", "last_frame"]
    for path in ("/v1/video/generations", "/v1/videos"):
        limit = query(path, "get", "limit")
        assert (limit["type"], limit["minimum"], limit["maximum"]) == ("integer", 1, 100)
        assert query(path, "get", "order")["enum"] == ["asc", "desc"]
    assert query("/v1/video/generations", "get", "status")["enum"] == ["queued", "in_progress", "completed", "failed"]
    assert query("/v1/videos/{video_id}", "get", "shape")["enum"] == ["openai", "legacy"]
    # ... and what the schema refuses, the server refuses.
    assert error(client.post("/v1/video/generations", json={"model": "", "prompt": "x"}), 400)["param"] == "model"
    assert (
        error(client.get(f"/v1/video/generations/{done['id']}/content", params={"variant": "thumbnail"}), 400)["param"]
        == "variant"
    )
    assert error(client.get(f"/v1/videos/{done['id']}/content", params={"variant": "poster"}), 400)["param"] == "variant"


def test_the_readme_aliases_have_cancel_delete_and_content(client, done):
    video = client.get(f"/v1/videos/generations/{done['id']}/content")
    assert video.status_code == 200 and video.content == client.get(done["video_url"]).content
    task_id = client.post("/v1/videos/generations", json={"model": M, "prompt": "alias"}).json()["id"]
    cancelled = client.post(f"/v1/videos/generations/{task_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["raw_status"] == "CANCELLED", cancelled.text
    deleted = client.delete(f"/v1/videos/generations/{task_id}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert client.get(f"/v1/videos/generations/{task_id}").status_code == 404


def test_a_data_uri_in_capitals_is_accepted(client):
    png = media.data_uri(media.image_bytes(320, 240), "image/png")
    for scheme in ("DATA:", "Data:"):
        r = client.post("/v1/video/generations", json={"model": M, "image": scheme + png[len("data:") :]})
        assert r.status_code == 200, r.text
        assert r.json()["mode"] == "image-to-video"


NOT_ASCII = [
    "\u0665",
    "\uff15",
    "\u0661\u0660",
    "\u2075",
    "\u09eb",
]  # Arabic-Indic 5, fullwidth 5, Arabic-Indic 10, superscript 5, Bengali 5


@pytest.mark.parametrize("digits", NOT_ASCII)
def test_numbers_in_other_scripts_are_refused(client, digits):
    assert (
        error(client.post("/v1/video/generations", json={"model": M, "prompt": "x", "duration": digits}), 400)["param"]
        == "duration"
    )
    assert error(client.get("/v1/video/generations", params={"limit": digits}), 400)["param"] == "limit"
    assert error(client.get("/v1/videos", params={"limit": digits}), 400)["param"] == "limit"
    assert error(client.post("/v1/videos", data={"prompt": "x", "seconds": digits}), 400)["param"] == "seconds"
    assert error(client.post("/v1/videos", json={"prompt": "x", "size": f"{digits}x720"}), 400)["param"] == "size"


@pytest.mark.parametrize("limit", [" 5", "5 ", "1_0", "+5", "5.0", "0x10"])
def test_limit_is_plain_digits(client, limit):
    assert error(client.get("/v1/video/generations", params={"limit": limit}), 400)["param"] == "limit"
