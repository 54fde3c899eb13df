"""Speed and memory levers of the diffusers engines, per model: ``attention_backend``,
``compile``, ``quantization``, ``offload`` and ``context_parallel`` (docs/models.md, "Options").

Two halves:

- ``LeverOptions``: the TOML keys (pydantic only; ``DiffusersOptions`` inherits them), so a
  models file with a value no engine takes is refused at ``opendance serve`` start.
- ``apply(pipe, opts, device)``: what ``_torch_utils.load_pipeline`` does after
  ``from_pretrained`` instead of a bare ``pipe.to(device)``, in this order: quantize, place
  (move or offload), attention backend, context parallel, compile. ``warm_up(engine)`` then runs
  two denoising steps of a job at the native window, so a compiled transformer is compiled at
  load and the first task pays nothing. What only the installed packages, the device and the
  weights can tell (a backend without its kernel, torchao missing, heads that do not split) is a
  ``ValueError`` at load naming the option and the choices.

The model-level functions (``quantize``, ``set_attention_backend``, ``compile_model``,
``group_offload``, ``enable_context_parallel``) are what ``bench/bench_gpu.py`` times.
torch and diffusers are imported inside the functions: this module loads without them.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("opendance.engines")

Compile = Literal["regional", "full"]
Quantization = Literal["fp8_layerwise", "int8_weight_only", "fp8_weight_only", "fp8_dynamic"]
Offload = Literal["model", "group"]

TORCHAO_PIN = "torchao==0.18.0"  # the version tested with torch 2.13.0 (pyproject's diffusers extra)
TRANSFORMERS = ("transformer", "transformer_2")


class ContextParallelOptions(BaseModel):
    """``context_parallel = {ulysses = 2}`` or ``{ring = 2}`` (or both: a ring x ulysses mesh):
    the transformer's sequence split over the ranks of the model's device group."""

    model_config = ConfigDict(extra="forbid")
    ulysses: int | None = Field(None, ge=2, le=64, description="Ulysses degree (all-to-all over heads)")
    ring: int | None = Field(None, ge=2, le=64, description="ring-attention degree (K/V passed around)")

    @model_validator(mode="after")
    def _some(self) -> ContextParallelOptions:
        if self.ulysses is None and self.ring is None:
            raise ValueError("give ulysses = N or ring = N (N >= 2)")
        return self

    @property
    def degree(self) -> int:
        return (self.ulysses or 1) * (self.ring or 1)


class LeverOptions(BaseModel):
    """The levers' TOML keys (mixed into ``DiffusersOptions``)."""

    attention_backend: str | None = Field(
        None,
        pattern=r"^_?[a-z0-9_]+$",
        description="diffusers attention backend of the transformer(s): native, flash, _flash_3, sage, _native_cudnn ... "
        "(checked at load against what the installed diffusers, torch and device offer)",
    )
    compile: Compile | None = Field(
        None, description="torch.compile the transformer(s): regional = compile_repeated_blocks, full = the whole model"
    )
    quantization: Quantization | None = Field(
        None,
        description="fp8_layerwise: fp8 storage, cast per layer (diffusers); int8_weight_only, fp8_weight_only, "
        "fp8_dynamic: torchao",
    )
    offload: Offload | None = Field(
        None, description="model: enable_model_cpu_offload; group: enable_group_offload (leaf level, CUDA streams)"
    )
    context_parallel: ContextParallelOptions | None = Field(
        None, description="{ulysses = N} or {ring = N}: needs devices_per_task = N"
    )

    @model_validator(mode="after")
    def _levers_together(self) -> LeverOptions:
        if self.offload is not None and getattr(self, "cpu_offload", False):
            raise ValueError(f'give offload = "{self.offload}" or cpu_offload = true, not both')
        if self.offload is not None and self.context_parallel is not None:
            raise ValueError("offload and context_parallel do not go together (each rank holds its whole model)")
        return self


def load_key(opts: Any) -> tuple:
    """What of the levers makes a loaded pipeline different (part of the per-process cache key)."""
    cp = opts.context_parallel
    return (opts.attention_backend, opts.compile, opts.quantization, opts.offload, (cp.ulysses, cp.ring) if cp else None)


def transformers_of(pipe) -> list:
    return [m for name in TRANSFORMERS if (m := getattr(pipe, name, None)) is not None]


# ---------------------------------------------------------------------------------------------
# The pipeline at load


def apply(pipe, opts: Any, device: str) -> None:
    """Quantize, place (move or offload), set the attention backend, split for context
    parallelism and compile: the transformers of ``pipe`` as ``opts`` says."""
    models = transformers_of(pipe)
    dtype = models[0].dtype if models else None  # the compute dtype (fp8_layerwise stores weights in fp8)
    offload = opts.offload or ("model" if getattr(opts, "cpu_offload", False) else None)
    if offload is None:
        pipe.to(device)
    if opts.quantization is not None:
        for model in models:
            quantize(model, opts.quantization, device)
    if offload == "model":
        if opts.offload:  # (the older cpu_offload = true is taken as it always was)
            _need_accelerator(device, "offload", offload)
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "group":
        _need_accelerator(device, "offload", offload)
        group_offload(pipe, device)
    if opts.attention_backend is not None:
        check_attention_backend(opts.attention_backend, device, dtype)
        for model in models:
            set_attention_backend(model, opts.attention_backend)
    if opts.context_parallel is not None:
        for model in models:
            enable_context_parallel(model, opts.context_parallel, device, opts.attention_backend)
    if opts.compile is not None:
        for model in models:
            compile_model(model, opts.compile)


def _need_accelerator(device: str, option: str, value: str) -> None:
    if device == "cpu" or device.startswith("cpu:"):
        raise ValueError(
            f'{option} = "{value}" moves weights between the CPU and an accelerator, but this model runs on {device}: '
            "remove the option or set device"
        )


def group_offload(pipe_or_model, device: str) -> None:
    """Every leaf module onloaded just before it runs, the next one prefetched on a CUDA stream."""
    import torch

    pipe_or_model.enable_group_offload(
        onload_device=torch.device(device),
        offload_device=torch.device("cpu"),
        offload_type="leaf_level",
        use_stream=device.startswith("cuda"),
    )


# ---------------------------------------------------------------------------------------------
# Quantization


def quantize(model, kind: str, device: str) -> None:
    import torch

    if kind == "fp8_layerwise":
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=model.dtype)
        return
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Float8WeightOnlyConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        raise ValueError(
            f'quantization = "{kind}" needs torchao, which is not installed here; '
            f'pip install {TORCHAO_PIN} (tested with torch 2.13.0), or use quantization = "fp8_layerwise"'
        ) from None
    if kind == "fp8_dynamic":
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        if not cuda or torch.cuda.get_device_capability(device) < (8, 9):
            raise ValueError(f'quantization = "fp8_dynamic" needs a CUDA GPU with fp8 matmuls (sm89+: Ada, Hopper); not {device}')
    config = {
        "int8_weight_only": Int8WeightOnlyConfig,
        "fp8_weight_only": Float8WeightOnlyConfig,
        "fp8_dynamic": Float8DynamicActivationFloat8WeightConfig,
    }[kind]()
    quantize_(model, config)


# ---------------------------------------------------------------------------------------------
# Attention backends: diffusers' dispatcher registry, checked against this device


def _probe(name: str, device: str, dtype) -> str | None:
    """Why backend ``name`` cannot run here (None: it ran a tiny attention call)."""
    import torch
    from diffusers.models import attention_dispatch as ad

    backend = ad.AttentionBackendName(name)
    try:
        ad._check_attention_backend_requirements(backend)
    except (RuntimeError, ValueError, ImportError) as exc:
        return str(exc)
    if backend in ad._HUB_KERNELS_REGISTRY:
        return None  # a Hub kernel: fetched (once) by set_attention_backend; nothing to probe before that
    dtype = dtype or torch.float32
    q, k, v = (torch.randn(1, 16, 2, 64, device=device, dtype=dtype) for _ in range(3))  # batch, sequence, heads, head dim
    try:
        for check in ad._AttentionBackendRegistry._constraints.get(backend, []):
            check(query=q, key=k, value=v, attn_mask=None, is_causal=False)
        with torch.inference_mode():
            ad.dispatch_attention_fn(q, k, v, backend=backend)
    except Exception as exc:  # whatever the kernel says: it cannot run on this device/dtype
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return None


def usable_attention_backends(device: str, dtype=None) -> list[str]:
    """The backends of the installed diffusers that run here (Hub kernels: when ``kernels`` is installed)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName if _probe(b.value, device, dtype) is None]


def check_attention_backend(name: str, device: str, dtype=None) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = [b.value for b in AttentionBackendName]
    if name not in known:
        raise ValueError(
            f'attention_backend = "{name}" is not an attention backend of diffusers; on {device} these work: '
            f"{', '.join(usable_attention_backends(device, dtype))} (all of diffusers': {', '.join(known)})"
        )
    problem = _probe(name, device, dtype)
    if problem is not None:
        raise ValueError(
            f'attention_backend = "{name}" cannot run on {device} ({str(dtype).removeprefix("torch.")}): {problem}; '
            f"on {device} these work: {', '.join(usable_attention_backends(device, dtype))}"
        )


def set_attention_backend(model, name: str) -> None:
    model.set_attention_backend(name)


# ---------------------------------------------------------------------------------------------
# Compile


def compile_model(model, how: str) -> None:
    """regional: each repeated block compiled once and reused (seconds to compile); full: the
    whole transformer (longer to compile, sometimes faster)."""
    if how == "regional":
        model.compile_repeated_blocks()
    else:
        model.compile()


def warm_up(engine) -> float:
    """Two denoising steps of a job at the native window (the largest one-chunk duration) and
    the grid of a 480p 16:9 request, stopped before the VAE: the compiled transformers are
    compiled now, not in the first task. Two experts (Wan 2.2 A14B: ``transformer_2`` takes the
    low-noise steps) run every step, so both are compiled. Text-to-video first, then the image
    modes for image-only models. Returns the seconds taken."""
    from PIL import Image

    from ..domain import OUTPUT_SIZES, Mode
    from ..errors import Cancelled, EngineError
    from . import _torch_utils as tu
    from .base import Inputs, Job, StepContext

    opts, t0 = engine.opts, time.perf_counter()
    one_chunk = [
        d
        for d in range(1, 61)
        if len(tu.plan_chunks(tu.round_frames(d * opts.native_fps, engine.temporal), opts.frames, opts.overlap, engine.temporal))
        == 1
    ]
    duration = max(one_chunk, default=1)
    width, height = OUTPUT_SIZES["480p"]["16:9"]
    grey = Image.new("RGB", (width, height), (127, 127, 127))
    inputs = Inputs(image=grey, last_image=grey)
    two_experts = getattr(engine.pipe, "transformer_2", None) is not None
    stop_after = opts.steps if two_experts else 2
    refused = []
    for mode in (Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO, Mode.FIRST_AND_LAST_FRAME):
        steps: list[int] = []

        def progress(done: int, total: int, steps: list[int] = steps) -> None:
            steps.append(done)

        def cancelled(steps: list[int] = steps) -> bool:
            return len(steps) >= stop_after

        ctx = StepContext(progress=progress, cancelled=cancelled)
        job = Job("warm-up", "warm-up", mode, "warm-up", width, height, opts.native_fps, duration, 0, engine.spec)
        try:
            engine.generate(job, inputs, ctx)
        except Cancelled:
            break
        except EngineError as exc:
            refused.append(f"{mode.value}: {exc}")
            continue
        break  # fewer steps than two: it ran whole
    else:
        log.warning("%s engine: no warm-up ran (%s); the first task compiles", engine.name, "; ".join(refused))
    seconds = time.perf_counter() - t0
    log.info("%s engine: compiled and warmed up in %.2fs", engine.name, seconds)
    return seconds


# ---------------------------------------------------------------------------------------------
# Context parallel


def enable_context_parallel(model, cp: ContextParallelOptions, device: str, backend: str | None = None) -> None:
    """``model.enable_parallelism(ContextParallelConfig(...))`` over the device group's ranks.

    On CPU (gloo) diffusers 0.42.1's ``enable_parallelism`` cannot start: it picks the rank's
    device as ``rank % torch.accelerator.device_count()``, a ZeroDivisionError without an
    accelerator. There the same steps are taken with a CPU device mesh (``_enable_on_cpu``)."""
    import torch
    import torch.distributed as dist

    name = type(model).__name__
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"context_parallel needs a device group: set devices_per_task = {cp.degree} on the model")
    world = dist.get_world_size()
    if cp.degree != world:
        raise ValueError(f"context_parallel degree {cp.degree} but the device group has {world} ranks (devices_per_task)")
    if getattr(model, "_cp_plan", None) is None:
        log.warning("context_parallel: diffusers has no context-parallel plan for %s; every rank runs it whole", name)
        return
    heads = getattr(model.config, "num_attention_heads", None)
    if cp.ulysses and heads and heads % cp.ulysses:
        raise ValueError(f"context_parallel: ulysses = {cp.ulysses} must divide the {heads} attention heads of {name}")
    if cp.ring and (backend or "native") == "native":
        raise ValueError(
            "context_parallel: ring attention needs an attention backend that returns the log-sum-exp "
            "(_native_cudnn, _native_flash, flash, _flash_3_hub, sage on CUDA); the native backend does not "
            f"(set attention_backend, or use ulysses = {cp.ring})"
        )
    from diffusers import ContextParallelConfig

    config = ContextParallelConfig(ulysses_degree=cp.ulysses, ring_degree=cp.ring)
    if torch.accelerator.device_count() > 0 and not device.startswith("cpu"):
        model.enable_parallelism(config=config)
    else:
        _enable_on_cpu(model, config)
    log.info("context parallel on: %s split over rank %d of %d (%s)", name, dist.get_rank(), world, cp)


def _enable_on_cpu(model, config) -> None:
    """``ModelMixin.enable_parallelism`` (diffusers 0.42.1) for context parallelism, with the
    mesh and device on the CPU."""
    import torch
    import torch.distributed as dist
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ParallelConfig
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
    from diffusers.models.attention_processor import Attention, MochiAttention
    from torch.distributed.device_mesh import init_device_mesh

    if model._parallel_config is not None:
        raise RuntimeError(f"parallelism is already applied to this {type(model).__name__}")
    parallel = ParallelConfig(context_parallel_config=config)
    mesh = init_device_mesh("cpu", config.mesh_shape, mesh_dim_names=config.mesh_dim_names)
    parallel.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), mesh=mesh)
    model._parallel_config = parallel
    for module in model.modules():
        if not isinstance(module, (Attention, MochiAttention, AttentionModuleMixin)):
            continue
        processor = module.processor
        if processor is None or not hasattr(processor, "_parallel_config"):
            continue
        backend = getattr(processor, "_attention_backend", None)
        backend = AttentionBackendName(backend) if backend else _AttentionBackendRegistry.get_active_backend()[0]
        if not _AttentionBackendRegistry._is_context_parallel_available(backend):
            raise ValueError(f"context_parallel: attention backend {backend.value} does not support context parallelism")
        processor._parallel_config = parallel
    apply_context_parallel(model, config, model._cp_plan)
