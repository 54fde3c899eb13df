"""Benchmarks of the diffusers engines on tiny random pipelines, on CPU.

overhead:  a bare diffusers pipeline call, the engine in-process (same model folder, same
           arguments, plus resizing every frame to 864x480), and a task through the HTTP API (POST
           -> the "completed" callback: queue, worker, engine, MP4 encode, storage), alternating
           in one run.
fast-tier: the step time of a small random Wan transformer (width 256, 8 layers) with each cache
           hook against no hook, at the same step count, and the output drift each costs.

    .venv/bin/python bench/bench_diffusers.py overhead --repeats 3
    .venv/bin/python bench/bench_diffusers.py fast-tier --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from opendance.engines._torch_utils import grid_size, round_frames, to_uint8_frames
from opendance.testing import tiny_pipelines
from opendance.testing.server import LiveServer

PROMPT = "a robot dancing in the rain"
FPS, SECONDS, WIDTH, HEIGHT = 8, 5, 864, 480  # a 480p 16:9 task, 5 s at 8 fps

# name -> (tiny pipeline, denoising steps, native grid area)
CASES = {
    "bench-wan256": ("wan-bench", 30, 128 * 64),  # width 256, 8 layers: denoising dominates, as on a GPU
    "bench-wan256-60": ("wan-bench", 60, 128 * 64),  # the same, twice the steps
    "bench-tiny": ("wan-t2v", 2, 32 * 16),  # the tests' model: fixed costs dominate
}


def _spec(folder: Path, steps: int, area: int) -> dict:
    return dict(
        engine="wan",
        checkpoint=str(folder),
        steps=steps,
        guidance=5.0,
        native_fps=FPS,
        frames=41,
        overlap=5,
        max_area=area,
        dtype="float32",
    )


def _bare_call(pipe, steps: int, area: int, seed: int) -> float:
    """What the engine asks of the pipeline for this task, and nothing else."""
    width, height = grid_size(WIDTH, HEIGHT, area, 16)
    t0 = time.perf_counter()
    pipe(
        prompt=PROMPT,
        negative_prompt="",
        height=height,
        width=width,
        num_frames=round_frames(SECONDS * FPS, 4),
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    )
    return time.perf_counter() - t0


def _engine_seconds(client, model: str) -> float:
    text = client.get("/metrics").text
    m = re.search(rf'opendance_engine_seconds_sum\{{model="{re.escape(model)}"\}} ([0-9.e+-]+)', text)
    return float(m.group(1)) if m else 0.0


def _engine_call(engine, name: str, seed: int) -> float:
    """The engine in this process: generate, then pull every output frame (864x480), no encoder."""
    from opendance.domain import Mode
    from opendance.engines.base import Inputs, Job, StepContext

    job = Job(
        task_id="bench",
        model=name,
        mode=Mode.TEXT_TO_VIDEO,
        prompt=PROMPT,
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        duration=SECONDS,
        seed=seed,
        engine=engine.spec,
    )
    t0 = time.perf_counter()
    for _ in engine.generate(job, Inputs(), StepContext()).frames:
        pass
    return time.perf_counter() - t0


def _api_call(client, hook, model: str, seed: int) -> tuple[float, float]:
    """POST -> the ``completed`` callback (no polling, so the API process stays idle meanwhile)."""
    before = _engine_seconds(client, model)
    hook.posts.clear()
    body = {"model": model, "prompt": PROMPT, "extra_body": {"seed": seed, "callback_url": hook.url + "/done"}}
    t0 = time.perf_counter()
    r = client.post("/v1/video/generations", json=body)
    r.raise_for_status()
    while not any(b'"completed"' in body for _, body in hook.posts):
        if any(b'"failed"' in body for _, body in hook.posts):
            raise RuntimeError(hook.posts[-1][1])
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    return wall, _engine_seconds(client, model) - before


def overhead(args) -> None:
    from diffusers import WanPipeline

    from opendance.engines.wan import WanEngine
    from opendance.testing.http import MediaHost

    root = Path(args.dir)
    folders = tiny_pipelines.build_all(root / "pipelines", sorted({c[0] for c in CASES.values()}))
    extra = {
        name: dict(resolution="480p", fps=FPS, modes={"text-to-video": _spec(folders[p], steps, area)})
        for name, (p, steps, area) in CASES.items()
    }
    config = root / "models.toml"
    # The TOML writer also lists the seed names; point them at folders that exist.
    all_folders = tiny_pipelines.build_all(root / "pipelines")
    tiny_pipelines.write_models_toml(config, all_folders, extra=extra)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}")
    rows = []
    env = {"OPENDANCE_ALLOW_HOSTS": "127.0.0.1"}  # the callback receiver
    with (
        LiveServer(root / "data", config=config, env=env, startup_timeout=120) as server,
        server.client() as client,
        MediaHost() as hook,
    ):
        for name, (p, steps, area) in CASES.items():
            if args.cases and name not in args.cases.split(","):
                continue
            pipe = WanPipeline.from_pretrained(str(folders[p]), dtype=torch.float32, local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
            engine = WanEngine(_spec(folders[p], steps, area), "cpu")
            # Warm up all three (the worker loads the model on its first task).
            _bare_call(pipe, steps, area, 0), _engine_call(engine, name, 0), _api_call(client, hook, name, 0)
            bare, eng, api, worker = [], [], [], []
            for i in range(args.repeats):  # alternate, so all see the same machine load
                bare.append(_bare_call(pipe, steps, area, i + 1))
                eng.append(_engine_call(engine, name, i + 1))
                wall, engine_s = _api_call(client, hook, name, i + 1)
                api.append(wall)
                worker.append(engine_s)
            engine.close()
            med = [statistics.median(x) for x in (bare, eng, api, worker)]
            rows.append((name, steps, grid_size(WIDTH, HEIGHT, area, 16), *med))
            print(f"{name}: bare {_r(bare)} engine {_r(eng)} api {_r(api)} worker engine {_r(worker)}", file=sys.stderr)
    print(
        "\n| model | steps | grid | bare pipeline call s | engine (generate + 864x480 frames) s | task through the API s "
        "| of which in the worker's engine s | engine / bare | API / bare |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, steps, (w, h), b, e, a, we in rows:
        print(f"| {name} | {steps} | {w}x{h} | {b:.2f} | {e:.2f} | {a:.2f} | {we:.2f} | {e / b:.3f} | {a / b:.3f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


def _r(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values]


class _StepClock:
    """Wall and CPU time (this process, all threads) at the end of every step: CPU time is what
    the hook saves, and it is far less disturbed by other processes on a shared machine."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def __call__(self, pipe, i, t, kwargs):
        self.marks.append((time.perf_counter(), time.process_time()))
        return kwargs


def _run(pipe, steps: int, width: int, height: int) -> tuple[list[np.ndarray], float, float, int]:
    """Frames, mean wall and CPU seconds per denoising step (after the first, which also encodes
    the prompt), and how many times the last block really computed (its feed-forward ran)."""
    clock, full = _StepClock(), []
    handle = pipe.transformer.blocks[-1].ffn.register_forward_pre_hook(lambda m, a: full.append(1))
    if pipe.transformer.is_cache_enabled:
        pipe.transformer._reset_stateful_cache()
    try:
        out = pipe(
            prompt=PROMPT,
            negative_prompt="",
            height=height,
            width=width,
            num_frames=41,
            num_inference_steps=steps,
            guidance_scale=5.0,
            generator=torch.Generator("cpu").manual_seed(1),
            output_type="np",
            callback_on_step_end=clock,
        )
    finally:
        handle.remove()
    m = clock.marks
    wall = (m[-1][0] - m[0][0]) / (len(m) - 1)
    cpu = (m[-1][1] - m[0][1]) / (len(m) - 1)
    return to_uint8_frames(out.frames), wall, cpu, len(full)


def _drift(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    x, y = np.stack(a).astype(np.float64), np.stack(b).astype(np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float(np.mean(np.abs(x - y))), float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _mag_ratios(pipe, steps: int, width: int, height: int) -> list[float]:
    from diffusers import MagCacheConfig

    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _run(pipe, steps, width, height)
    pipe.transformer.disable_cache()
    lists = re.findall(r"\[([0-9eE.,\s+-]+)\]", out.getvalue())
    return [float(v) for v in lists[0].split(",")]  # the "cond" pass's ratios


def fast_tier(args) -> None:
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    # One thread: CPU time is then the work done (several threads spin while they wait, which
    # counts as CPU time and swings with the load of a shared machine).
    torch.set_num_threads(args.threads)
    pipe = tiny_pipelines.eval_all(tiny_pipelines.wan_t2v(width=args.width, layers=args.layers))
    pipe.set_progress_bar_config(disable=True)
    width, height = grid_size(WIDTH, HEIGHT, args.area, 16)
    params = sum(p.numel() for p in pipe.transformer.parameters())
    print(
        f"Wan transformer width {args.width}, {args.layers} layers ({params / 1e6:.1f} M parameters), grid "
        f"{width}x{height}x41 frames, {args.steps} steps, guidance 5; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}"
    )
    steps = args.steps
    hooks = {
        "none (standard tier)": None,
        "FirstBlockCache 0.05": FirstBlockCacheConfig(threshold=0.05),
        "FirstBlockCache 0.1": FirstBlockCacheConfig(threshold=0.1),
        "FirstBlockCache 0.2 (fast tier)": FirstBlockCacheConfig(threshold=0.2),
        "TaylorSeer (interval 5, from step 3)": TaylorSeerCacheConfig(
            cache_identifiers=[r"^blocks\.\d+$"], taylor_factors_dtype=torch.float32
        ),
        "MagCache 0.06 (calibrated)": "mag",
    }
    configs = {}
    for name, config in hooks.items():
        if config == "mag":
            config = MagCacheConfig(mag_ratios=_mag_ratios(pipe, steps, width, height), num_inference_steps=steps)
        configs[name] = config
    best: dict[str, tuple] = {}
    for _ in range(args.repeats):  # round robin, so every hook sees the same machine load
        for name, config in configs.items():
            if config is not None:
                pipe.transformer.enable_cache(config)
            frames, wall, cpu, full = _run(pipe, steps, width, height)
            if config is not None:
                pipe.transformer.disable_cache()
            prev = best.get(name)
            best[name] = (frames, min(wall, prev[1]) if prev else wall, min(cpu, prev[2]) if prev else cpu, full)
            print(
                f"{name}: {wall * 1000:.0f} ms/step wall, {cpu * 1000:.0f} ms CPU, last block computed {full}x", file=sys.stderr
            )
    base = best["none (standard tier)"]
    print(
        "\n| cache hook | CPU ms per step | step-time ratio (CPU) | wall ms per step | ratio (wall) "
        "| last block computed | mean abs diff (0-255) | PSNR dB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (frames, wall, cpu, full) in best.items():
        mad, psnr = _drift(frames, base[0])
        print(
            f"| {name} | {cpu * 1000:.0f} | {cpu / base[2]:.2f} | {wall * 1000:.0f} | {wall / base[1]:.2f} "
            f"| {full} / {2 * steps} | {mad:.2f} | {psnr:.1f} |"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead", help="task through the API vs a bare pipeline call")
    o.add_argument("--repeats", type=int, default=3)
    o.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    o.add_argument("--cases", default="", help=f"comma-separated cases (default all: {', '.join(CASES)})")
    f = sub.add_parser("fast-tier", help="cache hooks vs none on a small random Wan transformer")
    f.add_argument("--steps", type=int, default=20)
    f.add_argument("--repeats", type=int, default=3, help="runs per hook, round robin (the fastest counts)")
    f.add_argument("--threads", type=int, default=1, help="torch threads")
    f.add_argument("--width", type=int, default=256)
    f.add_argument("--layers", type=int, default=8)
    f.add_argument("--area", type=int, default=128 * 64, help="native grid pixels")
    args = parser.parse_args()
    if args.what == "overhead":
        with tempfile.TemporaryDirectory(prefix="bench-diffusers-") as tmp:
            args.dir = args.dir or tmp
            overhead(args)
    else:
        fast_tier(args)


if __name__ == "__main__":
    main()
