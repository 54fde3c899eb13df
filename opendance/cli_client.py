"""The client commands of ``opendance``: generate, status, list, cancel, models.

A thin shell over ``opendance.Client``. Exit codes: 0 done; 1 the task failed; 2 bad usage or
a 4xx answer (the server's message is printed); 3 the server or the network failed, or the
wait timed out (retrying later may help); 130 interrupted (the task keeps running).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from .client import Client, OpenDanceAPIError, ServerError, Task, TaskFailedError, TimeoutError

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
BAR_WIDTH = 30
LINE_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


class ProgressBar:
    """``task_…  in_progress  [#########.........]  45%  0:12`` on stderr.

    On a terminal the line is redrawn in place (``\\r``); otherwise (CI logs, pipes) a new line
    is written when the status changes, every 10 %, and at least every ``LINE_EVERY`` seconds.
    """

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.start = time.monotonic()
        self._width = 0
        self._last: tuple[str, int] | None = None
        self._last_line_at = 0.0

    def render(self, task: Task) -> str:
        filled = round(BAR_WIDTH * task.progress / 100)
        elapsed = int(time.monotonic() - self.start)
        return (
            f"{task.id}  {task.status:<11}  [{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"
            f"  {task.progress:3d}%  {elapsed // 60}:{elapsed % 60:02d}"
        )

    def update(self, task: Task) -> None:
        line = self.render(task)
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            now = time.monotonic()
            key = (task.status, task.progress // 10)
            if key == self._last and now - self._last_line_at < LINE_EVERY:
                return
            self._last, self._last_line_at = key, now
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()


def _err(message: str) -> None:
    print(f"opendance: {message}", file=sys.stderr)


def _client(args: argparse.Namespace) -> Client:
    # None falls back to OPENDANCE_BASE_URL / OPENDANCE_API_KEY, read by the client itself.
    return Client(args.base_url, args.api_key, timeout=args.http_timeout)


def _run(command: Callable[[argparse.Namespace, Client], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command with a client, turning errors into a message and an exit code."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            with _client(args) as client:
                return command(args, client)
        except TaskFailedError as exc:
            _err(str(exc))
            return EXIT_FAILED
        except ServerError as exc:
            _err(f"server error {exc}")
            return EXIT_SERVER
        except OpenDanceAPIError as exc:
            _err(str(exc))
            return EXIT_USAGE if 400 <= exc.status < 500 else EXIT_SERVER
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            _err(str(exc))
            return EXIT_USAGE
        except TimeoutError as exc:
            _err(f"{exc}; it keeps running (opendance status {exc.task.id})")
            return EXIT_SERVER
        except httpx.TransportError as exc:
            _err(f"cannot reach the server: {exc}")
            return EXIT_SERVER

    return wrapped


def cmd_generate(args: argparse.Namespace, client: Client) -> int:
    model = args.model
    if model is None:
        models = client.models()
        if not models:
            _err("the server lists no models; pass --model")
            return EXIT_USAGE
        model = models[0]["id"]
        print(f"model: {model}", file=sys.stderr)
    fields: dict[str, Any] = {
        "image": args.image,
        "last_image": args.last_image,
        "images": args.ref_image or None,
        "videos": args.ref_video or None,
        "audios": args.ref_audio or None,
        "duration": args.duration,
        "aspect_ratio": args.aspect_ratio,
        "seed": args.seed,
        "negative_prompt": args.negative_prompt,
    }
    task = client.create(model, args.prompt, **{k: v for k, v in fields.items() if v is not None})
    bar = ProgressBar(sys.stderr)
    bar.update(task)
    try:
        task = client.wait(task, timeout=args.timeout, max_interval=1.0, on_progress=bar.update)
    except KeyboardInterrupt:
        _err(f"interrupted; the task keeps running (opendance status {task.id}, opendance cancel {task.id})")
        return EXIT_INTERRUPTED
    finally:
        bar.close()
    path = client.download(task, args.out)
    print(path)
    return EXIT_DONE


def _summary(task: Task) -> str:
    parts = [task.id, task.status, f"{task.progress}%", task.model or "?"]
    if task.duration and task.width:
        parts.append(f"{task.duration}s {task.width}x{task.height}")
    if task.error:
        parts.append(f"{task.error.code}: {task.error.message}")
    elif task.video_url:
        parts.append(task.video_url)
    return "  ".join(parts)


def cmd_status(args: argparse.Namespace, client: Client) -> int:
    task = client.get(args.task_id)
    print(json.dumps(task.raw, indent=2) if args.json else _summary(task))
    return EXIT_FAILED if task.is_failed else EXIT_DONE


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    for i, task in enumerate(client.list(status=args.status, model=args.model, page_size=min(args.limit, 100))):
        if i >= args.limit:
            break
        print(_summary(task))
    return EXIT_DONE


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    print(_summary(client.cancel(args.task_id)))
    return EXIT_DONE


def cmd_models(args: argparse.Namespace, client: Client) -> int:
    for m in client.models():
        extra = "  ".join(str(m[k]) if not isinstance(m[k], list) else ",".join(m[k]) for k in ("resolution", "modes") if k in m)
        print(f"{m.get('id')}  {extra}".rstrip())
    return EXIT_DONE


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the client commands to the ``opendance`` parser."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--base-url", help="server URL (default $OPENDANCE_BASE_URL or http://127.0.0.1:8000)")
    conn.add_argument("--api-key", help="API key (default $OPENDANCE_API_KEY)")
    conn.add_argument("--http-timeout", type=_positive, default=60.0, help="seconds per HTTP request (default 60)")

    gen = subparsers.add_parser("generate", parents=[conn], help="make a video: submit, show progress, download")
    gen.add_argument("prompt", help="what the video shows")
    gen.add_argument("--model", help="model name (default: the server's first model)")
    gen.add_argument("--image", metavar="PATH|URL", help="first frame (image-to-video)")
    gen.add_argument("--last-image", metavar="PATH|URL", help="last frame (with --image)")
    gen.add_argument("--ref-image", metavar="PATH|URL", action="append", help="reference image (repeatable, up to 9)")
    gen.add_argument("--ref-video", metavar="PATH|URL", action="append", help="reference video (repeatable, up to 3)")
    gen.add_argument("--ref-audio", metavar="PATH|URL", action="append", help="reference audio (repeatable, up to 3)")
    gen.add_argument("--duration", type=int, help="seconds of video, 5-15 (default 5)")
    gen.add_argument("--aspect-ratio", choices=["16:9", "1:1", "9:16"], help="default 16:9, or the first image's")
    gen.add_argument("--seed", type=int, help="same seed + same request = same video")
    gen.add_argument("--negative-prompt", help="what the video should not show")
    gen.add_argument("--out", "-o", help="where to write the MP4 (default <task id>.mp4)")
    gen.add_argument("--timeout", type=_positive, default=3600.0, help="seconds to wait for the video (default 3600)")
    gen.set_defaults(func=_run(cmd_generate))

    status = subparsers.add_parser("status", parents=[conn], help="show a task (exit 1 if it failed)")
    status.add_argument("task_id")
    status.add_argument("--json", action="store_true", help="print the whole task object")
    status.set_defaults(func=_run(cmd_status))

    lst = subparsers.add_parser("list", parents=[conn], help="list your tasks, newest first")
    lst.add_argument("--limit", type=_count, default=20, help="how many (default 20)")
    lst.add_argument("--status", choices=["queued", "in_progress", "completed", "failed"])
    lst.add_argument("--model")
    lst.set_defaults(func=_run(cmd_list))

    cancel = subparsers.add_parser("cancel", parents=[conn], help="cancel a queued or running task")
    cancel.add_argument("task_id")
    cancel.set_defaults(func=_run(cmd_cancel))

    models = subparsers.add_parser("models", parents=[conn], help="list the server's models")
    models.set_defaults(func=_run(cmd_models))
