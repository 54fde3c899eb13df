"""One process-wide cache of pipeline components (text encoders, tokenizers, VAEs, image
encoders, transformers), keyed by their weights, not by their folder: a Wan model's four modes
read four folders that each hold the same 11 GB UMT5 text encoder, which is loaded once and passed
into every pipeline that uses it (``from_pretrained(folder, text_encoder=...)``).

- The key of a component with weights is ``memory_plan.read_weights``' (a hash of the
  safetensors headers and data samples), with the dtype and the device; a tokenizer's is a hash
  of its files.
- Transformers are not shared this way (a cache hook or a LoRA put on one would act in every
  pipeline holding it); the same folder's pipeline is shared whole (``_torch_utils``). A VAE
  with tiling on is another object than one without.
- Pipelines with ``cpu_offload`` take no part: accelerate's hooks belong to one pipeline.
- A component is held while a pipeline that uses it is loaded (``adopt`` / ``release``).

Only engine modules import this (through ``_torch_utils``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .memory_plan import read_weights

_CACHE: dict[tuple, list[Any]] = {}  # key -> [module, users]


def component_key(folder: Path, name: str, dtype: str, device: str, vae_tiling: bool = False) -> tuple | None:
    """What identifies ``folder/name`` once loaded, or None when it is not shared (a
    transformer, a scheduler) or cannot be told (no files)."""
    if name.startswith("transformer"):
        return None
    where = Path(folder) / name
    weights = read_weights(where)
    if weights is not None:
        return ("weights", weights.key, dtype, device, vae_tiling and name == "vae")
    files = sorted(p for p in where.glob("*") if p.is_file()) if where.is_dir() else []
    if not files or (where / "scheduler_config.json").exists():
        return None  # schedulers are cheap and stateful: every pipeline keeps its own
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        digest.update(p.read_bytes())
    return ("files", digest.hexdigest()[:32], device)


def lookup(folder: Path, dtypes: dict[str, str], device: str, vae_tiling: bool = False) -> dict[str, Any]:
    """The already-loaded components of ``folder`` (name -> module) to pass to ``from_pretrained``."""
    found = {}
    for name, dtype in dtypes.items():
        key = component_key(folder, name, dtype, device, vae_tiling)
        if key is not None and key in _CACHE:
            found[name] = _CACHE[key][0]
    return found


def adopt(pipe, folder: Path, dtypes: dict[str, str], device: str, vae_tiling: bool = False) -> list[tuple]:
    """Hold every component of a loaded pipeline (new ones enter the cache). Returns the keys
    to ``release`` when the pipeline is dropped."""
    keys = []
    for name, dtype in dtypes.items():
        module = getattr(pipe, name, None)
        key = component_key(folder, name, dtype, device, vae_tiling)
        if module is None or key is None:
            continue
        entry = _CACHE.setdefault(key, [module, 0])
        entry[1] += 1
        keys.append(key)
    return keys


def release(keys: list[tuple]) -> None:
    for key in keys:
        entry = _CACHE.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _CACHE[key]


def held() -> int:
    """How many components the process holds (for tests and logs)."""
    return len(_CACHE)
