"""A worker's engines (``runner.engine_cache``) on tiny real pipelines saved to folders: evicted
least-recently-used when a load would not fit the device's memory, a failed load not tried again
for every task, out-of-memory errors with their numbers, failures shown to ``/readyz``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from opendance.engines.memory_plan import plan_mode
from opendance.errors import EngineError
from opendance.metrics import Metrics
from opendance.runner.engine_cache import BACKOFF, EngineCache, OutOfMemory, is_oom, out_of_memory
from opendance.runner.messages import ModelLoaded


def wan(folder, **changes):
    spec = dict(engine="wan", checkpoint=str(folder), steps=1, native_fps=4, dtype="float32", frames=13, overlap=5)
    return {**spec, "max_area": 32 * 16, **changes}


def ltx(folder):
    return dict(engine="ltx", checkpoint=str(folder), steps=1, native_fps=4, dtype="float32", frames=17, overlap=9, max_area=1024)


def peak(spec) -> int:
    m = plan_mode("", "", spec["engine"], {k: v for k, v in spec.items() if k != "engine"})
    return m.device_weights + m.activations


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_least_recently_used_engine_is_evicted_when_a_load_would_not_fit(tiny_folders):
    a, b = wan(tiny_folders["wan-t2v"]), ltx(tiny_folders["ltx"])
    room = max(peak(a), peak(b)) + 1024  # one at a time
    assert peak(a) + peak(b) > room
    cache = EngineCache("cpu", f"{room}B")
    try:
        first = cache.get(a)
        assert cache.get(a) is first  # kept between tasks
        second = cache.get(b)
        assert first.pipe is None and list(cache.engines.values()) == [second]  # the first was closed
        again = cache.get(a)
        assert again is not first and second.pipe is None and list(cache.engines.values()) == [again]
    finally:
        cache.close()


def test_engines_whose_components_are_shared_stay_together(tiny_folders):
    """The VACE folder's text encoder and VAE are the text-to-video folder's (same weights): both
    fit where the two summed would not."""
    a, b = wan(tiny_folders["wan-t2v"]), wan(tiny_folders["wan-vace"])
    t2v = plan_mode("", "", "wan", {k: v for k, v in a.items() if k != "engine"})
    vace = plan_mode("", "", "wan", {k: v for k, v in b.items() if k != "engine"})
    shared = sum(c.bytes for c in t2v.components if c.name != "transformer")
    acts = max(t2v.activations, vace.activations)
    room = t2v.device_weights + vace.device_weights - shared + acts + 1024
    assert t2v.device_weights + vace.device_weights + acts > room  # counted twice, they would not fit
    cache = EngineCache("cpu", f"{room}B")
    try:
        first, second = cache.get(a), cache.get(b)
        assert first.pipe is not None and len(cache.engines) == 2
        assert first.pipe.text_encoder is second.pipe.text_encoder
    finally:
        cache.close()


def test_a_failed_load_is_not_tried_again_before_its_backoff(tiny_folders, tmp_path):
    broken = tmp_path / "half-downloaded"
    shutil.copytree(tiny_folders["wan-t2v"], broken)
    moved = tmp_path / "transformer-elsewhere"
    (broken / "transformer").rename(moved)
    sent, clock = [], Clock()
    cache = EngineCache("cpu", None, sent.append, clock=clock)
    spec = wan(broken)
    with pytest.raises(EngineError) as first:
        cache.get(spec, "m-480p")
    assert [(m.model, m.retry_in) for m in sent] == [("m-480p", BACKOFF)] and sent[0].error
    clock.now += BACKOFF - 1
    with pytest.raises(EngineError, match=r"failed 1 time\(s\); next try in 1 s") as again:
        cache.get(spec, "m-480p")  # at once, without loading
    assert str(first.value) in str(again.value) and len(sent) == 1
    clock.now += 2
    with pytest.raises(EngineError):
        cache.get(spec, "m-480p")  # tried again, failed again: twice the wait
    assert sent[-1].retry_in == 2 * BACKOFF
    moved.rename(broken / "transformer")  # the download finished
    clock.now += 2 * BACKOFF
    try:
        engine = cache.get(spec, "m-480p")
        assert engine.pipe is not None and sent[-1].error is None and not cache.failures
    finally:
        cache.close()

    metrics = Metrics()  # what /readyz shows: the failure until a later load works
    metrics.observe(sent[0])
    assert metrics.load_failures["m-480p"]["error"] == sent[0].error
    metrics.observe(sent[-1])
    assert metrics.load_failures == {}


def test_a_cuda_out_of_memory_is_out_of_memory_with_its_numbers():
    exc = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 3.94 GiB is free."
    )
    assert is_oom(exc) and not is_oom(RuntimeError("shape mismatch"))
    error = out_of_memory(exc, "cuda:0", "loading the model")
    assert isinstance(error, OutOfMemory) and error.code == "out_of_memory"
    assert str(error).startswith("cuda:0 ran out of memory loading the model: CUDA out of memory. Tried to allocate 20.00 GiB")


def test_the_readyz_failure_record_is_json():
    metrics = Metrics()
    metrics.observe(ModelLoaded(engine="wan", seconds=1.0, model="m", error="ValueError: x", retry_in=30.0))
    assert json.loads(json.dumps(metrics.load_failures))["m"]["engine"] == "wan"


@pytest.mark.timeout(300)
def test_a_model_that_fails_to_load_is_shown_in_readyz_and_not_loaded_for_every_task(tiny_folders, tmp_path):
    """Through the real server: a folder that passes the start-up checks but cannot load (a
    component missing). The first task fails loading it, /readyz names the model and the error,
    and the next task fails at once with the same error and when it is tried again."""
    from opendance.testing.server import LiveServer, wait_for_task

    broken = shutil.copytree(tiny_folders["wan-t2v"], tmp_path / "half-downloaded")
    shutil.rmtree(broken / "transformer")
    config = tmp_path / "models.toml"
    config.write_text(
        '[models."broken"]\nresolution = "480p"\nfps = 8\n[models."broken".default]\n'
        f'engine = "wan"\ncheckpoint = "{broken}"\nsteps = 1\nnative_fps = 4\ndtype = "float32"\nframes = 13\noverlap = 5\n'
    )
    env = {"OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(tmp_path / "data", config=config, env=env, startup_timeout=120) as server, server.client() as c:
        body = {"model": "broken", "prompt": "x"}
        first = wait_for_task(c, c.post("/v1/video/generations", json=body).json()["id"], timeout=120)
        assert first["status"] == "failed" and first["error"]["code"] == "engine_error", first
        ready = c.get("/readyz").json()
        failed = ready["checks"]["model_loads"]["failed"]["broken"]
        assert failed["engine"] == "wan" and failed["error"] in first["error"]["message"]
        second = wait_for_task(c, c.post("/v1/video/generations", json=body).json()["id"], timeout=60)
        assert second["status"] == "failed" and "failed 1 time(s); next try in" in second["error"]["message"], second
