"""Keys in the store (``opendance keys``, ``/v1/admin/keys``), their quotas and models, revoking,
and usage, on a live server whose database the CLI writes to as an operator would."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkAuthenticationError, ArkRateLimitError

from opendance.testing.server import LiveServer, wait_for_task

ENV_KEY = "k-env"
MODELS = """
[models."quick"]
resolution = "480p"
fps = 8
[models."quick".default]
engine = "scenario"
steps = 2
step_seconds = 0.02

[models."other"]
resolution = "720p"
fps = 8
[models."other".default]
engine = "scenario"
steps = 2
step_seconds = 0.02

[models."slow"]
resolution = "480p"
fps = 8
[models."slow".default]
engine = "scenario"
steps = 300
step_seconds = 0.05

[models."broken"]
resolution = "480p"
fps = 8
[models."broken".default]
engine = "scenario"
behaviour = "fail"
"""


class Operator:
    """``opendance keys ...`` / ``opendance usage`` on one server's data directory."""

    def __init__(self, data_dir, config) -> None:
        self.data_dir, self.config = data_dir, config

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDANCE_")}
        return subprocess.run(
            [sys.executable, "-m", "opendance", *args, "--data-dir", str(self.data_dir), "--config", str(self.config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def create(self, name: str, *flags: str) -> str:
        done = self.run("keys", "create", "--name", name, *flags)
        assert done.returncode == 0, done.stderr
        key = done.stdout.strip()
        assert key.startswith("od-") and len(key) == 46 and "\n" not in key
        return key


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    config = root / "models.toml"
    config.write_text(MODELS)
    operator = Operator(root / "data", config)
    admin = operator.create("root", "--admin")
    server_env = {"OPENDANCE_API_KEYS": ENV_KEY, "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(root / "data", env=server_env, config=config) as server:
        yield server, operator, admin


def create(c: httpx.Client, model: str = "quick", duration: int = 5, **extra) -> httpx.Response:
    return c.post("/v1/video/generations", json={"model": model, "prompt": "x", "duration": duration, **extra})


def test_the_store_keeps_only_a_hash(env):
    server, operator, _ = env
    key = operator.create("hashed")
    with server.client(key) as c:
        assert c.get("/v1/models").status_code == 200
    db = sqlite3.connect(operator.data_dir / "opendance.db")
    try:
        rows = db.execute("SELECT * FROM api_keys").fetchall()
        ((digest, hint),) = db.execute("SELECT key_hash, hint FROM api_keys WHERE name = 'hashed'").fetchall()
    finally:
        db.close()
    assert rows and not any(key in str(value) for row in rows for value in row)  # not in any column of any key
    assert digest == hashlib.sha256(key.encode()).hexdigest() and hint == key[:7]
    listing = operator.run("keys", "list")
    assert listing.returncode == 0 and "hashed" in listing.stdout and key not in listing.stdout


def test_seconds_per_day(env):
    server, operator, _ = env
    key = operator.create("daily", "--seconds-per-day", "10")
    with server.client(key) as c:
        first, second = create(c), create(c)
        assert first.status_code == second.status_code == 200
        refused = create(c)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("quota_exceeded", "rate_limit_error")
        assert "10 s of video per UTC day; 10 s are used today" in error["message"]
        assert 0 < int(refused.headers["Retry-After"]) <= 86400
        for r in (first, second):
            assert wait_for_task(c, r.json()["id"])["status"] == "completed"
        assert create(c).status_code == 429  # finished tasks still count: they made video
        # Deleting them gives nothing back, and their usage stays.
        assert c.delete(f"/v1/video/generations/{first.json()['id']}").status_code == 200
        assert c.delete(f"/api/v3/contents/generations/tasks/{second.json()['id']}").status_code == 200
        assert create(c).status_code == 429
        (row,) = c.get("/v1/usage").json()["data"]
        assert (row["model"], row["video_seconds"], row["completed"]) == ("quick", 10, 2)
    listing = operator.run("keys", "list")
    line = next(line for line in listing.stdout.splitlines() if line.startswith("daily "))
    assert " 10 s " in line + " "


def test_failed_and_cancelled_tasks_are_not_charged(env):
    server, _, _ = env
    key = env[1].create("refunds", "--seconds-per-day", "5")
    with server.client(key) as c:
        failed = create(c, "broken").json()["id"]
        assert wait_for_task(c, failed)["status"] == "failed"
        slow = create(c, "slow").json()["id"]
        assert create(c).status_code == 429  # the slow one holds today's 5 s
        assert c.post(f"/v1/video/generations/{slow}/cancel").status_code == 200
        assert create(c).status_code == 200


def test_max_concurrent(env):
    server, operator, _ = env
    key = operator.create("one-at-a-time", "--max-concurrent", "1")
    with server.client(key) as c:
        running = create(c, "slow")
        assert running.status_code == 200
        refused = create(c)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
        assert "at most 1 tasks queued or running at once" in refused.json()["error"]["message"]
        # The OpenAI and Ark routes count the same tasks.
        assert c.post("/v1/videos", json={"model": "quick", "prompt": "x"}).status_code == 429
        with Ark(base_url=server.url + "/api/v3", api_key=key, max_retries=0) as ark, pytest.raises(ArkRateLimitError) as err:
            ark.content_generation.tasks.create(model="quick", content=[{"type": "text", "text": "x"}])
        assert err.value.code == "QuotaExceeded"
        assert c.post(f"/v1/video/generations/{running.json()['id']}/cancel").status_code == 200
        done = create(c)
        assert done.status_code == 200
        wait_for_task(c, done.json()["id"])


def test_models_hides_the_others(env):
    server, operator, _ = env
    key = operator.create("only-quick", "--models", "quick")
    with server.client(key) as c, server.client(ENV_KEY) as full:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["quick"]
        assert len(full.get("/v1/models").json()["data"]) == 4
        hidden, unknown = create(c, "other"), create(c, "no-such-model")
        assert hidden.status_code == unknown.status_code == 400
        assert hidden.json()["error"]["message"].replace("'other'", "'no-such-model'") == unknown.json()["error"]["message"]
        assert hidden.json()["error"]["code"] == "model_not_found" and "one of: quick" in hidden.json()["error"]["message"]
        # A size only the hidden model makes is a size no model makes, for this key.
        r = c.post("/v1/videos", json={"prompt": "x", "size": "1280x720"})
        assert (
            r.status_code == 400
            and "864x480" in r.json()["error"]["message"]
            and "1280x720, " not in r.json()["error"]["message"]
        )
        r = c.post("/api/v3/contents/generations/tasks", json={"model": "other", "content": [{"type": "text", "text": "x"}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidEndpointOrModel.NotFound"
        assert create(c).status_code == 200


def test_revoke_is_a_401_on_the_next_request(env):
    server, operator, admin = env
    cli_key, api_key = operator.create("to-revoke"), operator.create("to-revoke-api")
    with server.client(cli_key) as c, server.client(api_key) as d, server.client(admin) as root:
        assert c.get("/v1/models").status_code == 200 and d.get("/v1/models").status_code == 200
        done = operator.run("keys", "revoke", "to-revoke")
        assert done.returncode == 0 and "revoked" in done.stdout
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["message"] == "this API key was revoked"
        assert root.delete("/v1/admin/keys/to-revoke-api").json()["revoked_at"] is not None
        assert d.get("/v1/video/generations").status_code == 401
    with Ark(base_url=server.url + "/api/v3", api_key=cli_key, max_retries=0) as ark, pytest.raises(ArkAuthenticationError):
        ark.content_generation.tasks.list()
    assert operator.run("keys", "revoke", "no-such-key").returncode == 2


def test_usage_counts_the_tasks_made(env):
    server, operator, admin = env
    key = operator.create("counted")
    with server.client(key) as c:
        made = [create(c, "quick", 5), create(c, "quick", 6), create(c, "other", 7), create(c, "broken")]
        for r in made:
            wait_for_task(c, r.json()["id"])
        cancelled = create(c, "slow").json()["id"]
        c.post(f"/v1/video/generations/{cancelled}/cancel")
        today = time.strftime("%Y-%m-%d", time.gmtime())
        usage = c.get("/v1/usage", params={"from": today, "to": today}).json()
        assert usage["key"] == "counted" and (usage["from"], usage["to"]) == (today, today)
        rows = {r["model"]: r for r in usage["data"]}
        assert {m: (r["video_seconds"], r["completed"], r["failed"], r["cancelled"]) for m, r in rows.items()} == {
            "quick": (11, 2, 0, 0),
            "other": (7, 1, 0, 0),
            "broken": (0, 0, 1, 0),
            "slow": (0, 0, 0, 1),
        }
        assert {r["date"] for r in usage["data"]} == {today}
        assert c.get("/v1/usage", params={"key": "root"}).status_code == 403  # only admins read other keys
        assert c.get("/v1/usage", params={"from": "2026-13-01"}).json()["error"]["param"] == "from"
    with server.client(admin) as root:
        assert root.get("/v1/usage", params={"key": "counted"}).json()["data"] == usage["data"]
    printed = operator.run("usage", "--key", "counted")
    assert printed.returncode == 0, printed.stderr
    lines = [line.split() for line in printed.stdout.splitlines()[1:]]
    assert sorted((m, int(s), int(ok), int(bad), int(cancel)) for _, _, m, s, ok, bad, cancel, _ in lines) == sorted(
        (m, *v) for m, v in {"quick": (11, 2, 0, 0), "other": (7, 1, 0, 0), "broken": (0, 0, 1, 0), "slow": (0, 0, 0, 1)}.items()
    )


def test_admin_api(env):
    server, _, admin = env
    with server.client(admin) as root, server.client(ENV_KEY) as plain:
        made = root.post("/v1/admin/keys", json={"name": "from-api", "seconds_per_day": 30, "models": ["quick"]})
        assert made.status_code == 200, made.text
        body = made.json()
        assert body["key"].startswith("od-") and body["seconds_per_day"] == 30 and body["models"] == ["quick"]
        with server.client(body["key"]) as new:
            assert [m["id"] for m in new.get("/v1/models").json()["data"]] == ["quick"]
            assert new.get("/v1/admin/keys").status_code == 403  # not an admin key
        listed = {k["name"]: k for k in root.get("/v1/admin/keys").json()["data"]}
        assert "from-api" in listed and "key" not in listed["from-api"] and listed["root"]["admin"] is True
        assert listed["from-api"]["last_used_at"] is not None
        for bad in (
            {"name": "from-api"},
            {"name": "bad name"},
            {"name": "x", "models": ["nope"]},
            {"name": "y", "max_concurrent": 0},
        ):
            r = root.post("/v1/admin/keys", json=bad)
            assert r.status_code == 400, (bad, r.text)
        assert root.delete("/v1/admin/keys/nope").status_code == 404
        r = plain.post("/v1/admin/keys", json={"name": "sneaky"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"  # env keys are not admins


def test_env_and_store_keys_own_their_tasks(env):
    server, operator, _ = env
    key = operator.create("isolated")
    with server.client(key) as mine, server.client(ENV_KEY) as theirs:
        a, b = create(mine).json()["id"], create(theirs).json()["id"]
        assert mine.get(f"/v1/video/generations/{b}").status_code == 404
        assert theirs.get(f"/v1/video/generations/{a}").status_code == 404
        assert mine.get(f"/api/v3/contents/generations/tasks/{b}").status_code == 404
        assert wait_for_task(mine, a)["status"] == "completed" and wait_for_task(theirs, b)["status"] == "completed"
        assert a in {t["id"] for t in mine.get("/v1/video/generations").json()["data"]}
        assert b not in {t["id"] for t in mine.get("/v1/video/generations").json()["data"]}


def test_an_open_server_closes_once_a_key_exists(tmp_path):
    config = tmp_path / "models.toml"
    config.write_text(MODELS)
    operator = Operator(tmp_path / "data", config)
    with LiveServer(tmp_path / "data", config=config) as server:
        assert httpx.get(server.url + "/v1/models").status_code == 200
        task = create(httpx.Client(base_url=server.url)).json()
        assert "token=" not in (wait_for_task(httpx.Client(base_url=server.url), task["id"])["video_url"])
        key = operator.create("first")
        assert httpx.get(server.url + "/v1/models").status_code == 401  # no restart needed
        with server.client(key) as c:
            assert c.get("/v1/models").status_code == 200
            done = wait_for_task(c, create(c).json()["id"])
            assert "token=" in done["video_url"] and httpx.get(done["video_url"]).status_code == 200
        operator.run("keys", "revoke", "first")
        assert httpx.get(server.url + "/v1/models").status_code == 401  # revoking the last key does not reopen it
