"""How fast the preview engine makes finished videos (frames generated and encoded to the spec's
MP4), today's path and the current one side by side in one run.

    .venv/bin/python bench/bench_preview.py                  # both paths, 5 rounds
    .venv/bin/python bench/bench_preview.py --paths new      # the current path alone
    taskset -c 0 .venv/bin/python bench/bench_preview.py     # one core

Each case is a 5 s, 24 fps video (120 frames), 16:9, seed 1: text-to-video and image-to-video
(a 1024x768 gradient image) at 480p (864x480) and 720p (1280x720), written to an MP4 in a
temporary folder, exactly as a worker does it. Two paths:

- ``today``: the encoder path before issue 14, kept here as it was: the engine's RGB frames (the
  engine contract's path, ``StepContext()``), each converted to yuv420p by a fresh swscale
  context (``frame.reformat``), libx264 with PyAV's default (slice) threads and the encoder's
  default options (``video_options()``: ``veryfast`` crf 18, kept off AVX-512 kernels);
- ``new``: what ``opendance.runner.execute.run_job`` does now: ``StepContext(yuv420=True)``, so
  the preview draws its frames straight in YUV 4:2:0 planes, then ``encode_mp4``.

Rounds interleave the paths (today, new, then new, today, ...), so both see the same machine;
a shared machine only ever makes a run slower, so the table gives the best round of each and the
median of the per-round ratios. After the timing, one more video of each path is decoded and
compared with today's source frames (converted to yuv420p as today's encoder did): PSNR over all
Y, U and V samples, and the file size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from opendance.domain import OUTPUT_SIZES, Mode
from opendance.engines.base import Inputs, Job, Output, StepContext
from opendance.engines.preview import PreviewEngine
from opendance.media.encode import encode_mp4, video_options
from opendance.media.yuv import RgbToYuv420
from opendance.testing.media import gradient_image

DURATION, FPS = 5, 24
PROMPT = "A red fox trots through fresh snow at dawn, steam rising from its breath, cinematic"
CASES = [(res, mode) for res in ("480p", "720p") for mode in (Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO)]


def _job(mode: Mode, resolution: str) -> tuple[Job, Inputs]:
    width, height = OUTPUT_SIZES[resolution]["16:9"]
    job = Job(
        task_id="bench",
        model="bench",
        mode=mode,
        prompt=PROMPT,
        width=width,
        height=height,
        fps=FPS,
        duration=DURATION,
        seed=1,
        engine={"engine": "preview"},
    )
    inputs = Inputs(image=gradient_image(1024, 768, seed=1)) if mode is Mode.IMAGE_TO_VIDEO else Inputs()
    return job, inputs


def encode_today(output: Output, path: Path, width: int, height: int) -> None:
    """The video half of ``encode_mp4`` as it was before issue 14 (the preview has no audio)."""
    import av

    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        video = out.add_stream("libx264", rate=FPS, options=video_options())
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = Fraction(1, FPS)
        for index, rgb in enumerate(output.frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)


def run_today(job: Job, inputs: Inputs, path: Path) -> None:
    encode_today(PreviewEngine(job.engine).generate(job, inputs, StepContext()), path, job.width, job.height)


def run_new(job: Job, inputs: Inputs, path: Path) -> None:
    output = PreviewEngine(job.engine).generate(job, inputs, StepContext(yuv420=True))
    encode_mp4(output, path, width=job.width, height=job.height, num_frames=job.num_frames)


PATHS: dict[str, Callable[[Job, Inputs, Path], None]] = {"today": run_today, "new": run_new}


def _timed(run: Callable[[Job, Inputs, Path], None], job: Job, inputs: Inputs, path: Path) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run(job, inputs, path)
    return time.perf_counter() - wall, time.process_time() - cpu


def _yuv_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="yuv420p") for f in container.decode(video=0)])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def quality(job: Job, inputs: Inputs, folder: Path, paths: list[str]) -> dict[str, tuple[int, float]]:
    """(bytes, PSNR dB against today's source frames as today's encoder saw them) per path."""
    convert = RgbToYuv420()
    reference = np.stack([convert(f).data for f in PreviewEngine(job.engine).generate(job, inputs, StepContext()).frames])
    result = {}
    for name in paths:
        path = folder / f"quality-{name}.mp4"
        PATHS[name](job, inputs, path)
        result[name] = (path.stat().st_size, _psnr(_yuv_frames(path), reference))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each path per case (interleaved)")
    parser.add_argument("--paths", default="today,new", help="comma-separated: today (before issue 14), new")
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in PATHS for p in paths):
        parser.error(f"--paths takes a comma-separated subset of {', '.join(PATHS)}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_before = os.getloadavg()[0]
    walls: dict[tuple[int, str], list[float]] = {}
    cpus_used: dict[tuple[int, str], list[float]] = {}
    qualities = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs = [_job(mode, res) for res, mode in CASES]
        for job, inputs in jobs:  # warm-up: fonts, codecs, page cache
            for name in paths:
                PATHS[name](job, inputs, folder / "warmup.mp4")
        for r in range(args.rounds):
            for c, (job, inputs) in enumerate(jobs):
                for name in paths if r % 2 == 0 else paths[::-1]:
                    wall, cpu = _timed(PATHS[name], job, inputs, folder / f"{name}.mp4")
                    walls.setdefault((c, name), []).append(wall)
                    cpus_used.setdefault((c, name), []).append(cpu)
        for c, (job, inputs) in enumerate(jobs):
            qualities[c] = quality(job, inputs, folder, paths)
    load_after = os.getloadavg()[0]

    n = DURATION * FPS
    print(
        f"Preview engine, {DURATION} s at {FPS} fps (16:9, seed 1), frames + encode to MP4, {args.rounds} interleaved "
        f"rounds; {cpus} CPU(s) usable, {platform.processor() or platform.machine()}, Python {sys.version.split()[0]}, "
        f"load average {load_before:.1f} -> {load_after:.1f}\n"
    )
    print("| case | path | best wall s | output s per wall s | ms per frame | CPU s (best) | MiB | PSNR dB vs today's frames |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c, (res, mode) in enumerate(CASES):
        for name in paths:
            wall, cpu = min(walls[c, name]), min(cpus_used[c, name])
            size, psnr = qualities[c][name]
            print(
                f"| {res} {mode.value} | {name} | {wall:.2f} | {DURATION / wall:.1f} | {wall / n * 1000:.1f} | {cpu:.2f} "
                f"| {size / 2**20:.3f} | {psnr:.2f} |"
            )
    if len(paths) == 2:
        print("\n| case | speed-up, best vs best | speed-up, median of rounds | CPU time ratio | size new / today |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for c, (res, mode) in enumerate(CASES):
            old, new = walls[c, "today"], walls[c, "new"]
            rounds = statistics.median(o / w for o, w in zip(old, new, strict=True))
            cpu = min(cpus_used[c, "today"]) / min(cpus_used[c, "new"])
            size = qualities[c]["new"][0] / qualities[c]["today"][0]
            print(f"| {res} {mode.value} | {min(old) / min(new):.2f}x | {rounds:.2f}x | {cpu:.2f}x | {size:.2f} |")
    print(f"\nReproduce: {' '.join(['.venv/bin/python', 'bench/bench_preview.py'] + sys.argv[1:])}")


if __name__ == "__main__":
    main()
