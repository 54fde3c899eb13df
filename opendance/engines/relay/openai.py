"""``openai``: OpenAI's ``POST /v1/videos`` (OpenAI, SGLang Diffusion, vLLM-Omni): text-to-video,
and image-to-video with the image as ``input_reference`` (multipart). ``seconds`` is the task's
duration and ``size`` its output size. The video is ``GET /v1/videos/{id}/content``. OpenAI has
no cancel: a cancelled task stops polling and asks for the upstream video to be deleted."""

from __future__ import annotations

from typing import Any

from ...domain import Mode
from ..base import Inputs, Job
from ..options import OPENAI_RELAY_MODES
from .protocol import Request, UpstreamProtocol, png

ROUTE = "/v1/videos"


class OpenAIProtocol(UpstreamProtocol):
    name = "openai"
    modes = OPENAI_RELAY_MODES

    def create(self, job: Job, inputs: Inputs) -> Request:
        form = {
            "model": self.upstream_model,
            "prompt": job.prompt,
            "seconds": str(job.duration),
            "size": f"{job.width}x{job.height}",
        }
        if job.mode is Mode.IMAGE_TO_VIDEO:
            files = {"input_reference": ("image.png", png(inputs.image), "image/png")}
            return Request("POST", ROUTE, {"data": form, "files": files})
        return Request("POST", ROUTE, {"json": form})

    def status(self, upstream_id: str) -> Request:
        return Request("GET", f"{ROUTE}/{upstream_id}")

    def video_link(self, upstream_id: str, answer: dict[str, Any], base_url: str) -> str | None:
        return f"{base_url.rstrip('/')}{ROUTE}/{upstream_id}/content"

    def cancel(self, upstream_id: str) -> Request:
        return Request("DELETE", f"{ROUTE}/{upstream_id}")
