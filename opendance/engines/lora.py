"""LoRA adapters: named in the models file, fused into a model at load, or applied per request.

The models file names each adapter once (``[loras."name"]``, ``LoraAdapter``); a model lists
the ones a request may ask for (``allowed_loras``) and may fuse some into its weights at load
(a mode's ``loras = ["name"]``). A request asks for up to ``MAX_PER_REQUEST`` of the allowed
ones with ``extra_body.loras = [{"name": ..., "scale": ...}]`` (checked by
``api.validate``); the job carries them resolved (``Job.loras``: the adapter's table plus the
scale), so a worker needs no models file to apply them.

On the pipeline (diffusers' LoRA loader, peft underneath):

- ``fuse_at_load``: ``load_lora_weights`` + ``fuse_lora`` at each adapter's scale, then
  ``unload_lora_weights``: the deltas are in the base weights, no LoRA layer stays.
- ``applied(pipe, loras)``, around every pipeline call of a job: each adapter is loaded once
  per pipeline (``adapter_name`` = its name; kept for later tasks), ``set_adapters`` activates
  this job's set at its scales, and the ``finally`` disables every adapter again, so the next
  task (also after a failed or cancelled one) runs the base weights exactly: a disabled peft
  layer computes ``base_layer(x)`` alone.
- A compiled transformer (``compile`` lever): ``enable_hotswap`` must run before it is compiled
  (``enable_lora_hotswap(target_rank=...)``); then every adapter is loaded into one of
  ``MAX_PER_REQUEST`` fixed slots with ``hotswap=True`` (weights copied into the existing LoRA
  tensors, ranks padded to the target), and unused slots hold the zero adapter, so the compiled
  graph never changes and nothing is recompiled.

Importing this module needs pydantic only (the models file is checked on API servers without
torch); the pipeline functions import torch when called.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("opendance.engines")

MAX_PER_REQUEST = 4
MIN_SCALE, MAX_SCALE = -4.0, 4.0
Transformer = Literal["transformer", "transformer_2"]


class LoraAdapter(BaseModel):
    """One ``[loras."name"]`` table of the models file."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="a LoRA .safetensors file, or a folder holding one (weight_name picks it)")
    weight_name: str | None = Field(None, description="the file inside a folder path")
    scale: float = Field(1.0, ge=MIN_SCALE, le=MAX_SCALE, description="scale when a request (or a fused load) gives none")
    transformer: Transformer = Field(
        "transformer", description="the denoiser path goes into (transformer_2: Wan 2.2's low-noise expert)"
    )
    path_2: Path | None = Field(None, description="a second file for transformer_2 (Wan 2.2 A14B: the low-noise expert's LoRA)")
    weight_name_2: str | None = Field(None, description="the file inside a folder path_2")

    @model_validator(mode="after")
    def _one_per_transformer(self) -> LoraAdapter:
        if self.path_2 is not None and self.transformer == "transformer_2":
            raise ValueError('path_2 already goes into transformer_2; with transformer = "transformer_2" give path only')
        return self


class FusedLora(BaseModel):
    """A mode's ``loras`` entry as the engine gets it: the adapter's table, its name and the scale
    it is fused at (the models file writes a name, or ``{name = ..., scale = ...}``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    scale: float = Field(ge=MIN_SCALE, le=MAX_SCALE)
    adapter: LoraAdapter


def resolve_fused(entries: Any, library: dict[str, LoraAdapter], where: str) -> list[dict[str, Any]]:
    """A mode's ``loras = ["name", {name = ..., scale = ...}]`` -> ``FusedLora`` dicts (``ValueError``
    naming ``where`` and the entry for an unknown name or a bad entry)."""
    if not isinstance(entries, list):
        raise ValueError(f"{where} must be a list of LoRA names (from [loras.*])")
    out, seen = [], set()
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or set(entry) - {"name", "scale"}:
            raise ValueError(f"{where}[{i}]: a LoRA name, or {{name = ..., scale = ...}}")
        name = entry["name"]
        if name not in library:
            raise ValueError(f"{where}[{i}]: no [loras.{name!r}] table; named: {', '.join(library) or 'none'}")
        if name in seen:
            raise ValueError(f"{where}[{i}]: {name!r} is listed twice")
        seen.add(name)
        adapter = library[name]
        out.append(FusedLora(name=name, scale=entry.get("scale", adapter.scale), adapter=adapter).model_dump(mode="json"))
    return out


def lora_problems(where: str, loras: list[FusedLora]) -> list[str]:
    """One line per LoRA file that is not there (``engines.preflight``)."""
    found = []
    for one in loras:
        adapter = one.adapter
        for key, path, weight in (("path", adapter.path, adapter.weight_name), ("path_2", adapter.path_2, adapter.weight_name_2)):
            if path is None:
                continue
            file = path.expanduser() / weight if weight else path.expanduser()
            if not (file.is_file() or (file.is_dir() and any(file.glob("*.safetensors")))):
                found.append(f"{where}: the {key} of LoRA {one.name!r}, {file.resolve()}, does not exist")
    return found


def job_lora(name: str, scale: float, adapter: LoraAdapter) -> dict[str, Any]:
    """What a job carries for one requested adapter (plain JSON: it is stored with the task)."""
    return {"name": name, "scale": scale, "adapter": adapter.model_dump(mode="json")}


def reported(job_loras: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task object's ``loras``: name and the scale applied."""
    return [{"name": one["name"], "scale": one["scale"]} for one in job_loras]


# ---------------------------------------------------------------------------------------------
# On the pipeline (torch, diffusers, peft).


def _files(adapter: LoraAdapter, pipe) -> list[tuple[str, Path, str | None]]:
    """(transformer attribute, path, weight_name) of each file the adapter loads into ``pipe``."""
    out = [(adapter.transformer, adapter.path, adapter.weight_name)]
    if adapter.path_2 is not None:
        out.append(("transformer_2", adapter.path_2, adapter.weight_name_2))
    return [(where, path, weight) for where, path, weight in out if getattr(pipe, where, None) is not None]


def _load(pipe, name: str, adapter: LoraAdapter, *, hotswap: bool = False) -> None:
    """``load_lora_weights`` of every file of ``adapter`` under ``adapter_name=name``."""
    from ..errors import EngineError

    files = _files(adapter, pipe)
    if not files:
        raise EngineError(f"LoRA {name!r}: this pipeline has no {adapter.transformer} to load it into")
    for where, path, weight in files:
        kwargs: dict[str, Any] = {"weight_name": weight} if weight else {}
        if where == "transformer_2":
            kwargs["load_into_transformer_2"] = True
        try:
            pipe.load_lora_weights(str(path), adapter_name=name, hotswap=hotswap, local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, AttributeError) as exc:
            if not hotswap:
                with contextlib.suppress(Exception):
                    pipe.delete_adapters([name])  # nothing half-loaded stays
            raise EngineError(f"LoRA {name!r} ({path}) does not load into this model's {where}: {exc}") from None


def fuse_at_load(pipe, fused: list[Any]) -> None:
    """Fuse each adapter into the base weights at its scale; no LoRA layer stays afterwards."""
    for entry in fused:
        one = entry if isinstance(entry, FusedLora) else FusedLora.model_validate(entry)
        name = f"fused-{one.name}"
        _load(pipe, name, one.adapter)
        components = [where for where, _, _ in _files(one.adapter, pipe)]
        pipe.fuse_lora(components=components, lora_scale=one.scale, adapter_names=[name])
        pipe.unload_lora_weights()
        log.info("fused LoRA %s at scale %s into %s", one.name, one.scale, ", ".join(components))


def _loaded(pipe) -> set[str]:
    if not hasattr(pipe, "get_list_adapters"):  # a pipeline class without diffusers' LoRA loader
        return set()
    try:
        lists = pipe.get_list_adapters()
    except ValueError:  # no peft layers yet
        return set()
    return {name for names in lists.values() for name in names}


def _components(pipe) -> list[Any]:
    return [m for m in (getattr(pipe, n, None) for n in getattr(pipe, "_lora_loadable_modules", ())) if m is not None]


def disable_all(pipe) -> None:
    """Every adapter of the pipeline off: the next call runs the base (and fused) weights."""
    if _loaded(pipe):
        pipe.disable_lora()


def enable_hotswap(pipe, target_rank: int) -> None:
    """Before the transformer is compiled: LoRAs will be hot-swapped into ``MAX_PER_REQUEST``
    fixed slots (ranks padded to ``target_rank``, scales as tensors) so that changing them does
    not recompile it."""
    pipe.enable_lora_hotswap(target_rank=target_rank)
    pipe._opendance_lora_slots = {}  # slot name -> name of the adapter in it
    pipe._opendance_lora_base = {}  # slot name -> [(layer, the adapter's own scaling)]


def _layers(pipe):
    from peft.tuners.lora import LoraLayer

    for model in _components(pipe):
        for module in model.modules():
            if isinstance(module, LoraLayer):
                yield module


def _record_base(pipe, slot: str) -> None:
    """The adapter's own scaling (alpha / rank) in every layer, as just loaded into ``slot``."""
    pipe._opendance_lora_base[slot] = [(m, float(m.scaling[slot])) for m in _layers(pipe) if slot in m.scaling]


def _set_slot_scale(pipe, slot: str, scale: float) -> None:
    """In place: a tensor scaling keeps the compiled graph (a float would be a guard)."""
    for module, base in pipe._opendance_lora_base.get(slot, []):
        value = module.scaling[slot]
        if hasattr(value, "fill_"):
            value.fill_(base * scale)
        else:
            module.scaling[slot] = base * scale


def _hotswap(pipe, loras: list[dict[str, Any]]) -> None:
    """This job's adapters into the slots, the others at scale 0 (they add exactly nothing).
    The first time, every slot is filled (with this job's first adapter) and activated, and
    the scalings become tensors; from then on only weights and scales change in place."""
    from peft.utils.hotswap import _convert_scalings_to_tensor

    slots: dict[str, str] = pipe._opendance_lora_slots
    names = [f"slot{i}" for i in range(MAX_PER_REQUEST)]
    first = not slots
    for i, slot in enumerate(names):
        one = loras[i] if i < len(loras) else (loras[0] if first else None)
        if one is not None and slots.get(slot) != one["name"]:
            _load(pipe, slot, LoraAdapter.model_validate(one["adapter"]), hotswap=slot in slots)
            slots[slot] = one["name"]
            _record_base(pipe, slot)
    if first:
        pipe.enable_lora()
        pipe.set_adapters(names)
        for model in _components(pipe):
            _convert_scalings_to_tensor(model)
    for i, slot in enumerate(names):
        _set_slot_scale(pipe, slot, loras[i]["scale"] if i < len(loras) else 0.0)


def _hotswap_off(pipe) -> None:
    for slot in pipe._opendance_lora_slots:
        _set_slot_scale(pipe, slot, 0.0)


@contextlib.contextmanager
def applied(pipe, loras: list[dict[str, Any]]) -> Iterator[None]:
    """This job's adapters active on ``pipe`` for the ``with`` body, and none after it (also when
    the body raised: a failed or cancelled call)."""
    hotswap = getattr(pipe, "_opendance_lora_slots", None) is not None
    try:
        if hotswap and loras:
            _hotswap(pipe, loras)
        elif loras:
            present = _loaded(pipe)
            for one in loras:
                if one["name"] not in present:
                    _load(pipe, one["name"], LoraAdapter.model_validate(one["adapter"]))
            pipe.enable_lora()
            pipe.set_adapters([one["name"] for one in loras], adapter_weights=[one["scale"] for one in loras])
        elif not hotswap:
            disable_all(pipe)  # nothing a failed earlier call left on is on now
        yield
    finally:
        if hotswap:
            _hotswap_off(pipe)
        else:
            disable_all(pipe)
