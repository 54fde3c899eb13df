"""Create-time media intake: fetch or decode every input, check it, and say what to store.

Every item is fetched (or its data: URI decoded) concurrently, then inspected or probed in a
worker thread (decoding is CPU work that must not stall the event loop). All media rules are
enforced here, so a task that gets a row never fails later because of its inputs.

When several items are bad, the error reported is always the first in field order (image,
last_image, images, videos, audios) and index order, whichever download happened to fail first:
items are awaited in that order, and a failure cancels only the items after it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..engines.base import MediaRef
from ..errors import MediaError
from .datauri import decode_data_uri
from .fetch import SafeFetcher
from .images import inspect_image
from .probe import probe_audio, probe_video

if TYPE_CHECKING:
    from ..config import Settings

MIN_CLIP, MAX_CLIP, MAX_TOTAL = 2.0, 15.0, 15.0
# Durations are measured from packets, and audio encoders add whole frames of priming and
# padding: a "15 s" AAC or MP3 file measures 15.02-15.11 s at 16-48 kHz. Up to this much past a
# limit counts as within it, so that clips made to the limit are not refused.
DURATION_TOLERANCE = 0.15

# detected format -> (file extension, content type)
_TYPES = {
    "jpeg": ("jpg", "image/jpeg"),
    "png": ("png", "image/png"),
    "webp": ("webp", "image/webp"),
    "bmp": ("bmp", "image/bmp"),
    "gif": ("gif", "image/gif"),
    "tiff": ("tiff", "image/tiff"),
    "mp4": ("mp4", "video/mp4"),
    "mov": ("mov", "video/quicktime"),
    "wav": ("wav", "audio/wav"),
    "mp3": ("mp3", "audio/mpeg"),
    "aac": ("aac", "audio/aac"),
    "m4a": ("m4a", "audio/mp4"),
}
_FIELDS = (("image", "image"), ("last_image", "image"), ("images", "image"), ("videos", "video"), ("audios", "audio"))


@dataclass
class MediaRequest:
    """The media fields of a create request, already shape-checked (strings, counts)."""

    image: str | None = None
    last_image: str | None = None
    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    audios: list[str] = field(default_factory=list)


@dataclass
class StoredBlob:
    key: str
    data: bytes
    content_type: str


@dataclass
class IntakeResult:
    image: MediaRef | None
    last_image: MediaRef | None
    images: list[MediaRef]
    videos: list[MediaRef]
    audios: list[MediaRef]
    blobs: list[StoredBlob]  # what the service must write to storage (keys under key_prefix)


@dataclass
class _Item:
    field: str  # "image", "last_image", "images", "videos", "audios"
    param: str  # "image", "images[0]" ...
    kind: str  # "image", "video", "audio"
    source: str  # http(s) URL or data: URI


async def intake_media(req: MediaRequest, *, fetcher: SafeFetcher, settings: Settings, key_prefix: str) -> IntakeResult:
    """Fetch, check and describe every media item of ``req``; raise the first ``MediaError``."""
    items = _items(req)
    caps = {"image": settings.image_max_bytes, "video": settings.video_max_bytes, "audio": settings.audio_max_bytes}
    tasks = [asyncio.create_task(_intake_one(item, fetcher, caps[item.kind], key_prefix)) for item in items]

    def cancel_later(index: int, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            for later in tasks[index + 1 :]:
                later.cancel()

    for index, task in enumerate(tasks):
        task.add_done_callback(lambda t, i=index: cancel_later(i, t))

    result = IntakeResult(image=None, last_image=None, images=[], videos=[], audios=[], blobs=[])
    try:
        for position, (item, task) in enumerate(zip(items, tasks)):
            ref, blob = await task  # in field and index order: the first failure is the one raised
            result.blobs.append(blob)
            if item.field in ("image", "last_image"):
                setattr(result, item.field, ref)
            else:
                getattr(result, item.field).append(ref)
            field_done = position + 1 == len(items) or items[position + 1].field != item.field
            if field_done and item.kind in ("video", "audio"):
                _check_total(item.field, item.kind, getattr(result, item.field))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result


def _items(req: MediaRequest) -> list[_Item]:
    items: list[_Item] = []
    for name, kind in _FIELDS:
        value = getattr(req, name)
        if isinstance(value, list):
            items.extend(_Item(name, f"{name}[{i}]", kind, source) for i, source in enumerate(value))
        elif value is not None:
            items.append(_Item(name, name, kind, value))
    return items


async def _intake_one(item: _Item, fetcher: SafeFetcher, max_bytes: int, key_prefix: str) -> tuple[MediaRef, StoredBlob]:
    if item.source[:5].lower() == "data:":
        _, data = await asyncio.to_thread(decode_data_uri, item.source, param=item.param, max_bytes=max_bytes)
    else:
        data = await fetcher.fetch(item.source, param=item.param, max_bytes=max_bytes)
    return await asyncio.to_thread(_describe, item, data, key_prefix)


def _describe(item: _Item, data: bytes, key_prefix: str) -> tuple[MediaRef, StoredBlob]:
    """Inspect or probe one item's bytes (in a worker thread) and name its storage key."""
    name = item.param.replace("[", "_").rstrip("]")  # "images[0]" -> "images_0"
    if item.kind == "image":
        image = inspect_image(data, param=item.param)
        fmt, width, height, duration, has_audio = image.format, image.width, image.height, None, False
    else:
        info = probe_video(data, param=item.param) if item.kind == "video" else probe_audio(data, param=item.param)
        if not MIN_CLIP - DURATION_TOLERANCE <= info.duration <= MAX_CLIP + DURATION_TOLERANCE:
            message = f"{item.param} is {_secs(info.duration)} s long; each reference {item.kind} must be 2-15 s"
            raise MediaError(message, param=item.param, code="invalid_media_duration")
        fmt, width, height, duration, has_audio = info.format, info.width, info.height, info.duration, info.has_audio
    ext, content_type = _TYPES[fmt]
    key = f"{key_prefix}{name}.{ext}"
    ref = MediaRef(key=key, kind=item.kind, width=width, height=height, duration=duration, has_audio=has_audio, format=fmt)
    return ref, StoredBlob(key=key, data=data, content_type=content_type)


def _check_total(name: str, kind: str, refs: list[MediaRef]) -> None:
    total = sum(ref.duration or 0.0 for ref in refs)
    if total > MAX_TOTAL + DURATION_TOLERANCE:
        message = f"the reference {kind}s are {_secs(total)} s long together; together they must be at most 15 s"
        raise MediaError(message, param=name, code="invalid_media_duration")


def _secs(seconds: float) -> str:
    """1.21 -> "1.2", 16.0 -> "16". One decimal always shows why a limit was missed, because
    refused durations are more than DURATION_TOLERANCE away from it."""
    text = f"{seconds:.1f}"
    return text[:-2] if text.endswith(".0") else text
