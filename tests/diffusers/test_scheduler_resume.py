"""Resume inside a chunk under a multistep scheduler: the real ``UniPCMultistepScheduler`` with
the Wan checkpoints' scheduler config, on a tiny real ``WanPipeline`` saved to a folder. The
resumed call starts the scheduler at the saved step on the whole schedule (``set_begin_index``)
with its history put back, so its corrector and its order are the uninterrupted run's."""

from __future__ import annotations

import pytest
import torch

from opendance.engines._torch_utils import StepReporter
from opendance.engines.base import StepContext
from opendance.engines.diffusers_resume import DenoiseCheckpoints
from opendance.errors import Cancelled
from opendance.runner.checkpoints import TaskCheckpoints
from opendance.storage import LocalStorage
from opendance.testing.scheduler_configs import with_unipc

STEPS = 8


@pytest.fixture(scope="module")
def unipc_pipe(tiny_folders, tmp_path_factory):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    folder = with_unipc(tiny_folders["wan-t2v"], tmp_path_factory.mktemp("unipc") / "wan-t2v")
    pipe = WanPipeline.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    return pipe


def denoise(pipe, ctx: StepContext, **into) -> torch.Tensor:
    """One call as the engines make it (step reporter, checkpoints, resume), returning latents."""
    resume = DenoiseCheckpoints(ctx, STEPS)
    generator = torch.Generator().manual_seed(5)
    resume.bind(generator)
    resume.finished_chunk(0)
    with torch.inference_mode(), resume.into(pipe, **into):
        return pipe(
            prompt="a cat dancing",
            height=32,
            width=32,
            num_frames=9,
            num_inference_steps=STEPS,
            guidance_scale=1.0,
            generator=generator,
            output_type="latent",
            callback_on_step_end=StepReporter(ctx, STEPS, "cpu", resume),
            callback_on_step_end_tensor_inputs=["latents"],
        ).frames


def stop_and_resume(pipe, tmp_path, stop: int, **into) -> torch.Tensor:
    storage = LocalStorage(tmp_path / f"files-{stop}-{sorted(into)}")
    steps: list[int] = []
    stopped = StepContext(
        progress=lambda done, total: steps.append(done),
        cancelled=lambda: len(steps) >= stop,
        checkpoints=TaskCheckpoints(storage, "task_u", every=1),
    )
    with pytest.raises(Cancelled):
        denoise(pipe, stopped)
    assert TaskCheckpoints(storage, "task_u", every=1).load()[1] == stop
    steps.clear()
    again = StepContext(progress=lambda done, total: steps.append(done), checkpoints=TaskCheckpoints(storage, "task_u", every=1))
    out = denoise(pipe, again, **into)
    assert steps == list(range(stop + 1, STEPS + 1))  # only the steps left were denoised
    return out


@pytest.mark.parametrize("stop", [1, 2, 4, 6, 7])
def test_unipc_resume_equals_the_uninterrupted_run(unipc_pipe, tmp_path, stop):
    straight = denoise(unipc_pipe, StepContext())
    resumed = stop_and_resume(unipc_pipe, tmp_path, stop)
    assert float((resumed - straight).abs().max()) <= 1e-5


def test_a_cut_sigma_list_drops_unipc_s_corrector(unipc_pipe, tmp_path):
    """What the resume did before (the sigma list cut, as for a pipeline that indexes sigmas by
    its loop index): the first resumed step has no corrector and the last ones the wrong order,
    so the result drifts well past float rounding. This is why UniPC resumes on the whole schedule."""
    straight = denoise(unipc_pipe, StepContext())
    cut = stop_and_resume(unipc_pipe, tmp_path, 4, loop_sigmas=True)
    assert float((cut - straight).abs().max()) > 1e-4
