#!/usr/bin/env bash
# The Python 3.12 wheels bench/bench_gpu.py needs on the GPU machine beyond what it has (torch,
# transformers, accelerate, numpy ...): diffusers, torchao, and what importing opendance.engines.levers
# pulls in (pydantic, httpx). Into .whl/ (git-ignored), carried with the checkout; see docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 torchao==0.18.0 huggingface_hub==2.4.0 importlib_metadata==10.2.0 zipp==4.1.2 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 \
    httpx==0.29.0 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 idna==3.20 certifi==2026.10.19.post1 sniffio==1.3.1
du -sh .whl
