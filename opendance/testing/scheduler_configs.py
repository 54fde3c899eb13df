"""Real checkpoints' scheduler configs, for tests on tiny pipelines saved to folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Wan-AI/Wan2.1-T2V-14B-Diffusers scheduler/scheduler_config.json (VACE-14B has the same).
WAN_UNIPC = {
    "_class_name": "UniPCMultistepScheduler",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "predict_x0": True,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_p": None,
    "solver_type": "bh2",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}


def with_unipc(src: Path, dst: Path) -> Path:
    """A copy of a tiny Wan folder whose scheduler is Wan's UniPC."""
    shutil.copytree(src, dst)
    index = json.loads((dst / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "UniPCMultistepScheduler"]
    (dst / "model_index.json").write_text(json.dumps(index))
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps(WAN_UNIPC))
    return dst
