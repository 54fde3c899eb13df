"""The process-wide component cache (``engines.components``) and the extend pipeline loaded on
first need, on tiny real pipelines saved to folders."""

from __future__ import annotations

import shutil

import pytest

from opendance.domain import Mode
from opendance.engines import components
from opendance.engines._torch_utils import plan_chunks
from opendance.engines.base import Inputs, Job, StepContext
from opendance.engines.wan import WanEngine


def spec(folder, **changes):
    base = dict(engine="wan", checkpoint=str(folder), steps=1, native_fps=4, dtype="float32", frames=21, overlap=5, guidance=1.0)
    return {**base, "max_area": 32 * 16, **changes}


def job(engine, duration, mode=Mode.TEXT_TO_VIDEO):
    return Job(
        task_id="t", model="m", mode=mode, prompt="x", width=864, height=480, fps=8, duration=duration, seed=1, engine=engine.spec
    )


@pytest.fixture
def built():
    made = []

    def make(s):
        made.append(WanEngine(s))
        return made[-1]

    yield make
    for engine in made:
        engine.close()


def test_identical_weights_in_different_folders_are_one_object(tiny_folders, tmp_path, built):
    before = components.held()
    copy = shutil.copytree(tiny_folders["wan-t2v"], tmp_path / "another-download")
    changed = shutil.copytree(tiny_folders["wan-t2v"], tmp_path / "finetuned")
    weights = next((changed / "text_encoder").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0xFF
    weights.write_bytes(bytes(data))

    a = built(spec(tiny_folders["wan-t2v"]))
    b = built(spec(copy))
    vace = built(spec(tiny_folders["wan-vace"]))  # another pipeline class, the same UMT5 and VAE weights
    c = built(spec(changed))
    assert a.pipe is not b.pipe and a.pipe.transformer is not b.pipe.transformer  # transformers are never shared this way
    assert a.pipe.text_encoder is b.pipe.text_encoder is vace.pipe.text_encoder
    assert a.pipe.vae is b.pipe.vae is vace.pipe.vae and a.pipe.tokenizer is b.pipe.tokenizer
    assert c.pipe.text_encoder is not a.pipe.text_encoder  # same shapes, other weights
    assert c.pipe.vae is a.pipe.vae
    for engine in (a, b, vace, c):
        engine.close()
    assert components.held() == before  # released with the last pipeline that used them


def test_other_dtypes_are_other_objects(tiny_folders, built):
    a = built(spec(tiny_folders["wan-t2v"]))
    b = built(spec(tiny_folders["wan-t2v"], dtype={"default": "float32", "text_encoder": "bfloat16"}))
    assert a.pipe.text_encoder is not b.pipe.text_encoder and a.pipe.vae is b.pipe.vae


def test_the_extend_pipeline_is_loaded_by_the_first_job_that_needs_it(tiny_folders, built):
    engine = built(spec(tiny_folders["wan-t2v"], extend_checkpoint=str(tiny_folders["wan-vace"]), steps=2))
    assert engine._vace is None and len(engine._loaded) == 1
    engine.generate(job(engine, 5), Inputs(), StepContext())  # 21 frames at 4 fps: one window
    assert engine._vace is None and len(engine._loaded) == 1
    steps = []
    out = engine.generate(job(engine, 15), Inputs(), StepContext(progress=lambda d, t: steps.append(t)))  # 61 frames
    list(out.frames)  # later chunks are made as the encoder pulls their frames (decode_stream)
    assert engine._vace is not None and len(engine._loaded) == 2 and steps[-1] == 2 * len(plan_chunks(61, 21, 5, 4))
    assert engine.vace.text_encoder is engine.pipe.text_encoder  # the same weights: one object
