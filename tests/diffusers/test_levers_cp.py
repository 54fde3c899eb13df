"""``context_parallel`` on a device group of 2 CPU ranks (gloo), end to end through HTTP on the
tiny real Wan pipeline: Ulysses splits the transformer's sequence over both ranks and the video
equals the one-rank video within 1/255. Ring attention cannot run on CPU (no CPU attention
backend returns the log-sum-exp it needs): the task fails at load saying so. And diffusers' own
``enable_parallelism`` cannot start on a CPU-only torch at all (the exact error is pinned below),
which is why ``levers`` takes its steps with a CPU mesh there."""

from __future__ import annotations

import os
import subprocess
import sys

import av
import numpy as np
import pytest

from opendance.testing import tiny_pipelines
from opendance.testing.server import LiveServer, wait_for_task

pytest.importorskip("torch.distributed")

BODY = {"prompt": "a robot dancing in the rain", "duration": 5, "extra_body": {"seed": 11}}


# Copied from test_levers (test modules do not import each other here)
def plain_spec(tiny_models) -> dict:
    spec = dict(tiny_models["jisudance2.0-480p"]["modes"]["text-to-video"])
    spec.pop("extend_checkpoint")  # 5 s at 8 fps is one 41-frame window: no VACE needed
    return spec


def t2v(spec: dict, **kw) -> dict:
    return dict(resolution="480p", fps=8, modes={"text-to-video": spec}, **kw)


def frames_of(client, task: dict, tmp_path) -> np.ndarray:
    path = tmp_path / f"{task['id']}.mp4"
    path.write_bytes(client.get(f"/v1/video/generations/{task['id']}/content").content)
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def drift(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    d = a.astype(np.int32) - b.astype(np.int32)
    mse = float((d**2).mean())
    return int(np.abs(d).max()), (10 * np.log10(255**2 / mse) if mse else float("inf"))


GROUP = {"cp-ulysses": {"ulysses": 2}, "cp-ring": {"ring": 2}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_folders, tiny_models):
    root = tmp_path_factory.mktemp("levers-cp")
    plain = plain_spec(tiny_models)
    extra = {"cp-plain": t2v(plain)} | {name: t2v(dict(plain, context_parallel=cp)) for name, cp in GROUP.items()}
    config = tiny_pipelines.write_models_toml(root / "models.toml", tiny_folders, extra=extra)
    text = config.read_text()
    for name in GROUP:  # a device group of two ranks per task
        text = text.replace(f'[models."{name}"]\n', f'[models."{name}"]\ndevices_per_task = 2\n')
    config.write_text(text)
    env = {"OPENDANCE_DEVICES": "cpu,cpu", "OPENDANCE_LOG_LEVEL": "info", "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(root / "data", config=config, env=env, startup_timeout=120) as s:
        yield s


def make(client, model: str) -> dict:
    r = client.post("/v1/video/generations", json={**BODY, "model": model})
    assert r.status_code == 200, r.text
    return wait_for_task(client, r.json()["id"], timeout=600)


@pytest.mark.timeout(900)
def test_ulysses_on_two_cpu_ranks_gives_the_one_rank_video(server, tmp_path):
    with server.client() as c:
        one = make(c, "cp-plain")
        two = make(c, "cp-ulysses")
        assert one["status"] == "completed", one
        assert two["status"] == "completed", two
        groups = c.get("/readyz").json()["checks"]["runner"]["executors"]["device"]["groups"]
        plain, split = frames_of(c, one, tmp_path), frames_of(c, two, tmp_path)
    assert any(len(g["devices"]) == 2 for g in groups), groups  # the task ran on a group of two ranks
    assert split.shape == plain.shape == (40, 480, 864, 3)
    largest, psnr = drift(split, plain)
    print(f"\ncontext_parallel = {{ulysses = 2}} on 2 gloo ranks: largest difference {largest}/255, PSNR {psnr:.1f} dB")
    assert largest <= 1
    log = server.log_path.read_text()
    for rank in (0, 1):  # both ranks split the transformer's sequence
        assert f"context parallel on: WanTransformer3DModel split over rank {rank} of 2 (ulysses=2 ring=None)" in log


@pytest.mark.timeout(600)
def test_ring_on_cpu_fails_at_load_saying_which_backends_it_needs(server):
    with server.client() as c:
        task = make(c, "cp-ring")
    print("\n" + task["error"]["message"])
    assert task["status"] == "failed" and task["error"]["code"] == "engine_error"
    assert "ring attention needs an attention backend that returns the log-sum-exp" in task["error"]["message"]
    assert "use ulysses = 2" in task["error"]["message"]


def test_diffusers_enable_parallelism_itself_cannot_start_on_cpu(tmp_path):
    """diffusers 0.42.1 picks the rank's device as ``rank % torch.accelerator.device_count()``.
    When this fails, diffusers runs on CPU and ``levers._enable_on_cpu`` can go."""
    code = f"""
import torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="file://{tmp_path}/store", rank=0, world_size=1)
from diffusers import ContextParallelConfig
from opendance.testing.tiny_pipelines import wan_transformer
try:
    wan_transformer().enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
except Exception as exc:
    print("ERROR", type(exc).__name__, exc)
dist.destroy_process_group()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ})
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("ERROR")), done.stderr[-2000:])
    print("\n" + line)
    assert line == "ERROR ZeroDivisionError integer modulo by zero"
