"""The levers on a GPU: the real-size Wan2.1-T2V-1.3B transformer (its published config, random
weights: speed does not depend on their values) in bf16, at the latent shape of an 81-frame
832x480 video, denoised with classifier-free guidance (two transformer passes per step).

For bare diffusers and for each lever alone, then combined: seconds per step, the ratio to bare,
peak GPU memory, and the drift of the final latents against bare (relative L2; same weights,
noise and schedule). The levers are applied by ``opendance.engines.levers``, the code the
engines run at load. It finishes on one H200 in under 8 minutes, start included (``--deadline``
skips the levers that no longer fit, and says so). ``--tiny`` runs the same code at a tiny size,
on CPU too (CI runs it: tests/bench/test_bench_gpu.py).

    python bench/bench_gpu.py --out $OUT/bench_gpu.json     # on a CUDA machine (docs/benchmarks.md)
    python bench/bench_gpu.py --tiny                         # anywhere
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from opendance.engines import levers

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
WAN_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)
TINY = dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=32, text_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=32)
# (latents: batch, channels, latent frames, height / 8, width / 8; text: batch, tokens, text_dim)
SHAPES = {"full": ((1, 16, 21, 60, 104), (1, 512, 4096)), "tiny": ((1, 16, 3, 8, 8), (1, 8, 32))}
ATTENTION_PREFERENCE = ("_flash_3", "flash", "sage", "_native_cudnn", "_native_flash", "native")
GUIDANCE, SHIFT = 5.0, 3.0  # Wan 2.1 at 480p


def best_attention(device: str, dtype) -> str:
    usable = set(levers.usable_attention_backends(device, dtype))
    return next(b for b in ATTENTION_PREFERENCE if b in usable)


def lever_table(device: str, dtype) -> dict[str, dict]:
    """name -> options (as a models file gives them); ``None`` values: not on this device (why)."""
    cuda = device.startswith("cuda")
    fp8_matmul = cuda and torch.cuda.get_device_capability(device) >= (8, 9)
    attention = best_attention(device, dtype)
    # In the order they run: what the goal needs first, the slowest compile late (--deadline).
    table: dict[str, dict] = {
        "bare": {},
        f"attention {attention}": {"attention_backend": attention},
        "compile regional": {"compile": "regional"},
        "combined": {"attention_backend": attention, "compile": "regional"},
        "fp8_dynamic": {"quantization": "fp8_dynamic"} if fp8_matmul else {"skip": "needs a CUDA GPU with fp8 matmuls (sm89+)"},
        "fp8_layerwise": {"quantization": "fp8_layerwise"},
        "int8_weight_only": {"quantization": "int8_weight_only"},
        "fp8_weight_only": {"quantization": "fp8_weight_only"},
        "compile full": {"compile": "full"},
        "offload group": {"offload": "group"} if cuda else {"skip": "needs an accelerator"},
    }
    if fp8_matmul and importlib.util.find_spec("torchao") is not None:
        table["combined"]["quantization"] = "fp8_dynamic"  # fp8 matmuls: the quantization that is faster
    return table


class Opts:
    """What ``levers`` reads of a model's options."""

    def __init__(self, **kw) -> None:
        self.attention_backend = kw.get("attention_backend")
        self.compile = kw.get("compile")
        self.quantization = kw.get("quantization")
        self.offload = kw.get("offload")
        self.context_parallel = None


def build(config: dict, device: str, dtype):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**config).to(dtype).eval()
    keep = set(model._keep_in_fp32_modules or ())  # as from_pretrained(torch_dtype=bf16) keeps them
    for name, param in model.named_parameters():
        if keep & set(name.split(".")):
            param.data = param.data.float()
    return model


def prepare(model, opts: Opts, device: str) -> None:
    """The engine's order (levers.apply): quantize, place, attention backend, compile."""
    if opts.quantization:
        levers.quantize(model, opts.quantization, device)
    if opts.offload == "group":
        model.to("cpu")
        reset_peak(device)
        levers.group_offload(model, device)
    if opts.attention_backend:
        levers.check_attention_backend(opts.attention_backend, device, torch.bfloat16)
        levers.set_attention_backend(model, opts.attention_backend)
    if opts.compile:
        levers.compile_model(model, opts.compile)


def denoise(model, latents, text, uncond, steps: int, device: str):
    """Flow-matching Euler with CFG, as WanPipeline's loop: two passes per step."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    scheduler.set_timesteps(steps, device=device)
    latents = latents.clone()
    with torch.inference_mode():
        for t in scheduler.timesteps:
            x = latents.to(torch.bfloat16)
            timestep = t.expand(latents.shape[0])
            cond = model(hidden_states=x, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
            noise_uncond = model(hidden_states=x, timestep=timestep, encoder_hidden_states=uncond, return_dict=False)[0]
            noise = noise_uncond + GUIDANCE * (cond - noise_uncond)
            latents = scheduler.step(noise.float(), t, latents, return_dict=False)[0]
    return latents


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def reset_peak(device: str) -> None:
    """Peak memory from here: the bf16 weights as loaded, not the fp32 init they were cast from."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_one(name: str, options: dict, config: dict, inputs, steps: int, warmup: int, device: str) -> dict:
    cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    model = build(config, device, torch.bfloat16)
    reset_peak(device)
    prepare(model, Opts(**options), device)
    denoise(model, *inputs, warmup, device)  # compiles what is compiled, fills the caches
    sync(device)
    ready = time.perf_counter() - t0
    t1 = time.perf_counter()
    latents = denoise(model, *inputs, steps, device)
    sync(device)
    per_step = (time.perf_counter() - t1) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    del model
    gc.collect()
    torch._dynamo.reset()
    return {
        "lever": name,
        "options": options,
        "s_per_step": per_step,
        "ready_s": ready,
        "peak_gib": peak,
        "latents": latents.cpu(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny transformer and latent (runs on CPU in seconds)")
    p.add_argument("--steps", type=int, default=None, help="timed denoising steps per lever (default 4; tiny 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile, caches)")
    p.add_argument("--levers", default=None, help="comma-separated names to run (default all; see the table)")
    p.add_argument("--device", default=None, help="default cuda when there is one, else cpu")
    p.add_argument("--deadline", type=float, default=420.0, help="seconds after which no further lever starts")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()

    started = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = "tiny" if args.tiny else "full"
    steps = args.steps or (2 if args.tiny else 4)
    config = TINY if args.tiny else WAN_1_3B
    latent_shape, text_shape = SHAPES[size]
    g = torch.Generator(device).manual_seed(42)
    inputs = (
        torch.randn(latent_shape, generator=g, device=device),
        torch.randn(text_shape, generator=g, device=device, dtype=torch.bfloat16),
        torch.randn(text_shape, generator=g, device=device, dtype=torch.bfloat16),
    )
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    print(
        f"# {size}: Wan transformer {config['num_layers']} layers, dim {config['num_attention_heads'] * config['attention_head_dim']}, "
        f"latents {latent_shape}, bf16, CFG, {steps} timed steps after {args.warmup}; {gpu}; torch {torch.__version__}",
        flush=True,
    )

    table = lever_table(device, torch.bfloat16)
    wanted = [n.strip() for n in args.levers.split(",")] if args.levers else list(table)
    unknown = [n for n in wanted if n not in table and not any(k.startswith(n) for k in table)]
    if unknown:
        p.error(f"unknown levers {unknown}; choose from {list(table)}")
    names = [k for k in table if any(k == n or k.startswith(n) for n in wanted)]
    if "bare" not in names:
        names.insert(0, "bare")
    results, skipped = [], []
    for name in names:
        options = table[name]
        if "skip" in options:
            skipped.append(f"{name} ({options['skip']})")
            continue
        if time.perf_counter() - started > args.deadline:
            skipped.append(f"{name} (past --deadline {args.deadline:.0f} s)")
            continue
        try:
            results.append(run_one(name, options, config, inputs, steps, args.warmup, device))
        except Exception as exc:  # one lever that cannot run here does not lose the others' figures
            skipped.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})")
            torch._dynamo.reset()
            continue
        r = results[-1]
        print(f"  {name}: {r['s_per_step']:.4f} s/step (ready in {r['ready_s']:.1f} s)", flush=True)

    bare = results[0]
    ref = bare["latents"]
    print("\n| lever | s/step | ratio to bare | peak GPU GiB | drift vs bare (rel. L2) | ready s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        r["ratio"] = r["s_per_step"] / bare["s_per_step"]
        r["drift"] = float((r["latents"] - ref).norm() / ref.norm())
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"| {r['lever']} | {r['s_per_step']:.4f} | {r['ratio']:.2f} | {peak} | {r['drift']:.2e} | {r['ready_s']:.1f} |")
    for s in skipped:
        print(f"skipped: {s}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out:
        rows = [{k: v for k, v in r.items() if k != "latents"} for r in results]
        meta = {"size": size, "device": gpu, "torch": torch.__version__, "steps": steps, "warmup": args.warmup}
        args.out.write_text(json.dumps({**meta, "results": rows, "skipped": skipped}, indent=2))
    return 0 if results and all(r["drift"] == r["drift"] for r in results) else 1  # NaN drift: a broken lever


if __name__ == "__main__":
    raise SystemExit(main())
