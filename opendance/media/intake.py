"""Create-time media intake: fetch or decode every input, check it, and say what to store.

Every item is fetched (or its data: URI decoded) concurrently into a file in the create's spool
folder (never held in memory), each byte taken from the budget of media bytes in flight first;
then inspected or probed on the media thread pool, holding the decode memory its header says it
needs (``budget.MediaWork``). All media rules are enforced here, so a task that gets a row never
fails later because of its inputs.

When several items are bad, the error reported is always the first in field order (image,
last_image, images, videos, audios) and index order, whichever download happened to fail first:
items are awaited in that order, and a failure cancels only the items after it.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..engines.base import MediaRef
from ..errors import MediaError
from . import images, probe
from .budget import IntakeScope
from .datauri import decode_data_uri
from .fetch import SafeFetcher

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
    path: Path  # the spooled bytes; removed with the create's spool folder
    size: int
    content_type: str


@dataclass
class IntakeResult:
    image: MediaRef | None
    last_image: MediaRef | None
    images: list[MediaRef]
    videos: list[MediaRef]
    audios: list[MediaRef]
    blobs: list[StoredBlob]  # what the service must write to storage (keys under key_prefix)

    @classmethod
    def empty(cls) -> IntakeResult:
        """No media: what a request without any gets."""
        return cls(image=None, last_image=None, images=[], videos=[], audios=[], blobs=[])

    @property
    def input_bytes(self) -> int:
        return sum(blob.size for blob in self.blobs)


@dataclass
class _Item:
    field: str  # "image", "last_image", "images", "videos", "audios"
    param: str  # "image", "images[0]" ...
    kind: str  # "image", "video", "audio"
    source: str  # http(s) URL or data: URI


async def intake_media(
    req: MediaRequest, *, fetcher: SafeFetcher, settings: Settings, key_prefix: str, scope: IntakeScope
) -> IntakeResult:
    """Fetch, check and describe every media item of ``req`` into ``scope`` (its spool folder and
    budgets); raise the first ``MediaError`` (or a 503/429 from a budget or the storage cap)."""
    items = _items(req)
    caps = {"image": settings.image_max_bytes, "video": settings.video_max_bytes, "audio": settings.audio_max_bytes}
    tasks = [asyncio.create_task(_intake_one(item, fetcher, caps[item.kind], key_prefix, scope)) for item in items]

    def cancel_later(index: int, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            for later in tasks[index + 1 :]:
                later.cancel()

    for index, task in enumerate(tasks):
        task.add_done_callback(functools.partial(cancel_later, index))

    result = IntakeResult.empty()
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


class _Spool:
    """A fetch's sink: each byte is taken from the create's budget before it is kept, and the
    bytes go to ``path`` in blocks written off the event loop."""

    BLOCK = 1024 * 1024

    def __init__(self, path: Path, scope: IntakeScope) -> None:
        self.path = path
        self.scope = scope
        self.received = 0
        self.taken = 0
        self._buffer = bytearray()

    async def expect(self, size: int) -> None:
        await self._take_up_to(size)  # all at once, before the first byte is read

    async def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        await self._take_up_to(self.received)
        self._buffer += chunk
        if len(self._buffer) >= self.BLOCK:
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered; the file exists afterwards (empty for an empty body)."""
        data, self._buffer = bytes(self._buffer), bytearray()
        await asyncio.to_thread(_append, self.path, data)

    async def _take_up_to(self, size: int) -> None:
        if size > self.taken:
            await self.scope.take(size - self.taken)
            self.taken = size


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:  # opened per block: no descriptor outlives a cancelled fetch
        f.write(data)


def _spool_name(item: _Item) -> str:
    return item.param.replace("[", "_").rstrip("]")  # "images[0]" -> "images_0"


async def _intake_one(
    item: _Item, fetcher: SafeFetcher, max_bytes: int, key_prefix: str, scope: IntakeScope
) -> tuple[MediaRef, StoredBlob]:
    work = scope.work
    path = await scope.make_folder() / _spool_name(item)
    if item.source[:5].lower() == "data:":
        # The URI is already in memory (the request body, under its limit); decoded, counted, spooled.
        _, data = await work.run(lambda: decode_data_uri(item.source, param=item.param, max_bytes=max_bytes))
        await scope.take(len(data))
        await asyncio.to_thread(path.write_bytes, data)
        size = len(data)
        del data
    else:
        spool = _Spool(path, scope)
        size = await fetcher.fetch_into(item.source, spool, param=item.param, max_bytes=max_bytes)
        await spool.flush()
    cost = await work.run(_decode_cost, item.kind, path)
    return await work.decode(cost, _describe, item, path, size, key_prefix)


def _decode_cost(kind: str, path: Path) -> int:
    """The decode memory ``_describe`` will need, from the file's header (nothing decoded)."""
    if kind == "image":
        return images.decode_cost(path)
    return probe.decode_cost(path) if kind == "video" else probe.AUDIO_DECODE_COST


def _describe(item: _Item, path: Path, size: int, key_prefix: str) -> tuple[MediaRef, StoredBlob]:
    """Inspect or probe one spooled item (on the media pool) and name its storage key."""
    width: int | None
    height: int | None
    duration: float | None
    if item.kind == "image":
        image = images.inspect_image(path, param=item.param)
        fmt, width, height, duration, has_audio = image.format, image.width, image.height, None, False
    else:
        info = probe.probe_video(path, param=item.param) if item.kind == "video" else probe.probe_audio(path, param=item.param)
        if not MIN_CLIP - DURATION_TOLERANCE <= info.duration <= MAX_CLIP + DURATION_TOLERANCE:
            message = f"{item.param} is {_secs(info.duration)} s long; each reference {item.kind} must be 2-15 s"
            raise MediaError(message, param=item.param, code="invalid_media_duration")
        fmt, width, height, duration, has_audio = info.format, info.width, info.height, info.duration, info.has_audio
    ext, content_type = _TYPES[fmt]
    key = f"{key_prefix}{_spool_name(item)}.{ext}"
    ref = MediaRef(key=key, kind=item.kind, width=width, height=height, duration=duration, has_audio=has_audio, format=fmt)
    return ref, StoredBlob(key=key, path=path, size=size, content_type=content_type)


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
