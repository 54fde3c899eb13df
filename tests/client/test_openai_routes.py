"""``/v1/videos`` over plain HTTP: both body encodings, the seconds/size mapping, the two
shapes of ``GET /v1/videos/{id}``, content variants, listing, deleting, limits and keys."""

from __future__ import annotations

import base64
import io

import httpx
import openai.types
import pytest
from PIL import Image

from opendance.api.openai_protocol import VideoOrTask
from opendance.api.protocol import TaskObject
from opendance.testing.media import image_bytes

STAINLESS = {"X-Stainless-Lang": "python"}


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("seconds", "duration"),
    [("4", 5), (4, 5), ("5", 5), (8, 8), ("12", 12), (" 15 ", 15), (None, 5)],
)
def test_seconds_map_to_durations(http, seconds, duration):
    body = {"prompt": "s", "model": "pager"} | ({} if seconds is None else {"seconds": seconds})
    r = http.post("/v1/videos", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["seconds"] == str(duration)
    assert http.get(f"/v1/video/generations/{r.json()['id']}").json()["duration"] == duration


@pytest.mark.parametrize("seconds", ["3", "16", "20", "7.5", "abc", True, -4, [8]])
def test_seconds_we_cannot_make_are_400(http, seconds):
    r = http.post("/v1/videos", json={"prompt": "s", "model": "pager", "seconds": seconds})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seconds", r.text


@pytest.mark.parametrize(
    ("model", "size", "chosen", "aspect"),
    [
        ("quick-720p", "1280x720", "quick-720p", "16:9"),
        ("quick-720p", "720x1280", "quick-720p", "9:16"),
        ("quick-720p", "960X960", "quick-720p", "1:1"),
        ("pager", "864x480", "pager", "16:9"),
        (None, "640x640", "jisudance2.0-480p", "1:1"),  # no model: the first that makes the size
        (None, "1280x720", "quick-720p", "16:9"),
    ],
)
def test_sizes_map_to_model_and_aspect_ratio(http, model, size, chosen, aspect):
    body = {"prompt": "size", "size": size, "seconds": "5"} | ({"model": model} if model else {})
    r = http.post("/v1/videos", json=body)
    assert r.status_code == 200, r.text
    video = r.json()
    assert video["model"] == chosen and video["size"] == size.lower()
    legacy = http.get(f"/v1/video/generations/{video['id']}").json()
    assert legacy["aspect_ratio"] == aspect and f"{legacy['width']}x{legacy['height']}" == size.lower()
    http.post(f"/v1/video/generations/{video['id']}/cancel")  # no need to make it


@pytest.mark.parametrize(
    ("model", "size", "code"),
    [
        ("pager", "1280x720", "unsupported_size"),  # a 720p size on a 480p model: no rescaling
        ("quick-720p", "1792x1024", "unsupported_size"),
        (None, "1024x1792", "unsupported_size"),
        (None, "big", "invalid_type"),
        (None, 1280, "invalid_type"),
    ],
)
def test_sizes_we_cannot_make_are_400(http, model, size, code):
    body = {"prompt": "x", "size": size} | ({"model": model} if model else {})
    r = http.post("/v1/videos", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "size" and r.json()["error"]["code"] == code


def test_both_encodings_and_every_input_reference_form(http, media_host, finished):
    png = image_bytes(360, 360, seed=4)
    url = media_host.add("/openai/ref.png", png, "image/png")
    made = [
        http.post("/v1/videos", files={"input_reference": ("r.png", png, "image/png")}, data={"prompt": "", "model": "pager"}),
        http.post(
            "/v1/videos",
            files={"input_reference": ("r.png", png, "application/octet-stream")},
            data={"model": "pager", "seed": "42"},
        ),
        http.post("/v1/videos", data={"model": "pager", "input_reference[image_url]": data_url(png)}),
        http.post("/v1/videos", json={"model": "pager", "input_reference": {"image_url": url}}),
        http.post("/v1/videos", json={"model": "pager", "input_reference": url}),
    ]
    for r in made:
        assert r.status_code == 200, r.text
        legacy = finished(r.json()["id"])
        assert legacy["status"] == "completed" and legacy["mode"] == "image-to-video" and legacy["aspect_ratio"] == "1:1"
    assert finished(made[1].json()["id"])["seed"] == 42
    text = http.post("/v1/videos", data={"prompt": "form only", "model": "pager", "seconds": "5", "size": "864x480"})
    assert text.status_code == 200 and text.json()["size"] == "864x480"


def test_errors_name_the_openai_fields(http):
    cases = [
        ({"files": {"input_reference": ("x.png", b"not an image", "image/png")}, "data": {"model": "pager"}}, "input_reference"),
        ({"json": {"model": "pager", "input_reference": {"file_id": "file_123"}}}, "input_reference.file_id"),
        ({"json": {"model": "pager", "input_reference": "ftp://example.com/a.png"}}, "input_reference"),
        ({"json": {"model": "pager", "input_reference": 5}}, "input_reference"),
        ({"data": {"model": "pager", "prompt": "x", "seed": "abc"}}, "seed"),
        ({"json": {"model": "pager"}}, "prompt"),  # text-to-video needs a prompt
        ({"json": {"model": "sora-2", "prompt": "x"}}, "model"),
        ({"json": ["not", "an", "object"]}, None),
    ]
    for kwargs, param in cases:
        r = http.post("/v1/videos", **kwargs)
        assert r.status_code == 400, (kwargs, r.text)
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
        if param == "input_reference":
            assert not error["message"].startswith("image"), error
    r = http.post("/v1/videos", content=b"prompt=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_content_type"


def test_one_path_two_shapes(http, finished):
    # 1280x720: one of OpenAI's own sizes, so the SDK's strict model validates it below.
    tid = http.post("/v1/videos", json={"prompt": "shapes", "model": "quick-720p", "size": "1280x720"}).json()["id"]
    finished(tid)
    legacy = http.get(f"/v1/videos/{tid}").json()
    for headers in (STAINLESS, {"OpenAI-Organization": "org"}, {"User-Agent": "OpenAI/Python 3.54.0"}):
        assert http.get(f"/v1/videos/{tid}", headers=headers).json()["object"] == "video", headers
    assert legacy["object"] == "video.generation.job"
    assert http.get(f"/v1/videos/{tid}?shape=openai").json()["object"] == "video"
    assert http.get(f"/v1/videos/{tid}?shape=legacy", headers=STAINLESS).json()["object"] == "video.generation.job"
    bad = http.get(f"/v1/videos/{tid}?shape=xml")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "shape"
    # Either way the body satisfies both parsers: the legacy model, and the SDK's own Video.
    TaskObject.model_validate(legacy)
    assert legacy["video_url"] and legacy["result"]["outputs"] == [legacy["video_url"]] and legacy["task_id"] == tid
    assert (legacy["seconds"], legacy["size"], legacy["progress"]) == ("5", "1280x720", 100)
    sdk_shaped = http.get(f"/v1/videos/{tid}", headers=STAINLESS).json()
    video = openai.types.Video.model_validate(sdk_shaped)
    assert video.status == "completed" and video.completed_at
    # And both match the documented response of the route.
    for body in (legacy, sdk_shaped):
        VideoOrTask.model_validate(body)
    # The legacy route itself never changes shape.
    assert http.get(f"/v1/video/generations/{tid}", headers=STAINLESS).json()["object"] == "video.generation.job"


def test_poll_hint_while_running_and_the_running_shape(http):
    tid = http.post("/v1/videos", json={"prompt": "running", "model": "slow"}).json()["id"]
    r = http.get(f"/v1/videos/{tid}", headers=STAINLESS)
    assert r.json()["status"] in ("queued", "in_progress") and r.json()["completed_at"] is None
    assert int(r.headers["openai-poll-after-ms"]) > 0
    # Deleting a running video is a conflict (cancel first); its content does not exist yet.
    assert http.delete(f"/v1/videos/{tid}").status_code == 409
    for variant in ("video", "thumbnail"):
        r = http.get(f"/v1/videos/{tid}/content", params={"variant": variant})
        assert r.status_code == 409 and r.json()["error"]["code"] == "task_not_completed"
    http.post(f"/v1/video/generations/{tid}/cancel")
    r = http.get(f"/v1/videos/{tid}", headers=STAINLESS)
    assert "openai-poll-after-ms" not in r.headers
    assert r.json()["status"] == "failed" and r.json()["error"]["code"] == "cancelled"


def test_content_variants(http, finished):
    tid = http.post("/v1/videos", json={"prompt": "content", "model": "quick-480p", "size": "480x864"}).json()["id"]
    finished(tid)
    full = http.get(f"/v1/videos/{tid}/content")
    assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
    part = http.get(f"/v1/videos/{tid}/content", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == full.content[:100]
    thumb = http.get(f"/v1/videos/{tid}/content", params={"variant": "thumbnail"})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    image = Image.open(io.BytesIO(thumb.content))
    assert image.format == "WEBP" and image.size == (480, 864)
    assert http.get(f"/v1/videos/{tid}/content", params={"variant": "thumbnail"}).content == thumb.content  # kept
    bad = http.get(f"/v1/videos/{tid}/content", params={"variant": "spritesheet"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "variant"
    missing = http.get(f"/v1/videos/{tid}/content", params={"variant": "last_frame"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "content_not_found"
    deleted = http.delete(f"/v1/videos/{tid}")
    assert deleted.json() == {"id": tid, "object": "video.deleted", "deleted": True}
    for variant in ("video", "thumbnail"):
        assert http.get(f"/v1/videos/{tid}/content", params={"variant": variant}).status_code == 404


def test_list_parameters(http, finished):
    ids = [http.post("/v1/videos", json={"prompt": f"list {i}", "model": "pager"}).json()["id"] for i in range(3)]
    for tid in ids:
        finished(tid)
    page = http.get("/v1/videos", params={"limit": 2}).json()
    assert page["object"] == "list" and [v["id"] for v in page["data"]] == ids[::-1][:2] and page["has_more"]
    assert page["first_id"] == ids[2] and page["last_id"] == ids[1]
    assert all(v["object"] == "video" and "raw_status" not in v for v in page["data"])
    after = http.get("/v1/videos", params={"limit": 1, "after": page["last_id"]}).json()
    assert [v["id"] for v in after["data"]] == [ids[0]]
    asc = http.get("/v1/videos", params={"limit": 100, "order": "asc"}).json()["data"]
    assert [v["id"] for v in asc if v["id"] in ids] == ids
    for params, param in (({"limit": 0}, "limit"), ({"limit": "many"}, "limit"), ({"order": "up"}, "order")):
        r = http.get("/v1/videos", params=params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_keys_and_body_limit(keyed_server):
    with keyed_server.client("k-alice") as alice, keyed_server.client("k-bob") as bob:
        tid = alice.post("/v1/videos", data={"prompt": "alice", "model": "jisudance2.0-480p"}).json()["id"]
        for method, path in (
            ("GET", f"/v1/videos/{tid}"),
            ("DELETE", f"/v1/videos/{tid}"),
            ("GET", f"/v1/videos/{tid}/content"),
            ("GET", f"/v1/videos/{tid}/content?variant=thumbnail"),
        ):
            r = bob.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found", (method, path, r.text)
        assert tid not in [v["id"] for v in bob.get("/v1/videos").json()["data"]]
        assert httpx.get(keyed_server.url + "/v1/videos").status_code == 401
        # The 2 MB body limit holds for multipart bodies too.
        big = alice.post(
            "/v1/videos", files={"input_reference": ("big.png", b"\0" * 2_100_000, "image/png")}, data={"prompt": "x"}
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
        assert alice.get(f"/v1/videos/{tid}").status_code == 200
