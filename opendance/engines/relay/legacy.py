"""``legacy``: this API's own ``POST /v1/video/generations`` and task object (Seedance gateways,
another opendance). Every mode; media go up as ``data:`` URIs (images as PNG, videos and audios
as their stored bytes); ``seed``, ``negative_prompt`` and the boolean ``extra_body`` keys go up
as given. Cancel is ``POST .../{id}/cancel``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...domain import nearest_aspect_ratio
from ..base import Inputs, Job
from .protocol import PASSED_OPTIONS, Request, UpstreamProtocol, data_uri, link_in, media_type, png

ROUTE = "/v1/video/generations"


class LegacyProtocol(UpstreamProtocol):
    name = "legacy"

    def create(self, job: Job, inputs: Inputs) -> Request:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "prompt": job.prompt,
            "duration": job.duration,
            "aspect_ratio": nearest_aspect_ratio(job.width, job.height),
        }
        if inputs.image is not None:
            body["image"] = data_uri(png(inputs.image), "image/png")
        if inputs.last_image is not None:
            body["last_image"] = data_uri(png(inputs.last_image), "image/png")
        if inputs.images:
            body["images"] = [data_uri(png(im), "image/png") for im in inputs.images]
        for field, paths in (("videos", inputs.videos), ("audios", inputs.audios)):
            if paths:
                body[field] = [data_uri(data, media_type(data, field)) for data in (Path(p).read_bytes() for p in paths)]
        extra: dict[str, Any] = {"seed": job.seed}
        extra.update({k: v for k, v in job.options.items() if k in PASSED_OPTIONS})
        if job.negative_prompt:
            extra["negative_prompt"] = job.negative_prompt
        body["extra_body"] = extra
        return Request("POST", ROUTE, {"json": body})

    def status(self, upstream_id: str) -> Request:
        return Request("GET", f"{ROUTE}/{upstream_id}")

    def video_link(self, upstream_id: str, answer: dict[str, Any], base_url: str) -> str | None:
        return link_in(answer)

    def cancel(self, upstream_id: str) -> Request:
        return Request("POST", f"{ROUTE}/{upstream_id}/cancel")
