"""How fast the preview engine makes finished videos: generate + encode, in output seconds per
wall-clock second (above 1 means faster than real time).

    .venv/bin/python bench/bench_preview.py               # all CPUs this process may use
    taskset -c 0 .venv/bin/python bench/bench_preview.py  # one core

Each case is a 5 s, 24 fps video (text-to-video and image-to-video, 480p and 720p at 16:9),
rendered to an MP4 in a temporary folder; the best of ``--repeat`` runs is reported, because
other processes on a shared machine only ever make a run slower. The last column times the
engine's frames alone (no encoder), to show where the time goes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from opendance.domain import OUTPUT_SIZES, Mode
from opendance.engines.base import Inputs, Job, StepContext
from opendance.engines.preview import PreviewEngine
from opendance.media.encode import encode_mp4
from opendance.testing.media import gradient_image

DURATION, FPS = 5, 24
PROMPT = "A red fox trots through fresh snow at dawn, steam rising from its breath, cinematic"


def run_once(mode: Mode, width: int, height: int, folder: Path | None) -> float:
    """Wall seconds to generate and encode one video (the engine's frames are lazy, so the
    two interleave exactly as they do in a worker); with no ``folder``, to generate only."""
    job = Job(task_id="bench", model="bench", mode=mode, prompt=PROMPT, width=width, height=height,
              fps=FPS, duration=DURATION, seed=1, engine={"engine": "preview"})
    inputs = Inputs(image=gradient_image(1024, 768, seed=1)) if mode is Mode.IMAGE_TO_VIDEO else Inputs()
    start = time.perf_counter()
    out = PreviewEngine(job.engine).generate(job, inputs, StepContext())
    if folder is None:
        for _ in out.frames:
            pass
    else:
        encode_mp4(out, folder / "bench.mp4", width=width, height=height, num_frames=job.num_frames)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is reported")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for resolution in ("480p", "720p"):
            width, height = OUTPUT_SIZES[resolution]["16:9"]
            for mode in (Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO):
                best = min(run_once(mode, width, height, Path(tmp)) for _ in range(args.repeat))
                frames_only = min(run_once(mode, width, height, None) for _ in range(args.repeat))
                rows.append((resolution, f"{width}x{height}", mode.value, best, frames_only))
    print(f"Preview engine, {DURATION} s at {FPS} fps, generate + encode (libx264 veryfast crf 18), "
          f"best of {args.repeat}; {cpus} CPU(s) usable, {platform.processor() or platform.machine()}, "
          f"Python {sys.version.split()[0]}\n")
    print("| resolution | size | mode | wall s | output s per wall s | ms per frame | of which frames only |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    n = DURATION * FPS
    for resolution, size, mode, wall, gen in rows:
        per_frame, frames_only = wall / n * 1000, gen / n * 1000
        speed = DURATION / wall
        print(f"| {resolution} | {size} | {mode} | {wall:.2f} | {speed:.1f} | {per_frame:.1f} | {frames_only:.1f} |")
    print(f"\nReproduce: {' '.join(['.venv/bin/python', 'bench/bench_preview.py'] + sys.argv[1:])}")


if __name__ == "__main__":
    main()
