"""Every mode end to end through HTTP, with real media and the preview engine."""

from __future__ import annotations

import io

import av
import httpx
import numpy as np
from PIL import Image

from opendance.media.encode import probe_mp4
from opendance.media.frames import fit_cover
from opendance.testing import media
from opendance.testing.server import wait_for_task

M = "jisudance2.0-480p"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(client, body, tmp_path) -> tuple[dict, dict, list[np.ndarray]]:
    r = client.post("/v1/video/generations", json=body)
    assert r.status_code == 200, r.text
    task = wait_for_task(client, r.json()["id"])
    assert task["status"] == "completed", task
    path = tmp_path / f"{task['id']}.mp4"
    path.write_bytes(httpx.get(task["video_url"]).content)
    info = probe_mp4(path)
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert (info["width"], info["height"]) == (task["width"], task["height"])
    assert abs(info["duration"] - task["duration"]) <= 1 / info["fps"] + 1e-6
    assert len(frames) == round(task["duration"] * info["fps"])
    return task, info, frames


def test_image_from_http_url(client, media_host, tmp_path):
    url = media_host.add("/first.jpg", media.image_bytes(640, 400, "JPEG", seed=1), "image/jpeg")
    task, info, frames = run(client, {"model": M, "image": url, "prompt": "zoom"}, tmp_path)
    assert task["mode"] == "image-to-video" and task["aspect_ratio"] == "16:9"
    expected = np.asarray(fit_cover(Image.open(io.BytesIO(media.image_bytes(640, 400, "JPEG", seed=1))), 864, 480))
    assert psnr(frames[0], expected) >= 30


def test_image_as_data_uri(client, tmp_path):
    uri = media.data_uri(media.image_bytes(300, 500, seed=2), "image/png")
    task, info, frames = run(client, {"model": "jisudance2.0-720p", "image": uri, "duration": "6"}, tmp_path)
    assert task["aspect_ratio"] == "9:16" and (info["width"], info["height"]) == (720, 1280)
    assert task["duration"] == 6


def test_first_and_last_frame(client, tmp_path):
    first, last = media.image_bytes(400, 400, seed=3), media.image_bytes(500, 480, seed=4)
    body = {
        "model": M,
        "image": media.data_uri(first, "image/png"),
        "last_image": media.data_uri(last, "image/png"),
        "aspect_ratio": "1:1",
    }
    task, info, frames = run(client, body, tmp_path)
    assert task["mode"] == "first-and-last-frame"
    for got, src in ((frames[0], first), (frames[-1], last)):
        want = np.asarray(fit_cover(Image.open(io.BytesIO(src)), 640, 640))
        assert psnr(got, want) >= 30


def test_omni_nine_images_three_videos_three_audios(client, media_host, tmp_path):
    images = [media.data_uri(media.image_bytes(200 + 10 * i, 200, seed=10 + i), "image/png") for i in range(9)]
    videos = [media_host.add(f"/ref{i}.mp4", media.video_bytes(5.0, seed=i), "video/mp4") for i in range(3)]
    audios = [
        media_host.add(f"/ref{i}.{ext}", media.audio_bytes(3.0 + i, ext), "audio/x")
        for i, ext in enumerate(("wav", "mp3", "m4a"))
    ]
    body = {"model": M, "prompt": "montage", "images": images, "videos": videos, "audios": audios, "duration": 10}
    task, info, frames = run(client, body, tmp_path)
    assert task["mode"] == "omni-reference"
    assert info["audio_codec"] == "aac"


def test_text_to_video_each_aspect(client, tmp_path):
    sizes = {"16:9": (864, 480), "1:1": (640, 640), "9:16": (480, 864)}
    for aspect, size in sizes.items():
        task, info, _ = run(
            client, {"model": "jisudance2.0-fast-480p", "prompt": "a robot dancing", "aspect_ratio": aspect}, tmp_path
        )
        assert (info["width"], info["height"]) == size
        assert info["audio_codec"] is None


def test_same_seed_same_video(client, tmp_path):
    body = {"model": M, "prompt": "seeded", "extra_body": {"seed": 42}}
    a = run(client, body, tmp_path)[2]
    b = run(client, body, tmp_path)[2]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
