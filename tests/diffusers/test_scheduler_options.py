"""Per-engine scheduler settings, per-component dtypes and offload hooks, on tiny real pipelines
saved to folders (the Wan ones with Wan's real ``UniPCMultistepScheduler`` config)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from opendance.domain import Mode
from opendance.engines.base import Inputs, Job, StepContext
from opendance.engines.ltx2 import LTX2Engine
from opendance.engines.wan import WanEngine, latent_mask
from opendance.errors import Cancelled, EngineError

from opendance.testing.scheduler_configs import WAN_UNIPC, with_unipc


@pytest.fixture(scope="module")
def unipc_folders(tiny_folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("unipc-folders")
    return {name: with_unipc(tiny_folders[name], root / name) for name in ("wan-t2v", "wan-vace")}


def wan_spec(folders, **changes):
    spec = dict(
        engine="wan",
        checkpoint=str(folders["wan-t2v"]),
        extend_checkpoint=str(folders["wan-vace"]),
        steps=3,
        native_fps=4,
        dtype="float32",
        frames=17,
        overlap=9,
        guidance=1.0,
        max_area=32 * 32,
    )
    return {**spec, **changes}


def job(spec, mode=Mode.TEXT_TO_VIDEO, duration=5):
    # 5 s at 4 native fps: 21 frames, two chunks (17, then 13 starting at frame 8: 9 kept frames).
    return Job(
        task_id="task_s",
        model="m",
        mode=mode,
        prompt="a cat",
        width=864,
        height=480,
        fps=8,
        duration=duration,
        seed=3,
        engine=spec,
    )


class Timesteps:
    """The ``timestep`` every forward of the given transformers got (a real forward hook)."""

    def __init__(self, *modules):
        self.seen: list[float] = []
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in modules]

    def _hook(self, module, args, kwargs):
        self.seen.append(float(kwargs["timestep"].flatten()[0]))

    def close(self):
        for h in self.handles:
            h.remove()


def unipc_timesteps(flow_shift: float, steps: int = 3) -> list[float]:
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler.from_config(WAN_UNIPC, flow_shift=flow_shift)
    sched.set_timesteps(steps)
    return [float(t) for t in sched.timesteps]


def test_a_configured_flow_shift_is_used_in_that_engine_s_calls_only(unipc_folders):
    """Two engines over the same two pipelines (the text-to-video one and the shared VACE one):
    the one with ``scheduler = {flow_shift = 5.0}`` runs both its calls at 5.0, the other at the
    folder's 3.0, before and after, and the pipelines' own schedulers are left as they were."""
    shifted = WanEngine(wan_spec(unipc_folders, scheduler={"flow_shift": 5.0}))
    plain = WanEngine(wan_spec(unipc_folders))
    try:
        assert shifted.pipe is plain.pipe and shifted.vace is plain.vace  # shared, as between modes
        assert unipc_timesteps(5.0) != unipc_timesteps(3.0)
        for engine, shift in ((plain, 3.0), (shifted, 5.0), (plain, 3.0)):
            spy = Timesteps(engine.pipe.transformer, engine.vace.transformer)
            try:
                list(engine.generate(job(engine.spec), Inputs(), StepContext()).frames)
            finally:
                spy.close()
            assert spy.seen == unipc_timesteps(shift) * 2  # two chunks, 3 steps each
            assert engine.pipe.scheduler.config.flow_shift == engine.vace.scheduler.config.flow_shift == 3.0
    finally:
        shifted.close()
        plain.close()


def test_the_extend_pipeline_takes_its_own_scheduler_settings(unipc_folders):
    """``extend_scheduler``: the VACE chunks of a Wan 2.2 text model at 720p run at VACE's 5.0
    while its own calls run at 12.0."""
    engine = WanEngine(wan_spec(unipc_folders, scheduler={"flow_shift": 12.0}, extend_scheduler={"flow_shift": 5.0}))
    try:
        spy = Timesteps(engine.pipe.transformer, engine.vace.transformer)
        try:
            list(engine.generate(job(engine.spec), Inputs(), StepContext()).frames)
        finally:
            spy.close()
        assert spy.seen == unipc_timesteps(12.0) + unipc_timesteps(5.0)
    finally:
        engine.close()


def test_an_unknown_scheduler_setting_fails_the_load_naming_it(unipc_folders):
    with pytest.raises(ValueError, match=r"scheduler \['shfit'\] are not settings of UniPCMultistepScheduler"):
        WanEngine(wan_spec(unipc_folders, scheduler={"shfit": 5.0}))


def test_the_wan_vae_loads_in_float32_and_follows_the_dtype_table(tiny_folders, run, inputs_for):
    spec = dict(wan_spec(tiny_folders, frames=13, overlap=5, max_area=32 * 16, extend_checkpoint=None), steps=2)
    engine = WanEngine(dict(spec, dtype="bfloat16"))
    try:
        pipe = engine.pipe
        assert pipe.vae.dtype == torch.float32  # Wan's default: float32 VAE
        assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch.bfloat16
        out = run(engine, job(engine.spec, duration=2), Inputs())  # a bf16 transformer with an fp32 VAE runs
        assert len(out.frames) == 16
    finally:
        engine.close()
    engine = WanEngine(dict(spec, dtype={"default": "float32", "vae": "bfloat16", "text_encoder": "float16"}))
    try:
        pipe = engine.pipe
        assert pipe.vae.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.float16
        assert pipe.transformer.dtype == torch.float32
    finally:
        engine.close()
    with pytest.raises(ValueError, match=r"dtype names \['vea'\], which are not components of"):
        WanEngine(dict(spec, dtype={"vea": "float32"}))


def test_a_cancelled_call_frees_the_offload_hooks(tiny_folders):
    """``maybe_free_model_hooks`` (which offloads every model and puts fresh hooks on) runs at the
    end of a pipeline's ``__call__``; a cancelled call never gets there, so the engine runs it."""
    spec = dict(wan_spec(tiny_folders, frames=13, overlap=5, max_area=32 * 16, extend_checkpoint=None), cpu_offload=True)
    engine = WanEngine(spec)
    try:
        hooks = list(engine.pipe._all_hooks)
        assert hooks
        steps: list[int] = []
        ctx = StepContext(progress=lambda d, t: steps.append(d), cancelled=lambda: len(steps) >= 1)
        with pytest.raises(Cancelled):
            list(engine.generate(job(engine.spec, duration=2), Inputs(), ctx).frames)
        after = engine.pipe._all_hooks
        assert after and all(h is not old for h in after for old in hooks)  # offloaded, hooks made again
        assert all(getattr(m, "_hf_hook", None) is not None for m in (engine.pipe.transformer, engine.pipe.vae))
    finally:
        engine.close()


def test_every_fully_known_latent_frame_is_kept_in_a_vace_extension(tiny_folders):
    """The second chunk (29 frames, 8 latent frames) starts with 9 frames of the first (latent
    frames 0, 1 and 2 are wholly known): the mask the VACE transformer is given keeps all three
    and generates the rest (nearest-exact resampling kept 2: it samples frame 9 for latent 2)."""
    engine = WanEngine(wan_spec(tiny_folders, steps=1, frames=29, max_area=32 * 16))
    masks = []

    def hook(module, args, kwargs):
        masks.append(kwargs["control_hidden_states"][:, 32:].clone())  # 16 x 2 video channels, then 64 mask channels

    handle = engine.vace.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        list(
            engine.generate(job(engine.spec, duration=12), Inputs(), StepContext()).frames
        )  # 49 frames: 29, then 29 from frame 20
    finally:
        handle.remove()
        engine.close()
    (mask,) = masks  # one VACE call (the second chunk), one step, no CFG
    kept = [bool((mask[0, :, f] == 0).all()) for f in range(mask.shape[2])]
    assert kept == [True] * 3 + [False] * 5


def test_latent_mask_keeps_a_latent_frame_only_when_all_its_frames_are_kept():
    mask = torch.ones(1, 1, 81, 2, 2)
    mask[:, :, :9] = 0  # overlap = 9: frames 0-8 are latent frames 0, 1, 2
    assert (latent_mask(mask, 4)[0, 0, :, 0, 0] == 0).nonzero().flatten().tolist() == [0, 1, 2]
    mask[:, :, :13] = 0
    mask[:, :, 80] = 0  # a lone last frame does not keep its latent frame
    assert (latent_mask(mask, 4)[0, 0, :, 0, 0] == 0).nonzero().flatten().tolist() == [0, 1, 2, 3]
    # What the pipeline's nearest-exact resampling keeps of 9 frames: 2 latent frames.
    nearest = torch.nn.functional.interpolate(
        torch.cat([torch.zeros(1, 1, 9, 2, 2), torch.ones(1, 1, 72, 2, 2)], 2), size=(21, 2, 2), mode="nearest-exact"
    )
    assert int((nearest[0, 0, :, 0, 0] == 0).sum()) == 2


def test_ltx2_distilled_sigmas_are_used_as_given(tiny_folders, tmp_path):
    """A folder whose scheduler shifts dynamically would re-shift a distilled schedule: with
    ``sigmas`` the engine turns dynamic shifting off unless its ``scheduler`` table says so."""
    folder = shutil.copytree(tiny_folders["ltx2"], tmp_path / "ltx2")
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config.update(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, shift_terminal=0.1)
    config_path.write_text(json.dumps(config))
    sigmas = [1.0, 0.9, 0.5]
    base = dict(
        engine="ltx2",
        checkpoint=str(folder),
        sigmas=sigmas,
        native_fps=4,
        dtype="float32",
        frames=17,
        overlap=9,
        guidance=1.0,
        max_area=32 * 32,
        call_kwargs={"stg_scale": 0.0, "modality_scale": 1.0, "audio_guidance_scale": 1.0},
    )
    seen = {}
    for name, extra in (("distilled", {}), ("shifted", {"scheduler": {"use_dynamic_shifting": True, "shift_terminal": 0.1}})):
        engine = LTX2Engine({**base, **extra})
        spy = Timesteps(engine.pipe.transformer)
        try:
            list(engine.generate(job(engine.spec, duration=2), Inputs(), StepContext()).frames)
        finally:
            spy.close()
            engine.close()
        seen[name] = sorted(set(spy.seen), reverse=True)  # the transformer runs more than once a step
    assert seen["distilled"] == pytest.approx([s * 1000 for s in sigmas])
    assert len(seen["shifted"]) == 3 and seen["shifted"] != pytest.approx([s * 1000 for s in sigmas])


def test_first_and_last_frame_is_refused_by_a_pipeline_that_would_drop_the_last_image(tiny_folders, tmp_path, inputs_for):
    """Wan2.2-TI2V-5B's ``expand_timesteps`` image-to-video conditions on the first frame only:
    ``last_image`` would be ignored without a word, so the mode is refused with the reason."""
    folder = shutil.copytree(tiny_folders["wan-i2v"], tmp_path / "ti2v")
    index = json.loads((folder / "model_index.json").read_text())
    index["expand_timesteps"] = True
    (folder / "model_index.json").write_text(json.dumps(index))
    engine = WanEngine(wan_spec({"wan-t2v": folder, "wan-vace": tiny_folders["wan-vace"]}, max_area=32 * 16, frames=21))
    try:
        with pytest.raises(EngineError, match="would drop the last image"):
            list(
                engine.generate(
                    job(engine.spec, Mode.FIRST_AND_LAST_FRAME), inputs_for(Mode.FIRST_AND_LAST_FRAME), StepContext()
                ).frames
            )
    finally:
        engine.close()
