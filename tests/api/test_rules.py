"""Every rule of spec/api.md's create body: the violating request, its status, param and message."""

from __future__ import annotations

import socket

import pytest

from opendance.testing import media

M = "jisudance2.0-480p"
PNG = media.data_uri(media.image_bytes(400, 240), "image/png")


def err(r, status: int, param: str | None, text: str, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    e = body["error"]
    assert set(e) == {"message", "type", "param", "code"}
    assert e["param"] == param, e
    assert text.lower() in e["message"].lower(), e
    if code is not None:
        assert e["code"] == code, e
    assert e["type"] == ("invalid_request_error" if status in (400, 404, 409, 413) else e["type"])
    return e


SHAPE_RULES = [
    # (name, body, param, message fragment, code)
    ("model missing", {"prompt": "x"}, "model", "model is required", "missing_field"),
    ("model not a string", {"model": 5, "prompt": "x"}, "model", "must be a string", "invalid_type"),
    ("model unknown", {"model": "nope", "prompt": "x"}, "model", "does not exist", "model_not_found"),
    ("prompt missing for text", {"model": M}, "prompt", "prompt is required", "missing_field"),
    ("prompt null for text", {"model": M, "prompt": None}, "prompt", "prompt is required", "missing_field"),
    ("prompt not a string", {"model": M, "prompt": ["a"]}, "prompt", "must be a string", "invalid_type"),
    ("prompt too long", {"model": M, "prompt": "a" * 5001}, "prompt", "at most 5000", "invalid_value"),
    ("image not a string", {"model": M, "image": 7}, "image", "must be a string", "invalid_type"),
    (
        "image ftp scheme",
        {"model": M, "image": "ftp://example.com/a.png"},
        "image",
        "scheme 'ftp' is not allowed",
        "unsupported_url_scheme",
    ),
    (
        "image file scheme",
        {"model": M, "image": "file:///etc/passwd"},
        "image",
        "scheme 'file' is not allowed",
        "unsupported_url_scheme",
    ),
    ("image gopher scheme", {"model": M, "image": "gopher://example.com/"}, "image", "scheme 'gopher'", "unsupported_url_scheme"),
    ("image no scheme", {"model": M, "image": "cat.png"}, "image", "http(s):// url or a data: uri", "invalid_url"),
    ("last_image without image", {"model": M, "last_image": PNG}, "last_image", "last_image needs image", "mode_conflict"),
    (
        "image with images",
        {"model": M, "image": PNG, "images": [PNG]},
        "images",
        "cannot be combined with image",
        "mode_conflict",
    ),
    (
        "last_image with videos",
        {"model": M, "image": PNG, "last_image": PNG, "videos": ["https://example.com/a.mp4"]},
        "videos",
        "cannot be combined",
        "mode_conflict",
    ),
    (
        "image with audios",
        {"model": M, "image": PNG, "audios": ["https://example.com/a.wav"]},
        "audios",
        "cannot be combined",
        "mode_conflict",
    ),
    (
        "audios alone",
        {"model": M, "prompt": "x", "audios": ["https://example.com/a.wav"]},
        "audios",
        "at least one reference image or video",
        "mode_conflict",
    ),
    ("images empty", {"model": M, "images": []}, "images", "1 to 9 items; got 0", "invalid_value"),
    ("images ten", {"model": M, "images": [PNG] * 10}, "images", "1 to 9 items; got 10", "invalid_value"),
    ("images not an array", {"model": M, "images": {"a": 1}}, "images", "must be an array", "invalid_type"),
    ("images item not a string", {"model": M, "images": [PNG, 3]}, "images[1]", "must be a string", "invalid_type"),
    (
        "images item bad scheme",
        {"model": M, "images": [PNG, "file:///x"]},
        "images[1]",
        "scheme 'file'",
        "unsupported_url_scheme",
    ),
    ("videos four", {"model": M, "videos": ["https://example.com/a.mp4"] * 4}, "videos", "1 to 3 items; got 4", "invalid_value"),
    (
        "audios four",
        {"model": M, "images": [PNG], "audios": ["https://example.com/a.wav"] * 4},
        "audios",
        "1 to 3 items; got 4",
        "invalid_value",
    ),
    ("duration 4", {"model": M, "prompt": "x", "duration": 4}, "duration", "between 5 and 15", "invalid_value"),
    ("duration 16", {"model": M, "prompt": "x", "duration": 16}, "duration", "between 5 and 15", "invalid_value"),
    ("duration 5.5", {"model": M, "prompt": "x", "duration": 5.5}, "duration", "whole number", "invalid_value"),
    ("duration abc", {"model": M, "prompt": "x", "duration": "abc"}, "duration", "whole number", "invalid_type"),
    ("duration true", {"model": M, "prompt": "x", "duration": True}, "duration", "not a boolean", "invalid_type"),
    ("duration object", {"model": M, "prompt": "x", "duration": {}}, "duration", "must be an integer", "invalid_type"),
    ("duration string 20", {"model": M, "prompt": "x", "duration": "20"}, "duration", "between 5 and 15", "invalid_value"),
    ("aspect 4:3", {"model": M, "prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio", "one of 16:9, 1:1, 9:16", "invalid_value"),
    ("aspect number", {"model": M, "prompt": "x", "aspect_ratio": 1.77}, "aspect_ratio", "must be a string", "invalid_type"),
    (
        "extra_body not object",
        {"model": M, "prompt": "x", "extra_body": "seed=1"},
        "extra_body",
        "must be an object",
        "invalid_type",
    ),
    (
        "seed string",
        {"model": M, "prompt": "x", "extra_body": {"seed": "1"}},
        "extra_body.seed",
        "must be an integer",
        "invalid_type",
    ),
    (
        "seed fraction",
        {"model": M, "prompt": "x", "extra_body": {"seed": 1.5}},
        "extra_body.seed",
        "must be an integer",
        "invalid_type",
    ),
    (
        "seed bool",
        {"model": M, "prompt": "x", "extra_body": {"seed": True}},
        "extra_body.seed",
        "must be an integer",
        "invalid_type",
    ),
    (
        "seed below -1",
        {"model": M, "prompt": "x", "extra_body": {"seed": -2}},
        "extra_body.seed",
        "between -1 and 4294967295",
        "invalid_value",
    ),
    (
        "seed above max",
        {"model": M, "prompt": "x", "extra_body": {"seed": 4294967296}},
        "extra_body.seed",
        "between -1 and 4294967295",
        "invalid_value",
    ),
    (
        "negative_prompt type",
        {"model": M, "prompt": "x", "extra_body": {"negative_prompt": 5}},
        "extra_body.negative_prompt",
        "must be a string",
        "invalid_type",
    ),
    (
        "generate_audio type",
        {"model": M, "prompt": "x", "extra_body": {"generate_audio": "yes"}},
        "extra_body.generate_audio",
        "must be a boolean",
        "invalid_type",
    ),
    (
        "watermark type",
        {"model": M, "prompt": "x", "extra_body": {"watermark": 1}},
        "extra_body.watermark",
        "must be a boolean",
        "invalid_type",
    ),
    (
        "camera_fixed type",
        {"model": M, "prompt": "x", "extra_body": {"camera_fixed": "false"}},
        "extra_body.camera_fixed",
        "must be a boolean",
        "invalid_type",
    ),
    (
        "return_last_frame type",
        {"model": M, "prompt": "x", "extra_body": {"return_last_frame": 0}},
        "extra_body.return_last_frame",
        "must be a boolean",
        "invalid_type",
    ),
    (
        "callback_url type",
        {"model": M, "prompt": "x", "extra_body": {"callback_url": 5}},
        "extra_body.callback_url",
        "must be a string",
        "invalid_type",
    ),
    (
        "callback_url scheme",
        {"model": M, "prompt": "x", "extra_body": {"callback_url": "ftp://example.com/cb"}},
        "extra_body.callback_url",
        "http(s)://",
        "invalid_url",
    ),
]


@pytest.mark.parametrize("name,body,param,text,code", SHAPE_RULES, ids=[r[0] for r in SHAPE_RULES])
def test_rule(client, name, body, param, text, code):
    err(client.post("/v1/video/generations", json=body), 400, param, text, code)


def test_body_not_json(client):
    r = client.post("/v1/video/generations", content=b"{model: 1", headers={"Content-Type": "application/json"})
    err(r, 400, None, "not valid JSON", "invalid_json")


def test_body_not_an_object(client):
    err(client.post("/v1/video/generations", json=[{"model": M}]), 400, None, "must be a JSON object", "invalid_body")


def test_body_nan_is_not_json(client):
    r = client.post(
        "/v1/video/generations", content=b'{"model": "x", "duration": NaN}', headers={"Content-Type": "application/json"}
    )
    err(r, 400, None, "not valid JSON", "invalid_json")


def test_body_wrong_content_type(client):
    r = client.post("/v1/video/generations", content=b"model=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    err(r, 400, None, "Content-Type: application/json", "unsupported_content_type")


def test_body_over_limit_declared(server):
    """A declared body over 64 MiB is refused (413) before it is read."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/video/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 67108865\r\n\r\n{"model":'
        )
        reply = b""
        while b"body_too_large" not in reply:  # headers and body may come in separate reads
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"code":"body_too_large"' in reply


def test_body_over_limit_streamed(keyed_server):
    """A chunked body (no Content-Length) is cut off once it passes the limit (2 MB here)."""

    def chunks():
        yield b'{"model": "jisudance2.0-480p", "prompt": "'
        for _ in range(300):
            yield b"a" * 10_000
        yield b'"}'

    with keyed_server.client("k-alice") as c:
        r = c.post("/v1/video/generations", content=chunks(), headers={"Content-Type": "application/json"})
    err(r, 413, None, "larger than 2000000 bytes", "body_too_large")


def test_unknown_fields_ignored_and_extra_body_kept(client):
    body = {"model": M, "prompt": "x", "colour": "blue", "extra_body": {"seed": 3, "my_tag": {"a": [1]}}}
    r = client.post("/v1/video/generations", json=body)
    assert r.status_code == 200, r.text
    task = r.json()
    assert "colour" not in task
    assert task["extra_body"]["my_tag"] == {"a": [1]}
    assert task["seed"] == 3


@pytest.mark.parametrize("value,expected", [(5.0, 5), ("7", 7), ("6.0", 6), (None, 5), (15, 15)])
def test_duration_forms_accepted(client, value, expected):
    body = {"model": M, "prompt": "x", "duration": value}
    r = client.post("/v1/video/generations", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == expected


def test_seed_minus_one_means_random(client):
    seeds = set()
    for _ in range(3):
        r = client.post("/v1/video/generations", json={"model": M, "prompt": "x", "extra_body": {"seed": -1}})
        assert r.status_code == 200, r.text
        seed = r.json()["seed"]
        assert 0 <= seed <= 4294967295
        seeds.add(seed)
    assert len(seeds) == 3


def test_images_bare_string_counts_as_one(client):
    r = client.post("/v1/video/generations", json={"model": M, "images": PNG})
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "omni-reference"
    assert r.json()["aspect_ratio"] == "16:9"  # 400x240 is nearest to 16:9 of the three


def test_callback_url_to_loopback_refused(strict_server):
    with strict_server.client() as c:
        body = {"model": M, "prompt": "x", "extra_body": {"callback_url": "http://127.0.0.1:9/cb"}}
        err(c.post("/v1/video/generations", json=body), 400, "extra_body.callback_url", "loopback", "url_not_allowed")
