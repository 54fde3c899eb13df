"""What a machine that runs the configured models must have, checked before it starts serving.

A server (local runner) or worker whose models use a diffusers engine needs torch, diffusers and
transformers installed, and every checkpoint folder present: without this check it started
"ready" and failed every task (``No module named 'torch'``, or a missing folder at the first
load). Nothing is imported here: packages are looked up with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from .lora import FusedLora, lora_problems
from .options import OPTIONS, DiffusersOptions

if TYPE_CHECKING:
    from ..config import ModelConfig

DIFFUSERS_PACKAGES = ("torch", "diffusers", "transformers")
INSTALL = "pip install 'opendance[diffusers]' (from a source checkout: .venv/bin/pip install -e '.[diffusers]')"


def installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # ValueError: present in sys.modules as None, or no spec
        return False


def problems(models: dict[str, ModelConfig], only: Collection[str] | None = None) -> list[str]:
    """One line per thing missing for ``models`` (those named in ``only``, when given) to run
    here: a package of a diffusers engine (with the pip command that installs it) or a
    checkpoint folder (with its path)."""
    found: list[str] = []
    for name, model in models.items():
        if only is not None and name not in only:
            continue
        for spec in model.modes.values():
            options_model = OPTIONS.get(spec.engine)
            if options_model is None or not issubclass(options_model, DiffusersOptions):
                continue
            where = f"models.{name} (engine {spec.engine})"
            missing = [p for p in DIFFUSERS_PACKAGES if not installed(p)]
            if missing:
                found.append(f"{where} needs {', '.join(missing)}, which this Python does not have; install with: {INSTALL}")
            options = options_model(**{"engine": spec.engine, **spec.options})  # checked when the models file was read
            for key, value in options:
                if isinstance(value, Path):
                    found += _folder_problems(where, key, value)
            found += lora_problems(where, [*options.loras, *(getattr(options, "extend_loras", None) or [])])
            found += lora_problems(where, [FusedLora(name=n, scale=a.scale, adapter=a) for n, a in model.allowed_loras.items()])
    return list(dict.fromkeys(found))  # a model with one default table says it once, not per mode


def _folder_problems(where: str, key: str, path: Path) -> list[str]:
    shown = path.expanduser().resolve()
    if not path.expanduser().is_dir():
        return [f"{where}: the {key} folder {shown} does not exist"]
    if not (path.expanduser() / "model_index.json").is_file():
        return [f"{where}: the {key} folder {shown} is not a diffusers folder (it has no model_index.json)"]
    return []
