"""The ``relay`` engine: hand the job to an upstream video API and bring its video home.

Two upstream protocols (``protocol`` in the models file):

- ``legacy``: this API's own ``POST /v1/video/generations`` and task object (Seedance gateways,
  another opendance). Every mode; media go up as ``data:`` URIs (images as PNG, videos and
  audios as their stored bytes); ``seed`` and the boolean ``extra_body`` keys go up as given.
  Cancel is ``POST .../{id}/cancel``.
- ``openai``: OpenAI's ``POST /v1/videos`` (OpenAI, SGLang Diffusion, vLLM-Omni): text-to-video,
  and image-to-video with the image as ``input_reference`` (multipart). ``seconds`` is the
  task's duration and ``size`` its output size. OpenAI has no cancel; a cancelled task stops
  polling and asks for the upstream video to be deleted.
- ``ark``: BytePlus ModelArk / Volcengine Ark's ``POST {base_url}/contents/generations/tasks``
  (``base_url`` ends in ``/api/v3``), the Seedance models' own API. Every mode: a ``content``
  array (the prompt as text; images with the roles ``first_frame``, ``last_frame`` or
  ``reference_image``; reference videos and audios), and ``duration``, ``ratio``,
  ``resolution``, ``seed``, ``generate_audio``, ``watermark``, ``camera_fixed``. Ark reports no
  progress (the task's stays where it is until the video is home). Cancel is ``DELETE``.

The upstream task is created with ``Idempotency-Key: <our task id>``, and its id is kept as the
task's checkpoint, so a worker that dies while the upstream works does not pay for the video
twice: the run that takes over polls the same upstream task. Progress is the upstream's
``progress``. The finished video is downloaded (upstream links expire), resampled to the task's
fps, fitted to its exact size and length (a clip up to ``SHORTFALL`` seconds short holds its
last frame; shorter is an error), and its sound kept; then it is encoded and stored like any
engine's output. The API key is read from the environment variable ``api_key_env`` and sent
only to ``base_url``'s host, never to the host of a download link.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..domain import Mode, nearest_aspect_ratio
from ..errors import Cancelled, EngineError
from ..media.audio import decode_audio, fit_audio
from ..media.frames import read_video_frames
from .base import Audio, Engine, Inputs, Job, Output, StepContext
from .options import OPENAI_RELAY_MODES, RelayOptions

log = logging.getLogger("opendance.engines.relay")

SHORTFALL = 1.0  # seconds an upstream clip may be short (its last frame is held)
PASSED_OPTIONS = ("generate_audio", "watermark", "camera_fixed")  # extra_body keys sent upstream
ARK_TASKS = "/contents/generations/tasks"  # under base_url, which ends in /api/v3


class RelayEngine(Engine):
    name = "relay"

    def __init__(self, spec: dict[str, Any], device: str = "cpu") -> None:
        super().__init__(spec, device)
        self.opts = opts = RelayOptions(**{"engine": "relay", **spec})
        headers = {"User-Agent": "opendance-relay"}
        if opts.api_key_env:
            key = os.environ.get(opts.api_key_env)
            if not key:
                raise ValueError(f"api_key_env = {opts.api_key_env!r}: that environment variable is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(base_url=opts.base_url.rstrip("/"), headers=headers,
                                 timeout=httpx.Timeout(opts.request_timeout))

    def close(self) -> None:
        self.http.close()

    # -- the job -------------------------------------------------------------------------

    def generate(self, job: Job, inputs: Inputs, ctx: StepContext) -> Output:
        if self.opts.protocol == "openai" and job.mode.value not in OPENAI_RELAY_MODES:
            raise EngineError(f"the openai protocol cannot relay {job.mode.value}: it takes a prompt and one first frame")
        saved = ctx.load_checkpoint()
        upstream = saved[0].get("upstream_id") if saved is not None and isinstance(saved[0], dict) else None
        if upstream is None:
            upstream = self._create(job, inputs)
            ctx.save_checkpoint({"upstream_id": upstream}, 0)
            log.info("task %s: upstream task %s created", job.task_id, upstream)
        else:
            log.info("task %s: following upstream task %s again", job.task_id, upstream)
        video_url = self._wait(upstream, ctx)
        with tempfile.TemporaryDirectory(prefix="relay-") as tmp:
            path = Path(tmp) / "upstream.mp4"
            self._download(video_url, path, ctx)
            return self._fit(job, path)

    def _create(self, job: Job, inputs: Inputs) -> str:
        headers = {"Idempotency-Key": job.task_id}
        if self.opts.protocol == "legacy":
            r = self._request("POST", "/v1/video/generations", retries=2, json=self._legacy_body(job, inputs), headers=headers)
        elif self.opts.protocol == "ark":
            r = self._request("POST", ARK_TASKS, retries=2, json=self._ark_body(job, inputs), headers=headers)
        else:
            form = {"model": self.opts.upstream_model, "prompt": job.prompt, "seconds": str(job.duration),
                    "size": f"{job.width}x{job.height}"}
            if job.mode is Mode.IMAGE_TO_VIDEO:
                files = {"input_reference": ("image.png", _png(inputs.image), "image/png")}
                r = self._request("POST", "/v1/videos", retries=2, data=form, files=files, headers=headers)
            else:
                r = self._request("POST", "/v1/videos", retries=2, json=form, headers=headers)
        answer = _json(r, "create")
        upstream = answer.get("id") or answer.get("task_id")
        if not isinstance(upstream, str) or not upstream:
            raise EngineError(f"the upstream's create answer has no task id: {str(answer)[:200]}")
        return upstream

    def _legacy_body(self, job: Job, inputs: Inputs) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.opts.upstream_model, "prompt": job.prompt, "duration": job.duration,
                                "aspect_ratio": nearest_aspect_ratio(job.width, job.height)}
        if inputs.image is not None:
            body["image"] = _data_uri(_png(inputs.image), "image/png")
        if inputs.last_image is not None:
            body["last_image"] = _data_uri(_png(inputs.last_image), "image/png")
        if inputs.images:
            body["images"] = [_data_uri(_png(im), "image/png") for im in inputs.images]
        for field, paths in (("videos", inputs.videos), ("audios", inputs.audios)):
            if paths:
                body[field] = [_data_uri(data, _media_type(data, field)) for data in (Path(p).read_bytes() for p in paths)]
        extra: dict[str, Any] = {"seed": job.seed}
        extra.update({k: v for k, v in job.options.items() if k in PASSED_OPTIONS})
        if job.negative_prompt:
            extra["negative_prompt"] = job.negative_prompt
        body["extra_body"] = extra
        return body

    def _ark_body(self, job: Job, inputs: Inputs) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": job.prompt}]

        def item(kind: str, data: bytes, mime: str, role: str) -> dict[str, Any]:
            return {"type": kind, kind: {"url": _data_uri(data, mime)}, "role": role}

        if inputs.image is not None:
            content.append(item("image_url", _png(inputs.image), "image/png", "first_frame"))
        if inputs.last_image is not None:
            content.append(item("image_url", _png(inputs.last_image), "image/png", "last_frame"))
        content += [item("image_url", _png(im), "image/png", "reference_image") for im in inputs.images]
        for kind, role, paths in (("video_url", "reference_video", inputs.videos), ("audio_url", "reference_audio", inputs.audios)):
            for data in (Path(p).read_bytes() for p in paths):
                content.append(item(kind, data, _media_type(data, "videos" if kind == "video_url" else "audios"), role))
        body: dict[str, Any] = {
            "model": self.opts.upstream_model,
            "content": content,
            "duration": job.duration,
            "ratio": nearest_aspect_ratio(job.width, job.height),
            "resolution": "720p" if min(job.width, job.height) >= 720 else "480p",
            "seed": job.seed,
            "generate_audio": bool(job.options.get("generate_audio", False)),  # Ark's default is on; ours is off
        }
        body.update({k: bool(v) for k, v in job.options.items() if k in ("watermark", "camera_fixed")})
        return body

    def _wait(self, upstream: str, ctx: StepContext) -> str:
        """Poll until the upstream task is completed (its video URL) or failed (an error)."""
        path = {"legacy": f"/v1/video/generations/{upstream}", "openai": f"/v1/videos/{upstream}",
                "ark": f"{ARK_TASKS}/{upstream}"}[self.opts.protocol]
        deadline = time.monotonic() + self.opts.deadline
        while True:
            if _cancel_requested(ctx):
                self._cancel(upstream)
                raise Cancelled()
            task = _json(self._request("GET", path, retries=3), "status")
            status = str(task.get("status", "")).lower()
            progress = task.get("progress")
            if isinstance(progress, (int, float)) and not isinstance(progress, bool):
                ctx.progress(int(max(0, min(99, progress))), 100)
            if status in ("completed", "succeeded"):
                if self.opts.protocol == "openai":
                    return f"{self.opts.base_url.rstrip('/')}/v1/videos/{upstream}/content"
                url = task.get("video_url") or (task.get("result") or task.get("content") or {}).get("video_url")
                if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                    raise EngineError(f"upstream task {upstream} is completed but has no video_url")
                return url
            if status in ("failed", "cancelled", "expired"):
                error = task.get("error") or {}
                reason = error.get("message") if isinstance(error, dict) else str(error)
                raise EngineError(f"upstream task {upstream} {status}: {reason or 'no reason given'}")
            if time.monotonic() > deadline:
                self._cancel(upstream)
                raise EngineError(f"upstream task {upstream} did not finish in {self.opts.deadline:.0f} s")
            _sleep(self.opts.poll_interval, ctx)

    def _cancel(self, upstream: str) -> None:
        """Best effort: the task ends here whatever the upstream answers."""
        try:
            if self.opts.protocol == "legacy":
                self.http.post(f"/v1/video/generations/{upstream}/cancel")
            elif self.opts.protocol == "ark":
                self.http.delete(f"{ARK_TASKS}/{upstream}")
            else:
                self.http.delete(f"/v1/videos/{upstream}")
        except httpx.HTTPError as exc:
            log.warning("cancelling upstream task %s failed: %s", upstream, exc)

    def _download(self, url: str, path: Path, ctx: StepContext) -> None:
        same_host = urlsplit(url).netloc == urlsplit(self.opts.base_url).netloc
        # The key goes to the upstream itself only, not to a storage host its link points at.
        client = self.http if same_host else httpx.Client(timeout=httpx.Timeout(self.opts.request_timeout))
        try:
            with client.stream("GET", url, follow_redirects=True) as r:
                if r.status_code != 200:
                    raise EngineError(f"downloading the upstream video failed: HTTP {r.status_code}")
                size = 0
                with open(path, "wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        size += len(chunk)
                        if size > self.opts.max_video_bytes:
                            raise EngineError(f"the upstream video is larger than {self.opts.max_video_bytes} bytes")
                        f.write(chunk)
                        if _cancel_requested(ctx):
                            raise Cancelled()
        except httpx.HTTPError as exc:
            raise EngineError(f"downloading the upstream video failed: {exc}") from None
        finally:
            if client is not self.http:
                client.close()

    def _fit(self, job: Job, path: Path) -> Output:
        """The upstream clip at the task's fps, size and exact length, with its sound."""
        import av

        n = job.num_frames
        try:
            frames = list(read_video_frames(path, job.fps, job.width, job.height, max_frames=n))
            with av.open(str(path)) as container:
                has_sound = bool(container.streams.audio)
        except (av.error.FFmpegError, IndexError) as exc:
            raise EngineError(f"the upstream video cannot be decoded: {exc}") from None
        if not frames:
            raise EngineError("the upstream video has no frames")
        short = (n - len(frames)) / job.fps
        if short > SHORTFALL:
            raise EngineError(f"the upstream video is {len(frames) / job.fps:.1f} s long; {job.duration} s were asked for")
        frames += [frames[-1]] * (n - len(frames))
        audio = None
        if has_sound:
            samples = fit_audio(decode_audio(path, 48000, 2), job.duration * 48000)
            audio = Audio(samples=samples, sample_rate=48000)
        return Output(frames=frames, fps=job.fps, audio=audio)

    # -- HTTP ----------------------------------------------------------------------------

    def _request(self, method: str, url: str, retries: int = 0, **kw: Any) -> httpx.Response:
        """One upstream call; network errors and 5xx/429 answers are tried ``retries`` more times."""
        for attempt in range(retries + 1):
            try:
                r = self.http.request(method, url, **kw)
            except httpx.HTTPError as exc:
                if attempt == retries:
                    raise EngineError(f"the upstream at {self.opts.base_url} cannot be reached: {exc}") from None
            else:
                if r.status_code < 500 and r.status_code != 429 or attempt == retries:
                    return r
            time.sleep(min(8.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")


def _json(r: httpx.Response, what: str) -> dict[str, Any]:
    """The upstream's answer as a dict, or an EngineError with the upstream's own message."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code >= 400 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else r.text[:300]
        raise EngineError(f"the upstream refused the {what} request (HTTP {r.status_code}): {message}")
    return body


def _cancel_requested(ctx: StepContext) -> bool:
    try:
        ctx.check_cancelled()
    except Cancelled:
        return True
    return False


def _sleep(seconds: float, ctx: StepContext) -> None:
    """Sleep, waking every 0.2 s to see whether the task was cancelled."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if _cancel_requested(ctx):
            return
        time.sleep(min(0.2, left))


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _media_type(data: bytes, field: str) -> str:
    """The MIME type of a stored reference video or audio, from its first bytes."""
    if data[4:8] == b"ftyp":
        if data[8:10] == b"qt":
            return "video/quicktime"
        return "video/mp4" if field == "videos" else "audio/mp4"
    if data[:4] == b"RIFF":
        return "audio/wav"
    if data[:3] == b"ID3" or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    if data[:2] in (b"\xff\xf1", b"\xff\xf9"):
        return "audio/aac"
    return "application/octet-stream"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
