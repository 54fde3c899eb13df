"""The task lifecycle through HTTP: create, get, list, content with Range, cancel, delete,
callbacks, models, health and metrics."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from opendance.media.encode import probe_mp4
from opendance.testing.server import LiveServer, wait_for_task

M = "jisudance2.0-480p"
SEED_EXAMPLE = {"model": "jisudance2.0-480p", "prompt": " ", "duration": 5, "aspect_ratio": "9:16"}
TASK_KEYS = {"id", "task_id", "object", "model", "status", "raw_status", "progress", "created_at", "error", "result", "video_url"}


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """Seed names on preview, plus 'slow' (scenario engine: 30 steps x 0.1 s) to catch tasks mid-run."""
    d = tmp_path_factory.mktemp("slow")
    cfg = d / "models.toml"
    cfg.write_text(
        """
[models."jisudance2.0-480p"]
resolution = "480p"
[models."jisudance2.0-480p".default]
engine = "preview"

[models."slow"]
resolution = "480p"
fps = 8
[models."slow".default]
engine = "scenario"
behaviour = "sleep"
steps = 30
step_seconds = 0.1
"""
    )
    with LiveServer(d / "data", config=cfg, env={"OPENDANCE_ALLOW_HOSTS": "127.0.0.1"}) as s:
        yield s


def test_seed_example_makes_the_promised_mp4(client, tmp_path):
    r = client.post("/v1/video/generations", json=SEED_EXAMPLE)
    assert r.status_code == 200, r.text
    task = r.json()
    assert TASK_KEYS <= set(task)
    assert task["status"] == "queued" and task["raw_status"] == "QUEUED"
    assert task["id"] == task["task_id"] and task["id"].startswith("task_") and len(task["id"]) == 37
    assert task["object"] == "video.generation.job"
    assert task["result"] is None and task["video_url"] is None and task["error"] is None
    assert task["engine"] == "preview"
    assert (task["width"], task["height"]) == (480, 864)

    done = wait_for_task(client, task["id"])
    assert done["status"] == "completed" and done["raw_status"] == "COMPLETED", done
    assert done["progress"] == 100
    assert done["result"]["outputs"] == [done["video_url"]] == [done["result"]["video_url"]]
    assert done["video_url"].endswith(f"/v1/video/generations/{task['id']}/content")

    video = httpx.get(done["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    path = tmp_path / "out.mp4"
    path.write_bytes(video.content)
    info = probe_mp4(path)
    assert (info["width"], info["height"]) == (480, 864)
    assert abs(info["duration"] - 5.0) <= 1 / info["fps"] + 1e-6
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["faststart"]


def test_content_range(client):
    task = wait_for_task(client, client.post("/v1/video/generations", json={"model": M, "prompt": "range"}).json()["id"])
    url = f"/v1/video/generations/{task['id']}/content"
    full = client.get(url).content
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == full[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(full)}"
    assert client.get(f"/v1/videos/{task['id']}/content").content == full  # alias


def test_get_aliases_and_unknown(client):
    tid = client.post("/v1/videos/generations", json={"model": M, "prompt": "alias"}).json()["id"]
    for path in (f"/v1/video/generations/{tid}", f"/v1/videos/generations/{tid}", f"/v1/videos/{tid}"):
        assert client.get(path).json()["id"] == tid
    r = client.get("/v1/video/generations/task_doesnotexist")
    assert r.status_code == 404 and r.json()["error"]["param"] == "task_id"


def test_progress_never_goes_down_and_cancel(slow_server):
    with slow_server.client() as c:
        tid = c.post("/v1/video/generations", json={"model": "slow", "prompt": "x"}).json()["id"]
        seen = []
        while True:
            t = c.get(f"/v1/video/generations/{tid}").json()
            seen.append(t["progress"])
            if t["progress"] >= 30:
                break
            assert t["status"] in ("queued", "in_progress")
            time.sleep(0.05)
        assert seen == sorted(seen)
        r = c.post(f"/v1/video/generations/{tid}/cancel")
        assert r.status_code == 200, r.text
        t = r.json()
        assert (t["status"], t["raw_status"]) == ("failed", "CANCELLED")
        assert t["error"]["code"] == "cancelled"
        time.sleep(0.5)
        assert c.get(f"/v1/video/generations/{tid}").json()["raw_status"] == "CANCELLED"
        r = c.post(f"/v1/video/generations/{tid}/cancel")
        assert r.status_code == 409 and r.json()["error"]["code"] == "task_not_cancellable"
        assert c.get(f"/v1/video/generations/{tid}/content").status_code == 409
        # No output is left behind for a cancelled task.
        assert not (slow_server.data_dir / "files" / "tasks" / tid / "video.mp4").exists()


def test_cancel_queued_and_delete_rules(slow_server):
    with slow_server.client() as c:
        first = c.post("/v1/video/generations", json={"model": "slow", "prompt": "a"}).json()["id"]
        second = c.post("/v1/video/generations", json={"model": "slow", "prompt": "b"}).json()["id"]
        assert c.get(f"/v1/video/generations/{second}").json()["status"] == "queued"
        r = c.delete(f"/v1/video/generations/{second}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "task_not_finished"
        assert c.post(f"/v1/video/generations/{second}/cancel").json()["raw_status"] == "CANCELLED"
        assert c.delete(f"/v1/video/generations/{second}").status_code == 200
        assert c.get(f"/v1/video/generations/{second}").status_code == 404
        done = wait_for_task(c, first)
        assert done["status"] == "completed"
        video = slow_server.data_dir / "files" / "tasks" / first / "video.mp4"
        assert video.exists()
        assert c.delete(f"/v1/video/generations/{first}").json()["deleted"] is True
        assert not video.exists()
        assert c.get(f"/v1/video/generations/{first}/content").status_code == 404


def test_list_pages_and_filters(slow_server):
    with slow_server.client() as c:
        ids = [c.post("/v1/video/generations", json={"model": M, "prompt": f"p{i}"}).json()["id"] for i in range(5)]
        page = c.get("/v1/video/generations", params={"limit": 2, "model": M}).json()
        assert page["object"] == "list" and page["has_more"] is True
        assert [t["id"] for t in page["data"]] == ids[::-1][:2]
        assert page["first_id"] == ids[4] and page["last_id"] == ids[3]
        rest = c.get("/v1/video/generations", params={"limit": 100, "after": page["last_id"], "model": M}).json()
        assert [t["id"] for t in rest["data"]][:3] == ids[::-1][2:]
        for tid in ids:
            wait_for_task(c, tid)
        completed = c.get("/v1/video/generations", params={"status": "completed", "limit": 100}).json()["data"]
        assert set(ids) <= {t["id"] for t in completed}
        for bad, param in (
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "limit"),
            ({"limit": "x"}, "limit"),
            ({"status": "done"}, "status"),
        ):
            r = c.get("/v1/video/generations", params=bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_return_last_frame(client):
    body = {"model": M, "prompt": "last", "extra_body": {"return_last_frame": True}}
    task = wait_for_task(client, client.post("/v1/video/generations", json=body).json()["id"])
    url = task["result"]["last_frame_url"]
    r = httpx.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(r.content)).size == (864, 480)


def test_callbacks_follow_every_status(client, media_host):
    media_host.posts.clear()
    body = {"model": M, "prompt": "cb", "extra_body": {"callback_url": media_host.url + "/hook"}}
    tid = client.post("/v1/video/generations", json=body).json()["id"]
    wait_for_task(client, tid)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        statuses = [json.loads(b)["status"] for p, b in media_host.posts if p == "/hook" and json.loads(b)["id"] == tid]
        if statuses and statuses[-1] == "completed":
            break
        time.sleep(0.1)
    assert statuses == ["queued", "in_progress", "completed"], statuses
    last = json.loads([b for p, b in media_host.posts if p == "/hook"][-1])
    assert last["video_url"] and last["progress"] == 100


def test_models_health_metrics(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    names = {m["id"] for m in models["data"]}
    assert names == {"jisudance2.0-480p", "jisudance2.0-720p", "jisudance2.0-fast-480p", "jisudance2.0-fast-720p"}
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ok" and ready["checks"]["runner"]["workers_alive"] >= 1  # up to cpu_slots
    metrics = client.get("/metrics").text
    assert "opendance_tasks_created_total" in metrics
    assert 'opendance_http_requests_total{method="GET",route="/v1/models",status="200"}' in metrics


def test_unknown_route_has_the_error_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_retention_deletes_finished_tasks(tmp_path):
    """With a retention of ~1 s, a finished task and its file are gone shortly after."""
    with LiveServer(tmp_path / "data", env={"OPENDANCE_RETENTION_HOURS": "0.0003"}) as s, s.client() as c:
        tid = c.post("/v1/video/generations", json={"model": M, "prompt": "short-lived"}).json()["id"]
        assert wait_for_task(c, tid)["status"] == "completed"
        video = s.data_dir / "files" / "tasks" / tid / "video.mp4"
        deadline = time.monotonic() + 30
        while c.get(f"/v1/video/generations/{tid}").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get(f"/v1/video/generations/{tid}").status_code == 404
        assert not video.exists()
