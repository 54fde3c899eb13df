"""Every mode end to end through HTTP: the real server (``opendance serve --config``), its worker
process loading the tiny real pipelines from disk, the MP4 downloaded and probed."""

from __future__ import annotations

import time

import av
import httpx
import numpy as np
import pytest

from opendance.config import SEED_MODELS
from opendance.testing import media, tiny_pipelines
from opendance.testing.server import LiveServer, wait_for_task

SLOW = "slow-wan-480p"  # enough denoising steps to cancel in the middle
TEXT_ONLY = "text-only-wan-480p"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_folders, tiny_models):
    root = tmp_path_factory.mktemp("diffusers-e2e")
    t2v = tiny_models["jisudance2.0-480p"]["modes"]["text-to-video"]
    extra = {
        SLOW: dict(resolution="480p", fps=8, modes={"text-to-video": dict(t2v, steps=400, max_area=64 * 32)}),
        TEXT_ONLY: dict(resolution="480p", fps=8, modes={"text-to-video": t2v}),
    }
    config = tiny_pipelines.write_models_toml(root / "models.toml", tiny_folders, extra=extra)
    env = {"OPENDANCE_ALLOW_HOSTS": "127.0.0.1", "OPENDANCE_LOG_LEVEL": "info", "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(root / "data", config=config, env=env, startup_timeout=120) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def refs(media_host) -> dict[str, str]:
    return {
        "image": media.data_uri(media.image_bytes(480, 320, seed=1), "image/png"),
        "last": media.data_uri(media.image_bytes(480, 320, seed=2), "image/png"),
        "ref_image": media_host.add("/e2e/ref.png", media.image_bytes(300, 300, seed=3), "image/png"),
        "video": media_host.add("/e2e/ref.mp4", media.video_bytes(2.5, fps=8, seed=4), "video/mp4"),
        "audio": media_host.add("/e2e/ref.wav", media.audio_bytes(2.5), "audio/wav"),
    }


def body_for(mode: str, refs: dict[str, str]) -> dict:
    return {
        "text-to-video": {"prompt": "a robot dancing in the rain"},
        "image-to-video": {"prompt": "the camera moves", "image": refs["image"]},
        "first-and-last-frame": {"image": refs["image"], "last_image": refs["last"]},
        "omni-reference": {
            "prompt": "a dog",
            "images": [refs["ref_image"]],
            "videos": [refs["video"]],
            "audios": [refs["audio"]],
        },
    }[mode]


def create(client, body: dict) -> dict:
    r = client.post("/v1/video/generations", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def download(client, task: dict, tmp_path) -> tuple[dict, list[np.ndarray]]:
    from opendance.media.encode import probe_mp4

    path = tmp_path / f"{task['id']}.mp4"
    path.write_bytes(client.get(f"/v1/video/generations/{task['id']}/content").content)
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return probe_mp4(path), frames


MODES = ("text-to-video", "image-to-video", "first-and-last-frame", "omni-reference")
CASES = [(m, mode) for m in SEED_MODELS for mode in MODES]
CASES += [("ltx-video-480p", "text-to-video"), ("ltx-video-480p", "first-and-last-frame")]  # (image: the seed test)


@pytest.mark.parametrize("model, mode", CASES)
def test_every_mode_through_http(model, mode, client, refs, tmp_path):
    sound = model == "jisudance2.0-fast-720p"
    body = {"model": model, **body_for(mode, refs), "extra_body": {"seed": 3, "generate_audio": sound}}
    task = wait_for_task(client, create(client, body)["id"], timeout=300)
    assert task["status"] == "completed", task
    assert task["mode"] == mode and task["progress"] == 100
    info, frames = download(client, task, tmp_path)
    assert (info["width"], info["height"]) == (task["width"], task["height"])
    assert info["num_frames"] == len(frames) == 5 * 8 and abs(info["duration"] - 5) < 1e-6
    assert (info["audio_codec"] == "aac") == (sound or mode == "omni-reference")


def test_same_seed_same_video_through_http(client, refs, tmp_path):
    body = {"model": "ltx-video-480p", **body_for("image-to-video", refs)}
    runs = []
    for seed in (21, 21, 22):
        task = wait_for_task(client, create(client, {**body, "extra_body": {"seed": seed}})["id"], timeout=300)
        assert task["status"] == "completed" and task["seed"] == seed
        runs.append(download(client, task, tmp_path)[1])
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert any(not np.array_equal(a, c) for a, c in zip(runs[0], runs[2], strict=True))


def test_fifteen_seconds_goes_through_chunks(client, refs, tmp_path):
    body = {"model": "jisudance2.0-480p", **body_for("first-and-last-frame", refs), "duration": 15}
    task = wait_for_task(client, create(client, body)["id"], timeout=600)
    assert task["status"] == "completed", task
    info, frames = download(client, task, tmp_path)
    assert info["num_frames"] == len(frames) == 15 * 8 and abs(info["duration"] - 15) < 1e-6


def test_cancel_mid_run_leaves_no_file(server, client):
    task = create(client, {"model": SLOW, "prompt": "a slow robot"})
    deadline = time.monotonic() + 300
    while True:  # wait until denoising has started
        seen = client.get(f"/v1/video/generations/{task['id']}").json()
        if seen["status"] == "in_progress" and seen["progress"] > 0:
            break
        assert seen["status"] in ("queued", "in_progress") and time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert client.post(f"/v1/video/generations/{task['id']}/cancel").status_code == 200
    done = wait_for_task(client, task["id"], timeout=120)
    assert done["status"] == "failed" and done["raw_status"] == "CANCELLED" and done["error"]["code"] == "cancelled"
    assert done["progress"] < 100
    assert client.get(f"/v1/video/generations/{task['id']}/content").status_code in (404, 409)
    assert not [p for p in server.data_dir.rglob("*.mp4") if task["id"] in str(p)]  # not even a partial file


def test_a_mode_the_model_is_not_configured_for_is_a_400(client, refs):
    r = client.post("/v1/video/generations", json={"model": TEXT_ONLY, **body_for("image-to-video", refs)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_load_time_is_in_metrics(client):
    metrics = httpx.get(str(client.base_url) + "/metrics").text
    loads = [line for line in metrics.splitlines() if line.startswith("opendance_model_load_seconds{")]
    assert {'engine="wan"', 'engine="ltx"', 'engine="ltx2"'} <= {line.split("{")[1].split("}")[0] for line in loads}
