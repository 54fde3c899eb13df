"""Requests any client can send that once made a 500: each is a 4xx (or 404) in the one error
shape, naming the field, and leaves no task behind.

JSON nested past the parser's limit, a malformed IPv6 URL or a port past 65535 (as media or as
``callback_url``), a form ``seed`` of thousands of digits, a media host whose redirect goes to a
``data:`` URI or to a malformed URL, a non-ASCII ``?token=``, and a thumbnail asked for while
its task is being deleted.
"""

from __future__ import annotations

import threading
import time

import pytest

from opendance.testing.server import wait_for_task

M = "jisudance2.0-480p"
JSON = {"content-type": "application/json"}


def tasks_of(c) -> int:
    return len(c.get("/v1/video/generations", params={"limit": 100}).json()["data"])


@pytest.mark.parametrize("path", ["/v1/video/generations", "/v1/videos"])
@pytest.mark.parametrize("levels", [1000, 100_000])
def test_json_nested_past_the_parser_is_a_400(open_server, error_body, path, levels):
    with open_server.client() as c:
        r = c.post(path, content=("[" * levels + "]" * levels).encode(), headers=JSON)
        assert r.status_code == 400, r.text
        assert error_body(r)["code"] == "invalid_json" and "nested too deeply" in error_body(r)["message"]
        r = c.post(
            path,
            content=(f'{{"model": "{M}", "prompt": "x", "extra_body": ' + '{"a": ' * levels + "1" + "}" * levels + "}").encode(),
            headers=JSON,
        )
        assert r.status_code == 400 and error_body(r)["code"] == "invalid_json", r.text


BAD_URLS = [
    ("http://[::1/x", "Invalid IPv6 URL"),
    ("https://[fe80::1/video.mp4", "Invalid IPv6 URL"),
    ("http://127.0.0.1:70000/x.png", "Port out of range"),
    ("http://example.com:99999999999/x", "Port out of range"),
    ("http://example.com:12ab/x", "Port could not be cast"),
]


@pytest.mark.parametrize("url,text", BAD_URLS)
@pytest.mark.parametrize(
    "field,param",
    [("image", "image"), ("images", "images[0]"), ("videos", "videos[0]"), ("callback_url", "extra_body.callback_url")],
)
def test_a_malformed_url_is_a_400_naming_the_field(open_server, error_body, url, text, field, param):
    body: dict = {"model": M, "prompt": "x"}
    if field == "callback_url":
        body["extra_body"] = {"callback_url": url}
    else:
        body[field] = url if field == "image" else [url]
    with open_server.client() as c:
        before = tasks_of(c)
        r = c.post("/v1/video/generations", json=body)
        assert r.status_code == 400, r.text
        e = error_body(r)
        assert (e["param"], e["code"]) == (param, "invalid_url"), e
        assert text in e["message"], e
        assert tasks_of(c) == before


def test_a_form_seed_of_thousands_of_digits_is_a_400(open_server, error_body):
    with open_server.client() as c:
        before = tasks_of(c)
        for seed in ("9" * 5000, "-" + "1" * 4400, "0" * 6000 + "7"):
            r = c.post("/v1/videos", data={"prompt": "x", "seed": seed})
            if seed.strip("0") == "7":  # leading zeros are only zeros: seed 7
                assert r.status_code == 200, r.text
                continue
            assert r.status_code == 400, r.text
            assert error_body(r)["param"] == "seed" and "between -1 and 4294967295" in error_body(r)["message"]
        assert tasks_of(c) == before + 1


@pytest.mark.parametrize(
    "location,text,code",
    [
        # httpx reads this Location as a malformed URL (an absolute URL whose path has no "/")
        ("data:image/png;base64,iVBORw0KGgo=", "redirected to an invalid URL", "media_fetch_failed"),
        ("DATA:,x", "redirected to an invalid URL", "media_fetch_failed"),
        ("ftp://example.com/x.png", "redirected to a ftp: URL; redirects must stay on http(s)", "unsupported_url_scheme"),
        ("http://[::1/x", "Invalid URL in location header", "media_fetch_failed"),
        ("http://127.0.0.1:99999/x.png", "the port 99999 is not 1-65535", "media_fetch_failed"),
        ("file:///etc/passwd", "redirected to a file: URL", "unsupported_url_scheme"),
    ],
)
def test_a_redirect_to_a_data_uri_or_a_malformed_url_is_a_400(server, media_host, error_body, location, text, code):
    url = media_host.redirect(f"/redirect-{abs(hash(location))}.png", location)
    with server.client() as c:
        before = tasks_of(c)
        r = c.post("/v1/video/generations", json={"model": M, "image": url})
        assert r.status_code == 400, r.text
        e = error_body(r)
        assert (e["param"], e["code"]) == ("image", code), e
        assert text in e["message"], e
        assert tasks_of(c) == before


def test_a_non_ascii_token_is_a_404(keyed_server, error_body):
    with keyed_server.client("k-alice") as c:
        task = wait_for_task(c, c.post("/v1/video/generations", json={"model": M, "prompt": "x"}).json()["id"])
    signed = task["video_url"]
    with keyed_server.client() as anonymous:
        assert anonymous.get(signed).status_code == 200  # the signed link itself works without the key
        for token in ("é", "ｔｏｋｅｎ", "\u0660" * 32, "a" * 31 + "é"):
            r = anonymous.get(f"/v1/video/generations/{task['id']}/content", params={"token": token})
            assert r.status_code == 404, (token, r.text)
            assert error_body(r)["code"] == "task_not_found"


def test_a_thumbnail_asked_for_while_its_task_is_deleted_is_a_404_and_leaves_nothing(server, error_body):
    """The thumbnail is made from the stored video while a DELETE removes the task: it answers
    200 (made in time) or 404 (gone), never a 500, and no file of the task survives the delete."""
    tasks_dir = server.data_dir / "files" / "tasks"
    with server.client() as c:
        ids = [c.post("/v1/video/generations", json={"model": M, "prompt": f"thumb {i}"}).json()["id"] for i in range(8)]
        for task_id in ids:
            assert wait_for_task(c, task_id)["status"] == "completed"
        for round_, task_id in enumerate(ids):
            answers: dict[str, int] = {}

            def thumbnail(task_id: str = task_id) -> None:
                answers["thumbnail"] = c.get(f"/v1/videos/{task_id}/content", params={"variant": "thumbnail"}).status_code

            getter = threading.Thread(target=thumbnail)
            getter.start()
            time.sleep(0.004 * round_)  # the delete lands at another moment of the thumbnail's making each round
            assert c.delete(f"/v1/video/generations/{task_id}").status_code == 200
            getter.join(30)
            assert answers["thumbnail"] in (200, 404), answers
            time.sleep(0.2)  # a thumbnail still being written would land by now
            assert not (tasks_dir / task_id).exists(), (
                f"round {round_}: {sorted(p.name for p in (tasks_dir / task_id).rglob('*'))}"
            )
            r = c.get(f"/v1/videos/{task_id}/content", params={"variant": "thumbnail"})
            assert r.status_code == 404 and error_body(r)["code"] == "task_not_found"


def test_a_thumbnail_of_a_video_that_is_gone_is_a_404(server, error_body):
    with server.client() as c:
        task = wait_for_task(c, c.post("/v1/video/generations", json={"model": M, "prompt": "gone"}).json()["id"])
        (server.data_dir / "files" / "tasks" / task["id"] / "video.mp4").unlink()
        r = c.get(f"/v1/videos/{task['id']}/content", params={"variant": "thumbnail"})
        assert r.status_code == 404, r.text
        assert error_body(r)["code"] == "content_not_found"
