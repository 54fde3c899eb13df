"""Isolation between keys: key B can never see, list, cancel, delete or download key A's tasks
(a 404, exactly as for a task that does not exist), callbacks carry only their own task, keys
are stored hashed, and no key, signed-link token or data: URI reaches the server's log."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import sys

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uvicorn.logging import AccessFormatter

from opendance.logging import RedactingFilter, _redact_all, redact
from opendance.testing import media
from opendance.testing.server import LiveServer, wait_for_task

ALICE, BOB = "k-alice-5f1c2e", "k-bob-9a7d03"
CONFIG = """
[models."quick"]
resolution = "480p"
fps = 8
[models."quick".default]
engine = "scenario"
behaviour = "sleep"
steps = 2
step_seconds = 0.01
"""
GHOST = "task_" + "Q" * 32  # a task id nobody has


@pytest.fixture(scope="module")
def two_keys(tmp_path_factory, hostile_host):
    """A keyed server logging at info level (access log on), and one finished task per key,
    each with a callback and a last frame, both made with the same Idempotency-Key."""
    root = tmp_path_factory.mktemp("isolation")
    (root / "models.toml").write_text(CONFIG)
    env = {"OPENDANCE_API_KEYS": f"{ALICE},{BOB}", "OPENDANCE_LOG_LEVEL": "info", "OPENDANCE_ALLOW_HOSTS": "127.0.0.1"}
    with LiveServer(root / "data", env=env, config=root / "models.toml") as server:
        tasks = {}
        for key, hook in ((ALICE, "/cb-alice"), (BOB, "/cb-bob")):
            hostile_host.add(hook, b"")
            body = {
                "model": "quick",
                "prompt": "mine",
                "extra_body": {"return_last_frame": True, "callback_url": hostile_host.url(hook)},
            }
            with server.client(key) as c:
                r = c.post("/v1/video/generations", json=body, headers={"Idempotency-Key": "same-key"})
                assert r.status_code == 200, r.text
                tasks[key] = wait_for_task(c, r.json()["id"], timeout=60)
                assert tasks[key]["status"] == "completed", tasks[key]
        yield server, tasks


def not_found(r: httpx.Response) -> None:
    assert r.status_code == 404, (r.request.method, r.request.url, r.status_code, r.text)


def test_b_cannot_reach_a_task_by_any_route(two_keys):
    server, tasks = two_keys
    tid = tasks[ALICE]["id"]
    with server.client(BOB) as bob:
        for task_id in (tid, GHOST):  # A's task and no task at all answer alike
            for method, path in (
                ("GET", f"/v1/video/generations/{task_id}"),
                ("GET", f"/v1/videos/generations/{task_id}"),
                ("GET", f"/v1/videos/{task_id}"),
                ("GET", f"/v1/video/generations/{task_id}/content"),
                ("GET", f"/v1/video/generations/{task_id}/content?variant=last_frame"),
                ("GET", f"/v1/videos/{task_id}/content"),
                ("POST", f"/v1/video/generations/{task_id}/cancel"),
                ("DELETE", f"/v1/video/generations/{task_id}"),
                ("DELETE", f"/v1/videos/{task_id}"),
            ):
                not_found(bob.request(method, path))
        assert bob.get(f"/v1/video/generations/{tid}").json() == {
            "error": {**bob.get(f"/v1/video/generations/{GHOST}").json()["error"], "message": f"no task {tid!r}"}
        }
    with server.client(ALICE) as alice:  # and A's task is untouched by all of that
        assert alice.get(f"/v1/video/generations/{tid}").json()["status"] == "completed"
        assert alice.get(f"/v1/video/generations/{tid}/content").status_code == 200


@pytest.mark.parametrize(
    "params",
    [{}, {"status": "completed"}, {"model": "quick"}, {"order": "asc"}, {"limit": 100}, {"after": "A"}],
    ids=["plain", "status", "model", "asc", "limit", "after-a-cursor"],
)
def test_b_lists_only_its_own(two_keys, params):
    server, tasks = two_keys
    if params.get("after") == "A":
        params = {"after": tasks[ALICE]["id"]}  # A's id as a cursor is as good as an unknown one
    with server.client(BOB) as bob:
        listed = bob.get("/v1/video/generations", params=params).json()["data"]
        ids = {t["id"] for t in listed}
        assert tasks[ALICE]["id"] not in ids
        if "after" in params:
            assert listed == bob.get("/v1/video/generations", params={"after": GHOST}).json()["data"] == []
        else:
            assert ids == {tasks[BOB]["id"]}
        assert tasks[ALICE]["id"] not in {t["id"] for t in bob.get("/v1/videos").json()["data"]}


def test_idempotency_keys_are_per_api_key(two_keys):
    """Both keys sent Idempotency-Key "same-key" with the same body: two tasks, not one, and
    not a 409 that would tell B that A used that key."""
    _server, tasks = two_keys
    assert tasks[ALICE]["id"] != tasks[BOB]["id"]


def test_signed_links_open_one_task_and_one_variant(two_keys):
    server, tasks = two_keys
    task = tasks[ALICE]
    video, frame = task["video_url"], task["result"]["last_frame_url"]
    assert httpx.get(video).status_code == 200 and httpx.get(frame).status_code == 200  # no key needed
    token = video.split("token=")[1]
    not_found(httpx.get(f"{server.url}/v1/video/generations/{tasks[BOB]['id']}/content?token={token}"))
    not_found(httpx.get(f"{server.url}/v1/video/generations/{task['id']}/content?variant=last_frame&token={token}"))
    not_found(httpx.get(video, headers={"Authorization": f"Bearer {BOB}"}))  # B's key with A's link is still B


def test_callbacks_carry_only_their_own_task(two_keys, hostile_host):
    _server, tasks = two_keys
    for key, hook in ((ALICE, "/cb-alice"), (BOB, "/cb-bob")):
        posted = [json.loads(r["body"]) for r in hostile_host.requests if r["method"] == "POST" and r["path"] == hook]
        assert posted and {p["id"] for p in posted} == {tasks[key]["id"]}
        assert {"queued", "completed"} <= {p["status"] for p in posted}
        assert all("authorization" not in {h.lower() for h in r["headers"]} for r in hostile_host.requests)


def test_keys_are_stored_hashed(two_keys):
    server, _tasks = two_keys
    db = server.data_dir / "opendance.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        owners = {row[0] for row in conn.execute("select owner from tasks")}
    assert owners == {hashlib.sha256(k.encode()).hexdigest()[:32] for k in (ALICE, BOB)}
    for path in server.data_dir.glob("opendance.db*"):
        raw = path.read_bytes()
        assert ALICE.encode() not in raw and BOB.encode() not in raw, path


def test_logs_hold_no_key_token_or_data_uri(two_keys):
    server, tasks = two_keys
    payload = "U2VjcmV0UGl4ZWxzT2ZTb21lb25l"  # what a private picture's base64 would look like
    picture = media.data_uri(media.image_bytes(32, 32), "image/png")  # too small: refused with a 400
    with server.client(ALICE) as alice:
        alice.get("/v1/video/generations", params={"model": f"data:image/png;base64,{payload}"})
        assert alice.post("/v1/video/generations", json={"model": "quick", "image": picture}).status_code == 400
    httpx.get(tasks[ALICE]["video_url"])
    httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer k-mallory-guess"})
    log = server.log_path.read_text(errors="replace")
    assert "GET /v1/video/generations" in log and "token=[redacted]" in log  # the access log is on
    for secret in (
        ALICE,
        BOB,
        "k-mallory-guess",
        payload,
        picture.split(",")[1][:40],
        tasks[ALICE]["video_url"].split("token=")[1],
    ):
        assert secret not in log, secret


def test_the_log_filter_on_uvicorn_access_lines_and_tracebacks():
    """The filter keeps uvicorn's access-log fields a tuple (its formatter unpacks them) and
    redacts exception text too."""
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/v1/x/content?variant=video&token=0123abcd", "1.1", 200),
        None,
    )
    assert RedactingFilter().filter(record)
    line = AccessFormatter(fmt="%(client_addr)s %(request_line)s %(status_code)s", use_colors=False).format(record)
    assert line == "127.0.0.1:5 GET /v1/x/content?variant=video&token=[redacted] HTTP/1.1 200 OK"
    try:
        raise ValueError(f"bad header Authorization: Bearer {ALICE} for data:image/png;base64,AAAABBBB")
    except ValueError:
        record = logging.LogRecord("opendance", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert ALICE not in text and "AAAABBBB" not in text and "Authorization: [redacted]" in text


# Text built from the pieces the redaction patterns look for, in any case, with the non-ASCII
# letters that re.IGNORECASE folds onto ASCII ones (U+017F is "s", U+212A is "k").
_PIECES = st.sampled_from(
    [
        "bearer ",
        "Basic\t",
        "AUTHORIZATION: ",
        "'authorization'=",
        "token=",
        "Sig=",
        "x-amz-signature=",
        "apikey=",
        "x-amz-credential=",
        "ACCESS_TOKEN=",
        "api_key%3d",
        "limit=20",
        "after=task_1",
        "key%3D",
        "data:",
        "DATA%3a",
        "%3F",
        "%26",
        "?",
        "&",
        ";",
        ",",
        "image/png",
        "/v1/x",
        "abc",
        " ",
        "\u017f",
        "\u212a",
        "ba\u017fic ",
        "to\u212aen=",
    ]
)


@settings(max_examples=600, deadline=None)
@given(st.lists(_PIECES, max_size=8).map("".join))
def test_redact_skips_only_text_no_pattern_can_match(text):
    """``redact`` returns text unscanned when it holds none of the patterns' needles: exactly
    what running all four patterns gives, for any mix of their pieces."""
    assert redact(text) == _redact_all(text)
