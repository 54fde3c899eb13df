"""The shipped models.example.toml parses, and every mode's options pass its engine's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

import opendance
from opendance.config import SEED_MODELS, load_models
from opendance.domain import Mode
from opendance.engines._torch_utils import check_window
from opendance.engines.options import LTX2Options, LTXOptions, WanOptions

EXAMPLE = Path(opendance.__file__).parent / "models.example.toml"
OPTIONS = {"wan": (WanOptions, 4), "ltx": (LTXOptions, 8), "ltx2": (LTX2Options, 8)}  # real VAEs' temporal factor


def test_every_seed_name_does_every_mode():
    models = load_models(EXAMPLE)
    assert set(SEED_MODELS) <= set(models)
    for name in SEED_MODELS:
        assert set(models[name].modes) == set(Mode), name


@pytest.mark.parametrize("name", sorted(load_models(EXAMPLE)))
def test_options_are_valid(name):
    model = load_models(EXAMPLE)[name]
    for mode, spec in model.modes.items():
        options_class, temporal = OPTIONS[spec.engine]
        opts = options_class(**spec.model_dump())
        check_window(opts, temporal)
        assert opts.native_fps == model.fps, (name, mode)  # no temporal resampling needed
        assert opts.checkpoint.is_absolute()
