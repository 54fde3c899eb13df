"""Property-based tests of the create validator: directly, and a smaller bounded run through HTTP.

- Any JSON value at all: ``parse_create`` returns a request or raises ``InvalidRequest`` (a 400
  naming a field), never anything else; through HTTP, never a 5xx.
- Any body that follows spec/api.md: a request with exactly the mode, duration, prompt and seed
  the body asked for; through HTTP, a queued task.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opendance.api.validate import MAX_SEED, CreateRequest, parse_create
from opendance.config import default_models
from opendance.domain import Mode
from opendance.errors import InvalidRequest

MODELS = default_models()
FIELDS = ["model", "prompt", "image", "last_image", "images", "videos", "audios", "duration", "aspect_ratio", "extra_body"]
EXTRA_KEYS = ["seed", "negative_prompt", "generate_audio", "watermark", "camera_fixed", "return_last_frame", "callback_url"]
DIRECT = settings(max_examples=200, derandomize=True, deadline=None, database=None)
HTTP = settings(max_examples=30, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12
)
# What a JSON encoder can write (no infinities): the unknown extras of valid bodies.
plain = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
urls = st.sampled_from(
    [
        "http://example.com/a.png",
        "https://cdn.example.org/v.mp4",
        "data:image/png;base64,AAAA",
        "ftp://x/y",
        "file:///etc/passwd",
        "",
        " ",
    ]
)
# Bodies near the real shape: known keys with values of any type, so every branch is reached.
near_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(list(MODELS)) | json_values,
        "prompt": st.text(max_size=50) | json_values,
        "image": urls | json_values,
        "last_image": urls | json_values,
        "images": st.lists(urls, max_size=11) | urls | json_values,
        "videos": st.lists(urls, max_size=4) | json_values,
        "audios": st.lists(urls, max_size=4) | json_values,
        "duration": st.integers(0, 20) | st.floats() | st.text(max_size=6) | json_values,
        "aspect_ratio": st.sampled_from(["16:9", "1:1", "9:16", "4:3", ""]) | json_values,
        "extra_body": st.dictionaries(st.sampled_from(EXTRA_KEYS) | st.text(max_size=6), json_values | urls, max_size=5)
        | json_values,
    },
)


def refused_cleanly(body) -> CreateRequest | None:
    """parse_create(body), where the only exception allowed is a 400 naming a field (or the body)."""
    try:
        return parse_create(body, MODELS)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.type == "invalid_request_error"
        # A field of the spec, or an unknown top-level field of this body whose value cannot be kept
        # (ignored fields are still refused when they are not finite, not text, or too deep).
        fields = [*FIELDS, *body] if isinstance(body, dict) else FIELDS
        assert exc.param is None or any(exc.param == f or exc.param.startswith((f + ".", f + "[")) for f in fields), exc.param
        assert exc.message and len(exc.message) < 600
        return None


@DIRECT
@given(json_values)
def test_any_json_value_is_a_request_or_a_400(body):
    refused_cleanly(body)


@DIRECT
@given(near_bodies)
def test_any_near_miss_is_a_request_or_a_400(body):
    refused_cleanly(body)


@st.composite
def valid_bodies(draw, media=True) -> tuple[dict, Mode]:
    """A body that follows every rule of spec/api.md, and the mode it must select."""
    body: dict = {"model": draw(st.sampled_from(list(MODELS)))}
    form = draw(st.sampled_from(["text", "image", "first-last", "omni"] if media else ["text"]))
    url = st.sampled_from(["https://example.com/a.png", "http://10.0.0.1/x.jpg", "data:image/png;base64,AAAA"])
    if form == "text":
        body["prompt"] = draw(st.text(max_size=200))
        mode = Mode.TEXT_TO_VIDEO
    else:
        if draw(st.booleans()):
            body["prompt"] = draw(st.text(max_size=50))
        if form in ("image", "first-last"):
            body["image"] = draw(url)
            if form == "first-last":
                body["last_image"] = draw(url)
            mode = Mode.IMAGE_TO_VIDEO if form == "image" else Mode.FIRST_AND_LAST_FRAME
        else:
            body["images"] = draw(st.lists(url, min_size=1, max_size=9))
            if draw(st.booleans()):
                body["videos"] = draw(st.lists(url, min_size=1, max_size=3))
            if draw(st.booleans()):
                body["audios"] = draw(st.lists(url, min_size=1, max_size=3))
            mode = Mode.OMNI_REFERENCE
    duration = draw(st.integers(5, 15))
    body["duration"] = draw(st.sampled_from([duration, float(duration), str(duration), f" {duration}.0 "]))
    if draw(st.booleans()):
        body["aspect_ratio"] = draw(st.sampled_from(["16:9", "1:1", "9:16"]))
    extra = {}
    if draw(st.booleans()):
        extra["seed"] = draw(st.integers(-1, MAX_SEED))
    for key in ("generate_audio", "watermark", "camera_fixed", "return_last_frame"):
        if draw(st.booleans()):
            extra[key] = draw(st.booleans())
    extra.update(draw(st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in EXTRA_KEYS), plain, max_size=2)))
    if extra or draw(st.booleans()):
        body["extra_body"] = extra
    body.update(draw(st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in FIELDS), plain, max_size=2)))
    return body, mode


@DIRECT
@given(valid_bodies())
def test_valid_bodies_give_exactly_what_they_ask_for(drawn):
    body, mode = drawn
    req = parse_create(body, MODELS)
    assert req.mode is mode and req.model == body["model"]
    assert req.prompt == body.get("prompt", "")
    assert req.duration == int(float(str(body["duration"]).strip()))
    assert req.aspect_ratio == body.get("aspect_ratio")
    seed = body.get("extra_body", {}).get("seed")
    assert req.seed == (None if seed in (None, -1) else seed)
    assert req.images == body.get("images", []) and req.videos == body.get("videos", []) and req.audios == body.get("audios", [])


# -- the same through HTTP (bounded: every example is a real request) --------------------------


@pytest.mark.timeout(180)
@HTTP
@given(near_bodies | json_values)
def test_through_http_any_body_is_a_task_or_a_400(open_server, body):
    with httpx.Client(base_url=open_server.url, timeout=30) as c:
        r = c.post("/v1/video/generations", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"]
        else:
            assert r.json()["status"] == "queued"
            c.post(f"/v1/video/generations/{r.json()['id']}/cancel")


@pytest.mark.timeout(180)
@HTTP
@given(valid_bodies(media=False))
def test_through_http_valid_bodies_make_the_task_they_describe(open_server, drawn):
    body, _mode = drawn
    with httpx.Client(base_url=open_server.url, timeout=30) as c:
        r = c.post("/v1/video/generations", json=body)
        assert r.status_code == 200, r.text
        task = r.json()
        c.post(f"/v1/video/generations/{task['id']}/cancel")  # the CPU is for the next example
    assert task["status"] == "queued" and task["mode"] == "text-to-video" and task["model"] == body["model"]
    assert task["duration"] == int(float(str(body["duration"]).strip()))
    assert task["aspect_ratio"] == body.get("aspect_ratio", "16:9")
    seed = body.get("extra_body", {}).get("seed")
    assert seed in (None, -1) or task["seed"] == seed
