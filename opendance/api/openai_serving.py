"""OpenAI's Videos API on top of ``TaskService``: no HTTP in here, and no task logic either.

A ``POST /v1/videos`` becomes the legacy create body (``seconds`` -> ``duration``, ``size`` ->
model + ``aspect_ratio``, ``input_reference`` -> ``image``) and goes through exactly the same
validation, media intake and runner as ``POST /v1/video/generations``; its errors are renamed
to the OpenAI field names. The one thing of its own is the thumbnail variant.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import mimetypes
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest, NotFound
from ..keys import Caller
from ..store import Task
from .openai_protocol import dual_object, parse_seconds, resolve_size, video_object
from .serving import TaskService
from .validate import MAX_SEED

log = logging.getLogger("opendance.service")

THUMBNAIL_QUALITY = 80

# Legacy field -> the OpenAI field the caller actually sent.
_RENAMES = {
    "image": "input_reference",
    "duration": "seconds",
    "aspect_ratio": "size",
    "extra_body.seed": "seed",
    "extra_body.negative_prompt": "negative_prompt",
}
_INT = re.compile(r"^[+-]?[0-9]+$", re.ASCII)  # int() also reads other scripts' digits


@dataclass
class Upload:
    """A file part of a multipart body, already read."""

    filename: str | None
    content_type: str | None
    data: bytes


def thumbnail_key(task_id: str) -> str:
    # Under the task's prefix, so deleting the task deletes its thumbnail too.
    return f"tasks/{task_id}/thumbnail.webp"


class VideoService:
    def __init__(self, tasks: TaskService) -> None:
        self.tasks = tasks

    # -- create --------------------------------------------------------------------------

    async def create(
        self,
        fields: Any,
        upload: Upload | None,
        *,
        caller: Caller,
        base_url: str,
        idempotency_key: str | None = None,
    ) -> Task:
        """``fields``: the JSON object, or the form's text fields (every value a string)."""
        if not isinstance(fields, dict):
            raise InvalidRequest("the request body must be a JSON object or a form", code="invalid_body")
        model, aspect = resolve_size(fields.get("size"), fields.get("model"), self.tasks.models_for(caller))
        body: dict[str, Any] = {"model": model, "prompt": fields.get("prompt")}
        duration = parse_seconds(fields.get("seconds"))
        if duration is not None:
            body["duration"] = duration
        if aspect is not None:
            body["aspect_ratio"] = aspect
        image = _reference(fields, upload)
        if image is not None:
            body["image"] = image
        extra: dict[str, Any] = {}
        seed = fields.get("seed")
        if seed is not None:
            extra["seed"] = _form_seed(seed)
        if fields.get("negative_prompt") is not None:
            extra["negative_prompt"] = fields["negative_prompt"]
        if extra:
            body["extra_body"] = extra
        try:
            return await self.tasks.create(body, caller=caller, base_url=base_url, idempotency_key=idempotency_key)
        except InvalidRequest as exc:
            raise _renamed(exc) from None

    # -- read / delete -------------------------------------------------------------------

    async def get(self, video_id: str, owner: str) -> Task:
        return await self.tasks.get(video_id, owner)

    async def page(self, owner: str, *, after: str | None, limit: Any, order: str) -> dict[str, Any]:
        tasks, has_more = await self.tasks.list(owner, limit=limit, after=after, status=None, model=None, order=order)
        data = self.tasks.render_each(tasks, video_object)
        # The cursors are the page's tasks, rendered or not (routes.page says why).
        return {
            "object": "list",
            "data": data,
            "first_id": tasks[0].id if tasks else None,
            "last_id": tasks[-1].id if tasks else None,
            "has_more": has_more,
        }

    async def delete(self, video_id: str, owner: str) -> dict[str, Any]:
        await self.tasks.delete(video_id, owner)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    def render(self, task: Task) -> dict[str, Any]:
        return video_object(task)

    def render_dual(self, task: Task, openai: bool, base_url: str | None = None) -> dict[str, Any]:
        return dual_object(task, self.tasks.render(task, base_url), openai)

    # -- thumbnail -----------------------------------------------------------------------

    async def thumbnail(self, video_id: str, owner: str) -> tuple[Task, bytes]:
        """A WebP of the video's first frame, at the video's size, made on first request and
        kept with the task (deleted with it). Small enough to answer from memory, whatever
        the storage."""
        task, _ = await self.tasks.content(video_id, owner, "video", None)
        key = thumbnail_key(task.id)
        storage = self.tasks.storage
        gone = NotFound(f"no task {video_id!r}", param="video_id", code="task_not_found")
        try:
            if await asyncio.to_thread(storage.exists, key):
                return task, await asyncio.to_thread(storage.get_bytes, key)
            data = await asyncio.to_thread(self._make_thumbnail, task)
        except FileNotFoundError:  # the task was deleted since it was read (video and all)
            raise gone from None
        try:
            await asyncio.to_thread(storage.put_bytes, key, data, "image/webp")
        except OSError as exc:  # not kept (a full disk, or a delete removing the folder): still served
            log.warning("the thumbnail of %s could not be stored: %s", task.id, exc)
        # A delete that ran meanwhile removed the row before the files: if the row is gone now,
        # this thumbnail may have been written after its files were removed, so it goes too.
        if await asyncio.to_thread(self.tasks.store.get, task.id) is None:
            await asyncio.to_thread(storage.delete_prefix, f"tasks/{task.id}/")
            raise gone
        return task, data

    def _make_thumbnail(self, task: Task) -> bytes:
        import av  # media decoding only; never a model in the API process

        assert task.video_key is not None  # only a completed task has a thumbnail
        with self.tasks.storage.local_path(task.video_key) as path, av.open(str(path)) as container:
            image = next(container.decode(video=0)).to_image()
        buf = io.BytesIO()
        image.save(buf, format="WEBP", quality=THUMBNAIL_QUALITY)
        return buf.getvalue()


def _reference(fields: dict[str, Any], upload: Upload | None) -> str | None:
    """``input_reference`` as the legacy ``image``: a file part becomes a data: URI; a string
    or ``{"image_url": ...}`` (``input_reference[image_url]`` in a form) passes through."""
    if upload is not None:
        ctype = upload.content_type or mimetypes.guess_type(upload.filename or "")[0] or "application/octet-stream"
        # The image decoder reads the format from the bytes; the type is only a label.
        return f"data:{ctype};base64,{base64.b64encode(upload.data).decode()}"
    ref = fields.get("input_reference")
    if ref is None and ("input_reference[image_url]" in fields or "input_reference[file_id]" in fields):
        ref = {k[len("input_reference[") : -1]: v for k, v in fields.items() if k.startswith("input_reference[")}
    if isinstance(ref, dict):
        if ref.get("image_url") is None and ref.get("file_id") is not None:
            raise InvalidRequest(
                "input_reference.file_id: files uploaded elsewhere are not known here; send the image as a file part or an image_url",
                param="input_reference.file_id",
                code="unsupported_value",
            )
        ref = ref.get("image_url")
        if ref is None:
            raise InvalidRequest("input_reference must hold an image_url", param="input_reference", code="missing_field")
    if ref is not None and not isinstance(ref, str):
        raise InvalidRequest(
            'input_reference must be a file, a URL or {"image_url": ...}', param="input_reference", code="invalid_type"
        )
    return ref


def _form_seed(value: Any) -> Any:
    """A form's ``seed`` text as an int (JSON values pass through, for the validator to judge).
    Thousands of digits are refused before ``int()``, which gives up at 4300 with a ValueError."""
    if not isinstance(value, str) or not _INT.match(value.strip()):
        return value
    text = value.strip()
    sign, digits = ("-" if text[0] == "-" else ""), text.lstrip("+-").lstrip("0") or "0"
    if len(digits) > len(str(MAX_SEED)):
        raise InvalidRequest(f"seed must be between -1 and {MAX_SEED}; got a number of {len(digits)} digits", param="seed")
    return int(sign + digits)


def _renamed(exc: InvalidRequest) -> InvalidRequest:
    """The same error, naming the OpenAI field the caller sent instead of its legacy twin."""
    new = _RENAMES.get(exc.param or "")
    if new is None or exc.param is None:
        return exc
    message = re.sub(rf"^{re.escape(exc.param)}\b", new, exc.message)
    return type(exc)(message, param=new, code=exc.code, retry_after=exc.retry_after)
