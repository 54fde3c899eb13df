"""The examples of the README run as a new user runs them: the curl script with the sample
picture and with a photo too large for a command line, the Python omni-reference example with
the sample media; and what the server says when it starts (which engine serves each model, a
warning when it is open), and ``serve --allow-hosts``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import opendance
from opendance.media.encode import probe_mp4
from opendance.testing.server import LiveServer, wait_for_task

ROOT = Path(opendance.__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SAMPLES = ("first-frame.jpg", "last-frame.jpg", "clip.mp4", "tune.m4a")


def run(cmd: list[str], server: LiveServer, cwd: Path, key: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENDANCE_BASE_URL": server.url}
    if key:
        env["OPENDANCE_API_KEY"] = key
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_samples_are_small_and_committed():
    for name in SAMPLES:
        assert (EXAMPLES / name).stat().st_size < 64 * 1024, name


def test_the_curl_example_makes_a_video_from_the_sample_and_from_a_big_photo(keyed_server, tmp_path):
    done = run([str(EXAMPLES / "image-to-video.sh")], keyed_server, tmp_path, "k-alice")
    assert done.returncode == 0, done.stderr
    info = probe_mp4(tmp_path / done.stdout.strip())
    assert (info["width"], info["height"]) == (864, 480)  # 16:9 from the 640x360 sample
    # A photo whose base64 is far past what one command-line argument may hold (128 KiB).
    noise = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    photo = tmp_path / "Photo 1.JPG"
    Image.fromarray(noise).save(photo, quality=90)
    assert photo.stat().st_size > 600 * 1024
    done = run([str(EXAMPLES / "image-to-video.sh"), str(photo), 'a "noisy" \\ picture'], keyed_server, tmp_path, "k-alice")
    assert done.returncode == 0, done.stderr
    assert probe_mp4(tmp_path / done.stdout.strip())["width"] == 864


def test_the_python_example_makes_an_omni_reference_video(server, tmp_path):
    done = run([sys.executable, str(EXAMPLES / "omni_reference.py")], server, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "omni.mp4").is_file() and done.stdout.strip().endswith("omni.mp4")
    assert probe_mp4(tmp_path / "omni.mp4")["audio_codec"] == "aac"  # the tune is mixed in


def test_start_up_says_which_engine_serves_each_model_and_warns_when_open(tmp_path):
    config = tmp_path / "models.toml"
    config.write_text(
        '[models."a"]\nresolution = "480p"\n[models."a".default]\nengine = "preview"\n'
        '[models."b"]\nresolution = "720p"\nfps = 12\n[models."b".modes."text-to-video"]\nengine = "scenario"\n'
        '[models."b".modes."image-to-video"]\nengine = "preview"\n'
    )
    with LiveServer(tmp_path / "open", config=config, env={"OPENDANCE_LOG_LEVEL": "info"}) as server:
        pass
    log = server.log()
    assert "model a (480p, 24 fps): the preview engine (procedural videos, no model weights) for every mode" in log
    assert (
        "model b (720p, 12 fps): the scenario engine for text-to-video; the preview engine (procedural videos, no model weights) for image-to-video"
        in log
    )
    assert "no API keys are set: this server is open" in log
    with LiveServer(tmp_path / "keyed", config=config, env={"OPENDANCE_LOG_LEVEL": "info", "OPENDANCE_API_KEYS": "k1"}) as server:
        pass
    assert "no API keys are set" not in server.log()


def test_serve_allow_hosts_lets_media_urls_reach_a_private_host(tmp_path, media_host):
    png = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 30, 30)).save(png, "PNG")
    url = media_host.add("/allow-hosts.png", png.getvalue(), "image/png")
    body = {"model": "jisudance2.0-480p", "image": url}
    with LiveServer(tmp_path / "strict") as strict, strict.client() as c:
        assert c.post("/v1/video/generations", json=body).json()["error"]["code"] == "url_not_allowed"
    with LiveServer(tmp_path / "allowing", args=["--allow-hosts", "127.0.0.1"]) as allowing, allowing.client() as c:
        r = c.post("/v1/video/generations", json=body)
        assert r.status_code == 200, r.text
        assert wait_for_task(c, r.json()["id"])["status"] == "completed"
