"""The levers (``attention_backend``, ``compile``, ``quantization``) end to end through HTTP on
the tiny real Wan pipeline: each model differs from the plain one by one option, the same seed
makes each video, and its drift against the plain video is printed and bounded (PSNR >= 30 dB for
casting and quantization, within 1/255 for an attention backend and compile). A backend this
device lacks fails the task at load with the option and the choices named; bad values are refused
when the models file is read; a compiled engine compiles at load, not in its first task."""

from __future__ import annotations

import importlib.util

import av
import numpy as np
import pytest

from opendance.domain import Mode
from opendance.testing import tiny_pipelines
from opendance.testing.server import LiveServer, wait_for_task

LEVERS = {
    "lever-native": {"attention_backend": "native"},
    "lever-regional": {"compile": "regional"},
    "lever-full": {"compile": "full"},
    "lever-fp8-layerwise": {"quantization": "fp8_layerwise"},
    "lever-int8": {"quantization": "int8_weight_only"},
    "lever-fp8-weight": {"quantization": "fp8_weight_only"},
}
EXACT = ("lever-native",)  # the same frames, so the same MP4
# Compile: the engine's frames are within 1/255 of the plain engine's (checked in-process below);
# in the MP4 a 1/255 change at a few pixels can move the H.264 encoder's choices and show as up to
# ~10/255 there (measured: regional 10/255 at 53 dB, full identical), so through HTTP: >= 45 dB.
COMPILED = ("lever-regional", "lever-full")
TORCHAO = importlib.util.find_spec("torchao") is not None
BODY = {"prompt": "a robot dancing in the rain", "duration": 5, "extra_body": {"seed": 11}}


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
    """(largest difference in 1/255 steps, PSNR in dB; inf when equal)."""
    d = a.astype(np.int32) - b.astype(np.int32)
    mse = float((d**2).mean())
    return int(np.abs(d).max()), (10 * np.log10(255**2 / mse) if mse else float("inf"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_folders, tiny_models):
    root = tmp_path_factory.mktemp("levers")
    plain = plain_spec(tiny_models)
    extra = {"lever-plain": t2v(plain), "lever-flash": t2v(dict(plain, attention_backend="flash"))}
    extra |= {name: t2v(dict(plain, **options)) for name, options in LEVERS.items()}
    config = tiny_pipelines.write_models_toml(root / "models.toml", tiny_folders, extra=extra)
    env = {"OPENDANCE_LOG_LEVEL": "info", "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(root / "data", config=config, env=env, startup_timeout=120) as s:
        yield s


@pytest.fixture(scope="module")
def videos(server, tmp_path_factory) -> dict[str, np.ndarray | dict]:
    """Every lever model's video of the same request (a failed task's object where it failed)."""
    out: dict[str, np.ndarray | dict] = {}
    tmp = tmp_path_factory.mktemp("lever-videos")
    with server.client() as c:
        ids = {
            name: c.post("/v1/video/generations", json={**BODY, "model": name}).json()["id"] for name in ["lever-plain", *LEVERS]
        }
        for name, tid in ids.items():
            task = wait_for_task(c, tid, timeout=600)  # compile: tens of seconds on two cores
            out[name] = frames_of(c, task, tmp) if task["status"] == "completed" else task
    return out


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", list(LEVERS))
def test_each_lever_through_http_drifts_within_its_bound(name, videos):
    if name in ("lever-int8", "lever-fp8-weight") and not TORCHAO:
        pytest.skip("torchao is not installed")
    plain, video = videos["lever-plain"], videos[name]
    assert isinstance(plain, np.ndarray), plain
    assert isinstance(video, np.ndarray), video
    assert video.shape == plain.shape == (40, 480, 864, 3)
    largest, psnr = drift(video, plain)
    print(f"\n{name} ({LEVERS[name]}): largest difference {largest}/255, PSNR {psnr:.1f} dB against the plain video")
    if name in EXACT:
        assert largest <= 1
    elif name in COMPILED:
        assert psnr >= 45
    else:
        assert psnr >= 30


def test_a_backend_this_device_lacks_fails_at_load_naming_the_option_and_the_choices(server):
    with server.client() as c:
        tid = c.post("/v1/video/generations", json={**BODY, "model": "lever-flash"}).json()["id"]
        task = wait_for_task(c, tid, timeout=300)
    print("\n" + task["error"]["message"])
    assert task["status"] == "failed" and task["error"]["code"] == "engine_error"
    message = task["error"]["message"]
    assert 'attention_backend = "flash" cannot run on cpu' in message and "flash-attn" in message
    assert "these work: " in message and "native" in message.split("these work: ")[1]


def test_without_torchao_int8_is_a_clear_load_error(tiny_models, tmp_path):
    """The message a worker gives where torchao is missing (a Python that cannot import it)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torchao'] = None\n"  # what an environment without torchao sees
        "from opendance.engines.wan import WanEngine\n"
        f"WanEngine({dict(plain_spec(tiny_models), quantization='int8_weight_only')!r}, 'cpu')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    print("\n" + last)
    assert last.startswith('ValueError: quantization = "int8_weight_only" needs torchao') and "torchao==0.18.0" in last


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["regional", "full"])
def test_compiled_engine_compiles_at_load_and_its_first_task_compiles_nothing(how, tiny_models, make_job, inputs_for, run):
    """In the engine (no encoder): the compiled engine's frames are within 1/255 of the plain one's."""
    import torch._dynamo

    from opendance.engines.wan import WanEngine

    plain_engine = WanEngine(plain_spec(tiny_models), "cpu")
    job = make_job("jisudance2.0-480p", Mode.TEXT_TO_VIDEO, seed=11)
    try:
        plain = np.stack(run(plain_engine, job, inputs_for(Mode.TEXT_TO_VIDEO)).frames)
    finally:
        plain_engine.close()
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    spec = dict(plain_spec(tiny_models), compile=how)
    engine = WanEngine(spec, "cpu")
    try:
        compiled_at_load = counters["stats"]["unique_graphs"]
        job.engine = spec
        frames = np.stack(run(engine, job, inputs_for(Mode.TEXT_TO_VIDEO)).frames)
        during = counters["stats"]["unique_graphs"] - compiled_at_load
        largest, psnr = drift(frames, plain)
        print(
            f"\ncompile = {how!r}: graphs compiled at load {compiled_at_load}, in the first task {during}; "
            f"frames against the plain engine's: largest difference {largest}/255, PSNR {psnr:.1f} dB"
        )
        assert compiled_at_load >= 1 and during == 0
        assert largest <= 1
    finally:
        engine.close()
        torch._dynamo.reset()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compile": "max"}, "compile: Input should be 'regional' or 'full'"),
        ({"quantization": "int4"}, "quantization: Input should be 'fp8_layerwise'"),
        ({"offload": "disk"}, "offload: Input should be 'model' or 'group'"),
        ({"offload": "group", "cpu_offload": True}, 'give offload = "group" or cpu_offload = true, not both'),
        ({"attention_backend": "Flash Attention"}, "attention_backend: String should match pattern"),
        ({"context_parallel": {}}, "context_parallel: Value error, give ulysses = N or ring = N"),
        ({"context_parallel": {"ulysses": 1}}, "context_parallel.ulysses: Input should be greater than or equal to 2"),
        ({"context_parallel": {"ulysses": 2}}, "splits a task over 2 ranks, but devices_per_task = 1"),
    ],
)
def test_bad_lever_values_are_refused_when_the_models_file_is_read(options, message, tiny_folders, tiny_models, tmp_path):
    from opendance.config import load_models

    config = tiny_pipelines.write_models_toml(
        tmp_path / "models.toml", tiny_folders, extra={"bad": t2v(dict(plain_spec(tiny_models), **options))}
    )
    with pytest.raises(ValueError) as err:
        load_models(config)
    assert str(err.value).startswith("models.bad (text-to-video, engine wan): ") and message in str(err.value), err.value
