"""``opendance models check``: the memory plan of a models file (``engines.memory_plan``), and the
same check ``serve`` and ``worker`` run before they start."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def memory_problems(settings, only=None) -> list[str]:
    """The modes of the configured models that cannot fit the devices (empty: the plan fits)."""
    from .engines.memory_plan import build_plan, parse_size

    stated = parse_size(settings.device_memory) if settings.device_memory else None
    return build_plan(settings.models(), list(settings.devices), stated, only).problems()


def plan_fits(settings, command: str, only=None) -> bool:
    """Print why the plan cannot fit, one line per mode; a folder the plan cannot read is left to
    the engines (preflight has said what is missing)."""
    try:
        found = memory_problems(settings, only)
    except (OSError, ValueError) as exc:
        print(f"opendance {command}: the memory plan cannot be read: {exc}", file=sys.stderr)
        return False
    for line in found:
        print(f"opendance {command}: {line}", file=sys.stderr)
    return not found


def cmd_check(args: argparse.Namespace) -> int:
    from .cli import _models_file_ok, _settings
    from .engines.memory_plan import build_plan, parse_size

    settings = _settings(args)
    if not _models_file_ok(settings, "models check"):
        return 2
    try:
        stated = parse_size(settings.device_memory) if settings.device_memory else None
        plan = build_plan(settings.models(), list(settings.devices), stated, args.only or None)
    except (OSError, ValueError) as exc:
        print(f"opendance models check: {exc}", file=sys.stderr)
        return 2
    for line in plan.lines():
        print(line)
    problems = plan.problems()
    for line in problems:
        print(f"does not fit: {line}")
    return 1 if problems else 0


def register(models: argparse.ArgumentParser) -> None:
    """``models check`` under the ``models`` command (which alone lists a server's models)."""
    sub = models.add_subparsers(dest="models_command")
    check = sub.add_parser("check", help="memory plan of a models file, from the checkpoints' safetensors headers")
    check.add_argument("--config", type=Path, help="models TOML file")
    check.add_argument("--devices", help="comma-separated devices (default cpu)")
    check.add_argument(
        "--device-memory", dest="device_memory", help="memory of each device, e.g. 80GiB (default: nvidia-smi's / host RAM)"
    )
    check.add_argument("--models", dest="only", nargs="+", metavar="NAME", help="only these models")
    check.set_defaults(func=cmd_check)
