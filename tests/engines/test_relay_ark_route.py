"""The relay's ``ark`` protocol against a real Ark-native upstream: a second opendance server's
``/api/v3``, configured only through the models file (as an operator relays to BytePlus
ModelArk). The upstream keeps its own tasks, so the test reads what reached it with the
official Ark SDK."""

from __future__ import annotations

import time

import httpx
import pytest
from volcenginesdkarkruntime import Ark

from opendance.media.encode import probe_mp4
from opendance.testing.media import data_uri, image_bytes
from opendance.testing.server import LiveServer, wait_for_task

KEY, KEY_ENV = "upstream-ark-key", "OPENDANCE_TEST_UPSTREAM_ARK_KEY"
UPSTREAM_MODELS = """
[models."up-480p"]
resolution = "480p"
fps = 8
[models."up-480p".default]
engine = "scenario"
steps = 2
step_seconds = 0.02

[models."up-slow"]
resolution = "480p"
fps = 8
[models."up-slow".default]
engine = "scenario"
steps = 400
step_seconds = 0.05
"""
RELAY_MODELS = """
[models."via-ark"]
resolution = "480p"
fps = 8
[models."via-ark".default]
engine = "relay"
protocol = "ark"
base_url = "{base_url}"
upstream_model = "up-480p"
api_key_env = "{key_env}"
poll_interval = 0.1

[models."via-ark-slow"]
resolution = "480p"
fps = 8
[models."via-ark-slow".default]
engine = "relay"
protocol = "ark"
base_url = "{base_url}"
upstream_model = "up-slow"
api_key_env = "{key_env}"
poll_interval = 0.1
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("relay-ark-route")
    (root / "upstream.toml").write_text(UPSTREAM_MODELS)
    (root / "relay.toml").write_text("")
    up_env = {"OPENDANCE_API_KEYS": KEY, "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(root / "up", env=up_env, config=root / "upstream.toml") as upstream:
        (root / "relay.toml").write_text(RELAY_MODELS.format(base_url=upstream.url + "/api/v3", key_env=KEY_ENV))
        with LiveServer(root / "relay", env={KEY_ENV: KEY}, config=root / "relay.toml") as relay:
            yield relay, upstream


@pytest.fixture
def upstream_ark(servers):
    with Ark(base_url=servers[1].url + "/api/v3", api_key=KEY, max_retries=0) as ark:
        yield ark


def test_a_model_relayed_through_api_v3(servers, upstream_ark, tmp_path):
    relay, _ = servers
    with relay.client() as c:
        r = c.post(
            "/v1/video/generations",
            json={
                "model": "via-ark",
                "prompt": "relayed fox",
                "duration": 6,
                "aspect_ratio": "9:16",
                "extra_body": {"seed": 77, "camera_fixed": True},
            },
        )
        assert r.status_code == 200, r.text
        task = wait_for_task(c, r.json()["id"])
        assert task["status"] == "completed" and task["engine"] == "relay", task
        path = tmp_path / "relayed.mp4"
        path.write_bytes(c.get(task["video_url"]).content)
    info = probe_mp4(path)
    assert (info["width"], info["height"]) == (480, 864)
    assert abs(info["duration"] - 6.0) <= 1 / info["fps"] + 1e-6
    page = upstream_ark.content_generation.tasks.list(model="up-480p")
    assert page.total == 1  # created once (Idempotency-Key), then followed
    up = page.items[0]
    assert (up.status, up.duration, up.ratio, up.resolution, up.seed, up.generate_audio) == (
        "succeeded",
        6,
        "9:16",
        "480p",
        77,
        False,
    )


def test_every_mode_goes_through_the_ark_route_both_ways(servers, upstream_ark):
    """Ark in, Ark out: a first-and-last-frame task made through the relay server's own /api/v3
    reaches the upstream's /api/v3 with its roles."""
    relay, _ = servers
    first, last = (data_uri(image_bytes(320, 320, seed=s), "image/png") for s in (5, 6))
    with Ark(base_url=relay.url + "/api/v3", api_key="anything", max_retries=0) as ark:
        created = ark.content_generation.tasks.create(
            model="via-ark",
            content=[
                {"type": "text", "text": "morph"},
                {"type": "image_url", "image_url": {"url": first}, "role": "first_frame"},
                {"type": "image_url", "image_url": {"url": last}, "role": "last_frame"},
            ],
        )
        deadline = time.monotonic() + 120
        while (task := ark.content_generation.tasks.get(task_id=created.id)).status in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert task.status == "succeeded" and task.ratio == "1:1", task.error
    assert httpx.get(task.content.video_url).status_code == 200
    ups = upstream_ark.content_generation.tasks.list(model="up-480p", page_size=1).items
    assert ups[0].ratio == "1:1" and ups[0].status == "succeeded"
    with httpx.Client(base_url=servers[1].url, headers={"Authorization": f"Bearer {KEY}"}) as up:
        assert up.get(f"/v1/video/generations/{ups[0].id}").json()["mode"] == "first-and-last-frame"


def test_cancel_reaches_the_upstream(servers, upstream_ark):
    relay, _ = servers
    with relay.client() as c:
        tid = c.post("/v1/video/generations", json={"model": "via-ark-slow", "prompt": "stop me"}).json()["id"]
        deadline = time.monotonic() + 60
        while not upstream_ark.content_generation.tasks.list(model="up-slow", status="running").total:
            assert time.monotonic() < deadline, "the upstream task never ran"
            time.sleep(0.1)
        assert c.post(f"/v1/video/generations/{tid}/cancel").status_code == 200
    while upstream_ark.content_generation.tasks.list(model="up-slow", status="cancelled").total != 1:
        assert time.monotonic() < deadline + 30, "the upstream task was not cancelled"
        time.sleep(0.1)
