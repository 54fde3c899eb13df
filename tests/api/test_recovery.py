"""A crash loses nothing: SIGKILL the server mid-task, start it again, the task completes."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx

from opendance.media.encode import probe_mp4
from opendance.testing.http import MediaHost
from opendance.testing.server import LiveServer, wait_for_task

CONFIG = """
[models."slow"]
resolution = "480p"
fps = 8
[models."slow".default]
engine = "scenario"
behaviour = "sleep"
steps = 20
step_seconds = 0.15

[models."crashy"]
resolution = "480p"
fps = 8
[models."crashy".default]
engine = "scenario"
behaviour = "crash_once"
steps = 6
step_seconds = 0.05
marker_dir = "{markers}"

[models."always-crashes"]
resolution = "480p"
fps = 8
[models."always-crashes".default]
engine = "scenario"
behaviour = "crash"
steps = 4
step_seconds = 0.01
"""


def make_server(tmp_path) -> LiveServer:
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    cfg = tmp_path / "models.toml"
    cfg.write_text(CONFIG.format(markers=markers))
    return LiveServer(tmp_path / "data", config=cfg)


def test_sigkill_mid_task_then_restart(tmp_path):
    server = make_server(tmp_path).start()
    try:
        with server.client() as c:
            running = c.post("/v1/video/generations", json={"model": "slow", "prompt": "a"}).json()["id"]
            queued = c.post("/v1/video/generations", json={"model": "slow", "prompt": "b", "duration": 6}).json()["id"]
            while c.get(f"/v1/video/generations/{running}").json()["progress"] < 20:
                time.sleep(0.05)
            before = c.get(f"/v1/video/generations/{running}").json()
            assert before["status"] == "in_progress"
        server.kill()  # SIGKILL: API process and worker, no cleanup
        server.start()
        with server.client() as c:
            after = c.get(f"/v1/video/generations/{running}").json()
            assert after["progress"] >= before["progress"]  # progress never goes down
            for tid, duration in ((running, 5), (queued, 6)):
                task = wait_for_task(c, tid, timeout=60)
                assert task["status"] == "completed", task
                path = tmp_path / f"{tid}.mp4"
                path.write_bytes(c.get(f"/v1/video/generations/{tid}/content").content)
                info = probe_mp4(path)
                assert (info["width"], info["height"]) == (864, 480)
                assert abs(info["duration"] - duration) <= 1 / 8 + 1e-6
            everything = c.get("/v1/video/generations", params={"limit": 100}).json()["data"]
            assert {t["status"] for t in everything} == {"completed"}
    finally:
        server.kill()


def test_api_process_killed_alone(tmp_path):
    """Only the API process dies; its orphaned worker exits and the task is run again."""
    server = make_server(tmp_path).start()
    try:
        with server.client() as c:
            tid = c.post("/v1/video/generations", json={"model": "slow", "prompt": "a"}).json()["id"]
            while c.get(f"/v1/video/generations/{tid}").json()["status"] != "in_progress":
                time.sleep(0.05)
        server.kill_server_only()
        server.start()
        with server.client() as c:
            task = wait_for_task(c, tid, timeout=60)
            assert task["status"] == "completed", task
    finally:
        server.kill()


def test_worker_crash_is_retried_then_given_up(tmp_path):
    server = make_server(tmp_path).start()
    try:
        with server.client() as c:
            once = c.post("/v1/video/generations", json={"model": "crashy", "prompt": "a"}).json()["id"]
            task = wait_for_task(c, once, timeout=60)
            assert task["status"] == "completed", task  # the worker died once, was restarted, ran it again
            always = c.post("/v1/video/generations", json={"model": "always-crashes", "prompt": "a"}).json()["id"]
            task = wait_for_task(c, always, timeout=60)
            assert (task["status"], task["raw_status"]) == ("failed", "FAILED")
            assert task["error"]["code"] == "interrupted"
            assert "3 times" in task["error"]["message"]
            # And the server keeps serving.
            ok = c.post("/v1/video/generations", json={"model": "slow", "prompt": "after"}).json()["id"]
            assert wait_for_task(c, ok, timeout=60)["status"] == "completed"
            assert httpx.get(server.url + "/readyz").status_code == 200
    finally:
        server.kill()


def test_callbacks_pending_at_a_crash_are_sent_after_the_restart(tmp_path):
    """The receiver answers 503 while the task runs (every POST retried); the server is killed;
    once it is back (and the receiver answers 200) the task's current object is delivered, and
    only once: a second restart sends nothing more."""
    cfg = tmp_path / "models.toml"
    cfg.write_text(CONFIG.format(markers=tmp_path))
    env = {"OPENDANCE_ALLOW_HOSTS": "127.0.0.1", "OPENDANCE_CALLBACK_ATTEMPTS": "30", "OPENDANCE_CALLBACK_TIMEOUT": "1"}
    with MediaHost() as hook:
        hook.post_status = 503
        server = LiveServer(tmp_path / "data", config=cfg, env=env).start()
        try:
            body = {"model": "slow", "prompt": "a", "extra_body": {"callback_url": hook.url + "/hook"}}
            with server.client() as c:
                tid = c.post("/v1/video/generations", json=body).json()["id"]
                assert wait_for_task(c, tid, timeout=60)["status"] == "completed"
            server.kill()
            assert hook.posts  # tried, refused
            hook.posts.clear()
            hook.post_status = 200
            server.start()
            deadline = time.monotonic() + 30
            while not hook.posts and time.monotonic() < deadline:
                time.sleep(0.1)
            delivered = [json.loads(b) for _, b in hook.posts]
            assert [(p["id"], p["status"]) for p in delivered] == [(tid, "completed")]
            assert delivered[0]["video_url"]
            db = sqlite3.connect(tmp_path / "data" / "opendance.db")
            try:  # the mark is cleared right after the POST
                pending = "select callback_pending from tasks where id = ?"
                deadline = time.monotonic() + 30
                while db.execute(pending, (tid,)).fetchone()[0] is not None and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert db.execute(pending, (tid,)).fetchone()[0] is None
            finally:
                db.close()
            server.kill()
            server.start()
            time.sleep(3.0)
            assert len(hook.posts) == 1, hook.posts
        finally:
            server.kill()
