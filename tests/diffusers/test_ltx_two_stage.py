"""The LTX families' two-stage recipe (``upsampler``) on tiny real pipelines and tiny real latent
upsamplers (random weights, saved as the published folders are): stage 1 at the reduced size,
the upsampler, the refine at twice that size; the spec's MP4, progress across both stages,
cancel, chunks and resume, the component cache, the memory plan, option errors, and the
one-stage path left as it was."""

from __future__ import annotations

import numpy as np
import pytest

from opendance.config import load_models
from opendance.domain import Mode
from opendance.engines._torch_utils import plan_chunks, round_frames
from opendance.engines.base import StepContext
from opendance.engines.ltx import LTXEngine
from opendance.engines.ltx2 import LTX2Engine
from opendance.engines.memory_plan import plan_mode, read_weights
from opendance.engines.options import check_options
from opendance.errors import Cancelled
from opendance.runner.checkpoints import TaskCheckpoints
from opendance.storage import LocalStorage
from opendance.testing import tiny_pipelines
from opendance.testing.checkpoints import PartsRead
from opendance.testing.server import LiveServer, wait_for_task

LTX, LTX2 = "ltx-two-stage-480p", "ltx2-two-stage-720p"
ONE_STAGE = {LTX: "ltx-video-480p", LTX2: "jisudance2.0-fast-720p"}
SOUND = {LTX: False, LTX2: True}


class Seen:
    """What the real modules are called with (torch hooks, no patching): the transformer's token
    count per forward, the upsampler's input and output shapes, the VAE decoder's input shape."""

    def __init__(self, engine) -> None:
        self.tokens: list[int] = []
        self.upsampled: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.decoded: list[tuple[int, ...]] = []
        up = engine.two_stage.pipe.latent_upsampler
        self.handles = [
            engine.pipe.transformer.register_forward_pre_hook(self._tokens, with_kwargs=True),
            up.register_forward_hook(lambda m, args, out: self.upsampled.append((tuple(args[0].shape), tuple(out.shape)))),
            engine.pipe.vae.decoder.register_forward_pre_hook(lambda m, args: self.decoded.append(tuple(args[0].shape))),
        ]

    def _tokens(self, module, args, kwargs) -> None:
        self.tokens.append(kwargs["hidden_states"].shape[1])

    def __enter__(self) -> Seen:
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def stage_steps(spec: dict) -> tuple[int, int]:
    """(stage 1, refine) steps of a spec, as its pipelines run them."""
    if spec["engine"] == "ltx":
        n = len(spec["refine_timesteps"])
        return spec.get("steps", 2), min(int(n * spec["denoise_strength"]), n)
    return len(spec["sigmas"]), 3  # LTX-2's default refine_sigmas: STAGE_2_DISTILLED_SIGMA_VALUES


@pytest.mark.parametrize("model", [LTX, LTX2])
@pytest.mark.parametrize("mode", [Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO, Mode.FIRST_AND_LAST_FRAME])
def test_stage_one_small_then_upsampled_and_refined_at_twice_the_size(
    model, mode, engines, make_job, inputs_for, run, checks, tmp_path
):
    job = make_job(model, mode, aspect="1:1", options={"generate_audio": SOUND[model]})
    engine = engines(job.engine)
    ratio = engine.pipe.vae_spatial_compression_ratio
    latent_frames = (job.engine["frames"] - 1) // engine.temporal + 1
    assert engine.grid(job) == (64, 64)  # the refine; stage 1 at downscale_factor 0.5 of it: 32 x 32
    with Seen(engine) as seen:
        result = run(engine, job, inputs_for(mode))
    checks.mp4(result.encode(tmp_path / "out.mp4"), job, audio=SOUND[model])
    first, refine = stage_steps(job.engine)
    checks.progress(result.steps, first + refine)

    small, big = latent_frames * (32 // ratio) ** 2, latent_frames * (64 // ratio) ** 2
    per_step = len(seen.tokens) // (first + refine)  # transformer passes per step (LTX-2: video, STG, modality)
    stage1, refined = seen.tokens[: first * per_step], seen.tokens[first * per_step :]
    assert len(refined) == refine * per_step and len(set(stage1)) == len(set(refined)) == 1
    # Stage 1 at 32 x 32, the refine at 64 x 64; a keyframe condition (the last image) adds tokens
    # at each stage's size.
    (t1,), (t2,) = set(stage1), set(refined)
    assert t1 >= small and t2 - big == 4 * (t1 - small)
    assert (t1 > small) == (mode == Mode.FIRST_AND_LAST_FRAME)
    assert len(seen.upsampled) == 1
    (inp, out), channels = seen.upsampled[0], engine.pipe.transformer.config.in_channels
    assert inp == (1, channels, latent_frames, 32 // ratio, 32 // ratio)
    assert out == (1, channels, latent_frames, 64 // ratio, 64 // ratio)
    assert seen.decoded == [(1, channels, latent_frames, 64 // ratio, 64 // ratio)]  # one decode, at the refine size


@pytest.mark.parametrize("model", [LTX, LTX2])
def test_a_long_video_chunks_through_both_stages_and_resumes_from_a_finished_chunk(
    model, engines, make_job, inputs_for, tmp_path
):
    """Checkpoints in two stages are per finished chunk: a job stopped inside its second chunk
    keeps the first chunk's frames, remakes the second from its start, and the video (and sound)
    is the uninterrupted one."""
    job = make_job(model, Mode.IMAGE_TO_VIDEO, duration=10, aspect="1:1", options={"generate_audio": SOUND[model]})
    engine = engines(job.engine)
    inputs = inputs_for(job.mode)
    per_chunk = sum(stage_steps(job.engine))
    spec = job.engine
    chunks = len(plan_chunks(round_frames(job.num_frames, engine.temporal), spec["frames"], spec["overlap"], engine.temporal))
    assert chunks == 3
    steps: list[tuple[int, int]] = []
    straight = engine.generate(job, inputs, StepContext(progress=lambda d, t: steps.append((d, t))))
    straight_frames = [np.asarray(f) for f in straight.frames]
    assert len(straight_frames) == job.num_frames == 80
    assert steps == [(i, chunks * per_chunk) for i in range(1, chunks * per_chunk + 1)]  # every chunk, both stages

    storage = LocalStorage(tmp_path / "files")
    done: list[int] = []
    stop = per_chunk + stage_steps(job.engine)[0] + 1  # inside the second chunk's refine
    stopped = StepContext(
        progress=lambda d, t: done.append(d),
        cancelled=lambda: len(done) >= stop,
        checkpoints=TaskCheckpoints(storage, job.task_id, every=1),
    )
    with pytest.raises(Cancelled):
        list(engine.generate(job, inputs, stopped).frames)
    assert TaskCheckpoints(storage, job.task_id, every=1).load()[1] == per_chunk  # the first chunk, nothing inside the second

    done.clear()
    again = PartsRead(storage, job.task_id, every=1)
    resumed = engine.generate(job, inputs, StepContext(progress=lambda d, t: done.append(d), checkpoints=again))
    resumed_frames = [np.asarray(f) for f in resumed.frames]
    assert again.read == ["chunk-000"]
    assert done == list(range(per_chunk + 1, chunks * per_chunk + 1))
    assert all(np.array_equal(a, b) for a, b in zip(resumed_frames, straight_frames, strict=True))
    if SOUND[model]:
        assert resumed.audio is not None and straight.audio is not None
        np.testing.assert_array_equal(resumed.audio.samples, straight.audio.samples)


@pytest.mark.parametrize("model", [LTX, LTX2])
def test_the_refine_starts_from_the_upsampled_latents(model, engines, make_job, inputs_for, run):
    """The upsampler's output is what the refine denoises: another AdaIN blend, another video
    (LTX-Video's denoise_strength < 1 keeps the given latents; at 1 it would start from noise)."""
    job = make_job(model, Mode.TEXT_TO_VIDEO, aspect="1:1")
    blended = make_job(model, Mode.TEXT_TO_VIDEO, aspect="1:1", adain_factor=0.5 if model == LTX else 1.0)
    a = run(engines(job.engine), job, inputs_for(job.mode)).frames
    b = run(engines(blended.engine), blended, inputs_for(job.mode)).frames
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("model", [LTX, LTX2])
def test_cancel_in_the_refine_stops_before_any_decode(model, engines, make_job, inputs_for, run, decode_counter):
    job = make_job(model, Mode.TEXT_TO_VIDEO, aspect="1:1")
    engine = engines(job.engine)
    first, _ = stage_steps(job.engine)
    with Seen(engine) as seen, decode_counter(engine.pipe.vae.decoder) as decodes:
        with pytest.raises(Cancelled):
            run(engine, job, inputs_for(job.mode), cancel_after=first + 1)
        assert decodes.calls == 0
    assert len(seen.upsampled) == 1  # it was in the refine


def test_same_seed_same_video_and_the_modes_share_one_upsampler(engines, make_job, inputs_for, run):
    t2v, i2v = (make_job(LTX, m, aspect="1:1", seed=5) for m in (Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO))
    a = run(engines(t2v.engine), t2v, inputs_for(t2v.mode)).frames
    b = run(engines(t2v.engine), make_job(LTX, Mode.TEXT_TO_VIDEO, aspect="1:1", seed=5), inputs_for(t2v.mode)).frames
    c = run(engines(t2v.engine), make_job(LTX, Mode.TEXT_TO_VIDEO, aspect="1:1", seed=6), inputs_for(t2v.mode)).frames
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # Another engine over other options (another mode's) and the same upsampler folder: one model object.
    other = engines({**i2v.engine, "reference_strength": 0.6})
    assert other.two_stage.pipe.latent_upsampler is engines(t2v.engine).two_stage.pipe.latent_upsampler


# Every two-stage setting away from its default; without ``upsampler`` none of them may act.
TWO_STAGE_SETTINGS = {
    LTX: dict(
        downscale_factor=0.5,
        adain_factor=0.5,
        tone_map_compression_ratio=0.6,
        refine_timesteps=[1000.0, 909.0, 725.0, 421.0, 0.0],
        denoise_strength=0.999,
    ),
    LTX2: dict(downscale_factor=0.25, adain_factor=1.0, refine_sigmas=[0.9, 0.5], refine_noise_scale=0.8, refine_guidance=2.0),
}


@pytest.mark.parametrize("model", [LTX, LTX2])
def test_the_one_stage_path_is_unchanged(model, engines, make_job, inputs_for, run):
    """Without ``upsampler`` the two-stage settings do nothing: the same seed gives the same
    frames (and sound) as a spec without them, through one call per chunk at the grid."""
    options = {"generate_audio": SOUND[model]}
    plain = make_job(ONE_STAGE[model], Mode.IMAGE_TO_VIDEO, aspect="1:1", options=options)
    with_settings = make_job(ONE_STAGE[model], Mode.IMAGE_TO_VIDEO, aspect="1:1", options=options, **TWO_STAGE_SETTINGS[model])
    a, b = engines(plain.engine), engines(with_settings.engine)
    assert a is not b and a.two_stage is None and b.two_stage is None
    with _NoUpsampler(a) as seen:
        ra = run(a, plain, inputs_for(plain.mode))
    rb = run(b, with_settings, inputs_for(plain.mode))
    assert all(np.array_equal(x, y) for x, y in zip(ra.frames, rb.frames, strict=True))
    if SOUND[model]:
        np.testing.assert_array_equal(ra.output.audio.samples, rb.output.audio.samples)
    assert ra.steps == rb.steps == [(i, a.opts.steps) for i in range(1, a.opts.steps + 1)]
    grid = a.grid(plain)
    assert grid == (32, 32) and len(set(seen.tokens)) == 1  # one size: the grid's


class _NoUpsampler:
    """The transformer's token counts of a one-stage engine."""

    def __init__(self, engine) -> None:
        self.tokens: list[int] = []
        self.handle = engine.pipe.transformer.register_forward_pre_hook(
            lambda m, args, kwargs: self.tokens.append(kwargs["hidden_states"].shape[1]), with_kwargs=True
        )

    def __enter__(self) -> _NoUpsampler:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.mark.parametrize("model, engine", [(LTX, "ltx"), (LTX2, "ltx2")])
def test_the_memory_plan_counts_the_upsampler(model, engine, tiny_models, tiny_folders):
    spec = tiny_models[model]["default"]
    plan = plan_mode(model, "text-to-video", engine, spec)
    up = [c for c in plan.components if c.name == "latent_upsampler"]
    folder = tiny_folders[f"{engine}-upsampler"]
    weights = read_weights(folder / "latent_upsampler")
    assert weights is not None and len(up) == 1
    numel = sum(int(np.prod(shape)) for _, shape in weights.tensors)
    assert up[0].bytes == numel * 4 == weights.stored  # float32, every tensor of the upsampler's safetensors
    assert up[0].pipeline == folder and not up[0].offload
    assert not [c for c in plan.components if c.pipeline == folder and c.name != "latent_upsampler"]  # its VAE copy is not loaded
    one = plan_mode(model, "text-to-video", engine, {k: v for k, v in spec.items() if k != "upsampler"})
    assert plan.weights == one.weights + up[0].bytes
    assert plan.activations >= one.activations  # the refine's grid, not the stage-1 one
    line = [x for x in _lines(plan) if "latent_upsampler" in x]
    assert line and folder.name in line[0]


def _lines(mode_plan) -> list[str]:
    from opendance.engines.memory_plan import MemoryPlan

    return MemoryPlan([mode_plan], ["cpu"], {"cpu": None}, None).lines()


@pytest.mark.parametrize(
    ("engine", "change", "named"),
    [
        ("ltx", {"downscale_factor": 1.5}, "downscale_factor"),
        ("ltx", {"denoise_strength": 1.0}, "denoise_strength"),
        ("ltx", {"refine_timesteps": [1000.0], "denoise_strength": 0.5}, "denoise_strength"),
        ("ltx", {"refine_steps": 3, "refine_timesteps": [1000.0, 500.0]}, "refine_steps"),
        ("ltx", {"tone_map_compression_ratio": 2}, "tone_map_compression_ratio"),
        ("ltx2", {"sigmas": None}, "upsampler"),
        ("ltx2", {"refine_sigmas": []}, "refine_sigmas"),
        ("ltx2", {"refine_noise_scale": -1}, "refine_noise_scale"),
    ],
)
def test_a_bad_two_stage_option_is_a_config_error_naming_it(engine, change, named, tiny_models, tiny_folders, tmp_path):
    model = LTX if engine == "ltx" else LTX2
    spec = {**tiny_models[model]["default"], **change}
    with pytest.raises(ValueError, match=named):
        check_options(engine, spec, "text-to-video")
    extra = {model: dict(tiny_models[model], default={k: v for k, v in spec.items() if v is not None})}
    path = tiny_pipelines.write_models_toml(tmp_path / "m.toml", tiny_folders, extra=extra)
    with pytest.raises(ValueError, match=rf"models\.{model} \(text-to-video, engine {engine}\): .*{named}"):
        load_models(path)


@pytest.mark.parametrize(("cls", "model"), [(LTXEngine, LTX), (LTX2Engine, LTX2)])
def test_an_upsampler_folder_that_does_not_fit_fails_the_load_naming_it(cls, model, tiny_models, tiny_folders):
    from opendance.engines import components

    held = components.held()
    spec = tiny_models[model]["default"]
    with pytest.raises(ValueError, match="upsampler = .*no latent_upsampler"):
        cls(dict(spec, upsampler=str(tiny_folders["ltx"])), "cpu")  # a pipeline folder without one
    other = "ltx2-upsampler" if model == LTX else "ltx-upsampler"  # the other family's
    with pytest.raises(ValueError, match="upsampler = .*(LTX2?LatentUpsamplerModel|latent channels)"):
        cls(dict(spec, upsampler=str(tiny_folders[other])), "cpu")
    assert components.held() == held  # nothing of the failed loads stays in the component cache


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_folders):
    root = tmp_path_factory.mktemp("two-stage-http")
    config = tiny_pipelines.write_models_toml(root / "models.toml", tiny_folders)
    env = {"OPENDANCE_ALLOW_HOSTS": "127.0.0.1", "OPENDANCE_LOG_LEVEL": "info", "OPENDANCE_RATE_LIMIT_PER_MINUTE": "0"}
    with LiveServer(root / "data", config=config, env=env, startup_timeout=120) as s:
        yield s


@pytest.mark.parametrize("model", [LTX, LTX2])
def test_two_stage_through_http(model, server, tmp_path):
    import av

    from opendance.media.encode import probe_mp4

    with server.client() as client:
        body = {"model": model, "prompt": "a robot dancing in the rain", "extra_body": {"seed": 3}}
        r = client.post("/v1/video/generations", json=body)
        assert r.status_code == 200, r.text
        task = wait_for_task(client, r.json()["id"], timeout=300)
        assert task["status"] == "completed" and task["progress"] == 100, task
        path = tmp_path / "out.mp4"
        path.write_bytes(client.get(f"/v1/video/generations/{task['id']}/content").content)
    info = probe_mp4(path)
    with av.open(str(path)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert (info["width"], info["height"]) == (task["width"], task["height"])
    assert info["num_frames"] == frames == 5 * 8 and abs(info["duration"] - 5) < 1e-6
