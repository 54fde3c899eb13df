"""The memory plan of a models file: what every diffusers mode loads, what it weighs at the
configured dtypes, what is shared, and whether the peak fits each device, read from the
checkpoints' safetensors headers (no weights loaded, no torch imported).

- A component (transformer, text encoder, VAE, image encoder ...) is a subfolder of a diffusers
  folder with ``*.safetensors`` files. Its bytes are the sum over its tensors of ``numel x`` the
  element size of its dtype (``dtype``, a name or a per-component table, over the family's
  defaults: Wan's VAE and image encoder in float32); integer tensors keep their stored size.
- Its weights key is a hash of the headers (names, dtypes, shapes, offsets) and of the first and
  last 64 KiB of each file's data: two folders holding the same weights give the same key, and
  the process-wide component cache (``components``) loads them once. With ``cpu_offload`` the
  accelerate hooks belong to one pipeline, so each pipeline keeps its own copy (in host RAM).
- A mode's pipelines: its ``checkpoint``, and for Wan its ``extend_checkpoint`` (VACE, loaded
  on the first job longer than the window). The LTX families' two-stage ``upsampler`` adds its
  latent upsampler model (``upsampler_component``; the published folder's VAE copy is not
  loaded, the main pipeline's VAE is used), on the device also with ``cpu_offload``, and the
  activations are those of the refining pass (twice the stage-1 size, ``ltx_two_stage``).
- Peak per device: the weights on it (every component, or with ``cpu_offload`` the largest one)
  plus an activation estimate (``activation_bytes``) and a fixed 1.5 GiB (CUDA context, allocator
  slack). Host RAM with offload: every component of every pipeline. A device's engines are
  evicted least-recently-used when a load would not fit, so a plan fits when each mode on its own
  fits; the total when everything stays resident is printed too.

``opendance models check`` prints the plan; ``serve`` (local runner) and ``worker`` refuse to start
when a mode cannot fit, naming the model, the mode and the option that would help.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import OPTIONS, DiffusersOptions

if TYPE_CHECKING:
    from ..config import ModelConfig

GiB = 1024**3
OVERHEAD = int(1.5 * GiB)  # CUDA context, allocator fragmentation, small buffers
SIZES = {"float32": 4, "float16": 2, "bfloat16": 2}
# safetensors dtype -> bytes per element
ST_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
FLOATS = {"F64", "F32", "F16", "BF16"}
SAMPLE = 64 * 1024


# -- one folder ------------------------------------------------------------------------------


def component_names(folder: Path) -> list[str]:
    """The components ``model_index.json`` lists (not null ones), in its order."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: not a diffusers folder ({exc}); see docs/models.md") from exc
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None]


def component_dtypes(folder: Path, dtype: str | Mapping[str, str], defaults: Mapping[str, str] | None = None) -> dict[str, str]:
    """The dtype of each component of the folder: ``dtype`` (one name, or a table with an optional
    ``default``) over the family's ``defaults``. ``ValueError`` for a table key that is not a
    component of the folder."""
    names = component_names(folder)
    table = dict(dtype) if isinstance(dtype, Mapping) else {"default": dtype}
    unknown = sorted(set(table) - set(names) - {"default"})
    if unknown:
        raise ValueError(f"dtype names {unknown}, which are not components of {folder} (it has {', '.join(names)})")
    default = table.pop("default", "bfloat16")
    family = {k: v for k, v in (defaults or {}).items() if k in names}
    return {name: table.get(name, family.get(name, default)) for name in names}


def weight_files(folder: Path) -> list[Path]:
    """A component folder's safetensors files: the shards its index names, else every
    ``*.safetensors`` that is not a variant (``model.fp16.safetensors``)."""
    folder = Path(folder)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        if "." not in index.name.removesuffix(".safetensors.index.json"):
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            return [folder / s for s in shards]
    return sorted(p for p in folder.glob("*.safetensors") if "." not in p.name.removesuffix(".safetensors"))


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (tensor name -> dtype, shape, data_offsets) and its length."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 * 1024 * 1024:
            raise ValueError(f"{path}: not a safetensors file (header of {n} bytes)")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, n


@dataclass(frozen=True)
class Weights:
    """One component's weights as the headers give them."""

    folder: Path
    key: str  # hash of the headers and data samples: the same weights in another folder, the same key
    tensors: tuple[tuple[str, tuple[int, ...]], ...]  # (safetensors dtype, shape)
    stored: int  # bytes of the tensor data as stored

    def bytes_at(self, dtype: str) -> int:
        """Bytes once loaded at ``dtype`` (floating tensors cast; the others as stored)."""
        total = 0
        for st, shape in self.tensors:
            numel = 1
            for d in shape:
                numel *= d
            total += numel * (SIZES[dtype] if st in FLOATS else ST_SIZES.get(st, 4))
        return total


_WEIGHTS: dict[tuple[str, float, int], Weights | None] = {}


def read_weights(folder: Path) -> Weights | None:
    """The component's weights, or None for a folder without safetensors (a tokenizer, a
    scheduler). Cached by (folder, newest mtime, total size)."""
    folder = Path(folder)
    files = weight_files(folder) if folder.is_dir() else []
    if not files:
        return None
    stats = [p.stat() for p in files]
    cache_key = (str(folder.resolve()), max(s.st_mtime for s in stats), sum(s.st_size for s in stats))
    if cache_key in _WEIGHTS:
        return _WEIGHTS[cache_key]
    digest = hashlib.sha256()
    tensors, stored = [], 0
    for path, st in zip(files, stats):
        header, n = read_header(path)
        digest.update(json.dumps(header, sort_keys=True).encode())
        with open(path, "rb") as f:  # a sample of the data too: same shapes, other weights, another key
            f.seek(8 + n)
            digest.update(f.read(SAMPLE))
            f.seek(max(8 + n, st.st_size - SAMPLE))
            digest.update(f.read(SAMPLE))
        for info in header.values():
            tensors.append((info["dtype"], tuple(info["shape"])))
            begin, end = info["data_offsets"]
            stored += end - begin
    weights = Weights(folder, digest.hexdigest()[:32], tuple(tensors), stored)
    _WEIGHTS[cache_key] = weights
    return weights


# -- activations -----------------------------------------------------------------------------


def _config(folder: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / name / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def activation_bytes(engine: str, folder: Path, opts: DiffusersOptions) -> int:
    """A stated estimate of a call's activations at the configured grid and frame window:

    - transformer: one block's live tensors, ``tokens x (4 x hidden + ffn)`` values (q, k, v and
      the attention output, then the feed-forward's inner width) at the transformer's dtype,
      x 2 for the two CFG passes a batched pipeline (LTX, LTX-2) runs at once (guidance > 1);
    - VAE decode: 4 live tensors of the full-resolution stage per pixel of the frames decoded at
      once. Wan decodes 4 frames at a time (its causal cache) at ``decoder_base_dim`` channels;
      LTX decodes the whole window (16 frames and 512 x 512 tiles with ``vae_tiling``) at about
      8 values per pixel (128 channels at a quarter of the resolution, then unpatchified).

    The larger of the two (they do not run at once). Rough by design: ``models check`` shows it
    as its own column, next to the weights, which the headers give exactly."""
    area = opts.max_area
    frames = opts.frames
    transformer = _config(folder, "transformer")
    vae = _config(folder, "vae")
    dtypes = component_dtypes(folder, opts.dtype, getattr(type(opts), "dtype_defaults", {}))
    compute = SIZES[dtypes.get("transformer", "bfloat16")]
    vae_size = SIZES[dtypes.get("vae", "float32")]
    if engine == "wan":
        temporal, spatial = 4, 8 * (2 if vae.get("patch_size") else 1)
        patch = transformer.get("patch_size") or [1, 2, 2]
        hidden = transformer.get("num_attention_heads", 40) * transformer.get("attention_head_dim", 128)
        ffn = transformer.get("ffn_dim", 4 * hidden)
        batch = 1  # Wan runs CFG as two batch-1 calls
        channels = vae.get("decoder_base_dim") or vae.get("base_dim", 96)
        unpatch = (vae.get("patch_size") or 1) ** 2  # Wan 2.2's VAE runs its last stage at half size
        decode = 4 * (min(area, 512 * 512) if opts.vae_tiling else area) * channels * 4 * vae_size // unpatch
    else:
        temporal, spatial, patch = 8, 32, [1, 1, 1]
        hidden = transformer.get("num_attention_heads", 32) * transformer.get("attention_head_dim", 128)
        ffn = 4 * hidden
        batch = 1 if opts.guidance <= 1 else 2
        live_frames, live_area = (min(frames, 16), min(area, 512 * 512)) if opts.vae_tiling else (frames, area)
        decode = live_frames * live_area * 8 * 4 * vae_size
    latent_frames = (frames - 1) // temporal + 1
    tokens = latent_frames * area // (spatial * spatial * patch[1] * patch[2])
    denoise = tokens * (4 * hidden + ffn) * compute * batch
    return max(denoise, decode)


# -- a models file ---------------------------------------------------------------------------


@dataclass
class Component:
    pipeline: Path  # the diffusers folder it is part of
    name: str  # transformer, text_encoder, vae ...
    dtype: str
    bytes: int
    key: str  # weights key
    offload: bool

    tiling: bool = False

    @property
    def identity(self) -> tuple:
        """What makes two uses one object, as the engines share them: the same weights at the same
        dtype (``components``); a transformer only within its own folder's pipeline, and with
        offload every component is its pipeline's own."""
        if self.offload or self.name.startswith("transformer"):
            return (self.pipeline.resolve(), self.name, self.dtype, self.offload)
        return (self.key, self.dtype, self.tiling and self.name == "vae")


@dataclass
class ModePlan:
    model: str
    mode: str
    engine: str
    pipelines: list[Path]
    components: list[Component]
    activations: int
    offload: bool
    vae_tiling: bool
    dtype: Any
    overhead: int = OVERHEAD  # none on a CPU

    @property
    def weights(self) -> int:
        return sum(c.bytes for c in _unique(self.components))

    @property
    def device_weights(self) -> int:
        unique = _unique(self.components)
        if self.offload:  # the largest offloaded component at a time, and what is never offloaded
            kept = sum(c.bytes for c in unique if not c.offload)
            return kept + max((c.bytes for c in unique if c.offload), default=0)
        return sum(c.bytes for c in unique)

    @property
    def peak(self) -> int:
        return self.device_weights + self.activations + self.overhead

    @property
    def host(self) -> int:
        return sum(c.bytes for c in _unique(self.components) if c.offload)


def _unique(components: Iterable[Component]) -> list[Component]:
    seen: dict[tuple, Component] = {}
    for c in components:
        seen.setdefault(c.identity, c)
    return list(seen.values())


def plan_mode(model: str, mode: str, engine: str, spec: dict[str, Any]) -> ModePlan:
    options_model = OPTIONS[engine]
    opts = options_model(**{"engine": engine, **spec})
    assert isinstance(opts, DiffusersOptions)
    pipelines = [Path(opts.checkpoint).expanduser()]
    extend = getattr(opts, "extend_checkpoint", None)
    if extend is not None and Path(extend).expanduser().resolve() != pipelines[0].resolve():
        pipelines.append(Path(extend).expanduser())
    components = []
    for folder in pipelines:
        dtypes = component_dtypes(folder, opts.dtype, getattr(options_model, "dtype_defaults", {}))
        for name, dtype in dtypes.items():
            weights = read_weights(folder / name)
            if weights is not None:
                components.append(
                    Component(folder, name, dtype, weights.bytes_at(dtype), weights.key, opts.cpu_offload, opts.vae_tiling)
                )
    upsampler = upsampler_component(opts)
    at = opts
    if upsampler is not None:
        components.append(upsampler)
        pipelines.append(upsampler.pipeline)
        # The refine runs at twice the stage-1 size: 4 x downscale_factor^2 of the grid's area.
        factor = getattr(opts, "downscale_factor", 0.5)
        at = opts.model_copy(update={"max_area": max(opts.max_area, round(4 * factor * factor * opts.max_area))})
    acts = activation_bytes(engine, pipelines[0], at)
    return ModePlan(model, mode, engine, pipelines, components, acts, opts.cpu_offload, opts.vae_tiling, opts.dtype)


def upsampler_component(opts: DiffusersOptions) -> Component | None:
    """The LTX families' latent upsampler (the ``upsampler`` option), as ``ltx_two_stage`` loads
    it: the model folder (``upsampler_folder``) at ``upsampler_dtype``, kept on the device
    (``offload`` false)."""
    path = getattr(opts, "upsampler", None)
    if path is None:
        return None
    folder = upsampler_folder(path)
    weights = read_weights(folder)
    if weights is None:
        raise ValueError(f"upsampler = {str(path)!r}: no safetensors weights in {folder}")
    dtype = upsampler_dtype(opts.dtype)
    return Component(folder.parent, folder.name, dtype, weights.bytes_at(dtype), weights.key, False)


def upsampler_folder(path: Path) -> Path:
    """The latent upsampler model's folder: ``latent_upsampler`` of a pipeline folder (as
    published, e.g. ``Lightricks/ltxv-spatial-upscaler-0.9.7``), or the folder itself when it holds
    the model (``config.json``). ``ValueError`` naming the option otherwise."""
    path = Path(path).expanduser()
    if (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text())
        if not isinstance(index.get("latent_upsampler"), list) or not (path / "latent_upsampler").is_dir():
            raise ValueError(f"upsampler = {str(path)!r}: its model_index.json has no latent_upsampler")
        return path / "latent_upsampler"
    if (path / "config.json").is_file():
        return path
    raise ValueError(
        f"upsampler = {str(path)!r}: not a latent upsampler folder (a diffusers folder with model_index.json "
        "and latent_upsampler/, or the model's folder with config.json)"
    )


def upsampler_dtype(dtype: str | Mapping[str, str]) -> str:
    """The upsampler's dtype: the mode's ``dtype``, or its table's ``default``."""
    return dtype if isinstance(dtype, str) else dtype.get("default", "bfloat16")


@dataclass
class MemoryPlan:
    modes: list[ModePlan]
    devices: list[str]
    capacity: dict[str, int | None]  # device -> bytes (None: unknown)
    host_capacity: int | None

    def resident(self) -> int:
        """Device bytes when every mode's weights stay loaded on one device (shared once)."""
        on_device = [c for m in self.modes if not m.offload for c in m.components]
        return sum(c.bytes for c in _unique(on_device)) + max((m.device_weights for m in self.modes if m.offload), default=0)

    def host(self) -> int:
        return sum(c.bytes for c in _unique(c for m in self.modes if m.offload for c in m.components if c.offload))

    def problems(self) -> list[str]:
        """One line per mode that cannot fit a device (or the host, with offload), with the
        option that would help."""
        out = []
        for m in self.modes:
            for device in self.devices:
                cap = self.capacity.get(device)
                if cap is not None and m.peak > cap:
                    out.append(
                        f"models.{m.model} ({m.mode}) needs {gib(m.peak)} on {device} "
                        f"(weights {gib(m.device_weights)} + activations {gib(m.activations)} + {gib(m.overhead)}), "
                        f"which has {gib(cap)}: {advice(m, cap)}"
                    )
        host = self.host() * max(1, len(self.devices))  # one worker process per device, each its own copies
        if self.host_capacity is not None and host > self.host_capacity:
            worst = max((m for m in self.modes if m.offload), key=lambda m: m.host)
            out.append(
                f"models.{worst.model} ({worst.mode}): with cpu_offload the pipelines' weights take {gib(host)} "
                f"of host RAM ({len(self.devices)} device process(es)), which has {gib(self.host_capacity)}: serve fewer "
                "models per machine (worker --models) or drop cpu_offload where the device can hold the weights"
            )
        return out

    def lines(self) -> list[str]:
        """The plan as ``models check`` prints it."""
        out = []
        uses: dict[tuple, int] = {}
        for m in self.modes:
            for c in _unique(m.components):
                uses[c.identity] = uses.get(c.identity, 0) + 1
        for m in self.modes:
            flags = ", ".join(f for f, on in (("cpu_offload", m.offload), ("vae_tiling", m.vae_tiling)) if on)
            out.append(f"{m.model} / {m.mode} ({m.engine}{', ' + flags if flags else ''})")
            for c in _unique(m.components):
                shared = "  shared" if uses[c.identity] > 1 else ""
                out.append(f"    {c.pipeline.name}/{c.name:<16} {c.dtype:<9} {gib(c.bytes):>10}{shared}")
            where = "device" if not m.offload else "device (largest component; the rest in host RAM)"
            out.append(
                f"    peak per {where}: {gib(m.peak)} = weights {gib(m.device_weights)} + activations {gib(m.activations)}"
                f" + overhead {gib(m.overhead)}" + (f"; host RAM {gib(m.host)}" if m.offload else "")
            )
        out.append(
            f"all modes resident on one device: {gib(self.resident())}"
            + (f"; host RAM (offload): {gib(self.host())} per device process" if self.host() else "")
        )
        for device in self.devices:
            cap = self.capacity.get(device)
            worst = max((m.peak for m in self.modes), default=0)
            verdict = "unknown memory (give --device-memory)" if cap is None else ("fits" if worst <= cap else "does NOT fit")
            out.append(f"{device}: {gib(cap) if cap is not None else '?'}; largest mode {gib(worst)}: {verdict}")
        return out


def advice(m: ModePlan, cap: int) -> str:
    """The option that would make the mode fit, the first that does."""
    if not m.offload:
        largest = max((c.bytes for c in _unique(m.components)), default=0)
        if largest + m.activations + m.overhead <= cap:
            return "set cpu_offload = true (one model on the device at a time)"
    if m.dtype == "float32" or (isinstance(m.dtype, dict) and "float32" in m.dtype.values()):
        return 'set dtype = "bfloat16"'
    if not m.vae_tiling and m.engine != "wan":
        return "set vae_tiling = true"
    return "lower max_area or frames, or use a device with more memory"


def gib(n: int | None) -> str:
    if n is None:
        return "?"
    if n < GiB // 10:
        return f"{n / 1024**2:.2f} MiB"
    return f"{n / GiB:.1f} GiB"


def parse_size(text: str) -> int:
    """``80GiB``, ``80GB``, ``81920MiB``, ``1e9`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]i?B?|B)?\s*", text)
    if not m:
        raise ValueError(f"not a memory size: {text!r} (e.g. 80GiB)")
    value, unit = float(m.group(1)), (m.group(2) or "B").upper()
    powers = {"K": 1, "M": 2, "G": 3, "T": 4}
    base = 1024 if "I" in unit else 1000
    return int(value * base ** powers.get(unit[0], 0))


def host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory(device: str, stated: int | None = None) -> int | None:
    """A device's memory: ``stated`` when given, host RAM for ``cpu``, ``nvidia-smi`` for CUDA."""
    if stated is not None:
        return stated
    if device == "cpu":
        return host_memory()
    if device.startswith("cuda"):
        index = device.partition(":")[2] or "0"
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", index],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return int(out.stdout.strip()) * 1024**2 if out.returncode == 0 else None
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None
    return None


def build_plan(
    models: dict[str, ModelConfig], devices: list[str], stated: int | None = None, only: Collection[str] | None = None
) -> MemoryPlan:
    """The plan of the diffusers modes of ``models`` (those in ``only``) on ``devices``."""
    modes = []
    for name, model in models.items():
        if only is not None and name not in only:
            continue
        for mode, spec in model.modes.items():
            options_model = OPTIONS.get(spec.engine)
            if options_model is None or not issubclass(options_model, DiffusersOptions):
                continue
            modes.append(plan_mode(name, mode.value, spec.engine, spec.options))
    if all(d == "cpu" for d in devices):
        for m in modes:
            m.overhead = 0
    capacity = {d: device_memory(d, stated) for d in devices}
    return MemoryPlan(modes, devices, capacity, host_memory())
