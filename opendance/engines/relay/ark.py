"""``ark``: BytePlus ModelArk / Volcengine Ark's ``POST {base_url}/contents/generations/tasks``
(``base_url`` ends in ``/api/v3``), the Seedance models' own API. Every mode: a ``content``
array (the prompt as text; images with the roles ``first_frame``, ``last_frame`` or
``reference_image``; reference videos and audios), and ``duration``, ``ratio``, ``resolution``,
``seed``, ``generate_audio``, ``watermark``, ``camera_fixed``. Ark reports no progress (the
task's stays where it is until the video is home); a finished task is ``succeeded`` with
``content.video_url``. Cancel is ``DELETE``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...domain import nearest_aspect_ratio
from ..base import Inputs, Job
from .protocol import Request, UpstreamProtocol, data_uri, link_in, media_type, png

TASKS = "/contents/generations/tasks"  # under base_url, which ends in /api/v3


class ArkProtocol(UpstreamProtocol):
    name = "ark"

    def create(self, job: Job, inputs: Inputs) -> Request:
        content: list[dict[str, Any]] = [{"type": "text", "text": job.prompt}]

        def item(kind: str, data: bytes, mime: str, role: str) -> dict[str, Any]:
            return {"type": kind, kind: {"url": data_uri(data, mime)}, "role": role}

        if inputs.image is not None:
            content.append(item("image_url", png(inputs.image), "image/png", "first_frame"))
        if inputs.last_image is not None:
            content.append(item("image_url", png(inputs.last_image), "image/png", "last_frame"))
        content += [item("image_url", png(im), "image/png", "reference_image") for im in inputs.images]
        for kind, role, paths in (
            ("video_url", "reference_video", inputs.videos),
            ("audio_url", "reference_audio", inputs.audios),
        ):
            for data in (Path(p).read_bytes() for p in paths):
                content.append(item(kind, data, media_type(data, "videos" if kind == "video_url" else "audios"), role))
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "content": content,
            "duration": job.duration,
            "ratio": nearest_aspect_ratio(job.width, job.height),
            "resolution": "720p" if min(job.width, job.height) >= 720 else "480p",
            "seed": job.seed,
            "generate_audio": bool(job.options.get("generate_audio", False)),  # Ark's default is on; ours is off
        }
        body.update({k: bool(v) for k, v in job.options.items() if k in ("watermark", "camera_fixed")})
        return Request("POST", TASKS, {"json": body})

    def status(self, upstream_id: str) -> Request:
        return Request("GET", f"{TASKS}/{upstream_id}")

    def video_link(self, upstream_id: str, answer: dict[str, Any], base_url: str) -> str | None:
        return link_in(answer)

    def cancel(self, upstream_id: str) -> Request:
        return Request("DELETE", f"{TASKS}/{upstream_id}")
