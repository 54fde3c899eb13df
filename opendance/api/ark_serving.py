"""What the Ark-native routes do: no HTTP here, and no task rules of its own either.

An Ark create body becomes the legacy create body (``content`` items by role -> ``prompt``,
``image``, ``last_image``, ``images``, ``videos``, ``audios``; ``ratio`` -> ``aspect_ratio``;
``seed``, the flags, ``callback_url``, ``service_tier`` and ``execution_expires_after`` ->
``extra_body``) and goes through exactly the same validation, media intake, quotas and runner
as ``POST /v1/video/generations``. What is Ark's alone is checked here: the shape of
``content``, roles, ``resolution`` against the model's, ``ratio``'s words, ``duration: -1`` and
the fields this server does not make (``draft``, ``tools``, ``frames`` ...). A legacy error is
then renamed to the Ark field the caller sent (``images[1]`` -> ``content[2].image_url.url``).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import Conflict, InvalidRequest
from ..keys import Caller
from ..store import Task
from .ark_protocol import DEFAULT_EXPIRES_AFTER, RATIOS, RAW_STATUS, ark_task
from .serving import TaskService
from .validate import LIMITS, _type_name

MEDIA = {"image_url": "image", "video_url": "video", "audio_url": "audio"}
ROLES = {
    "image_url": ("first_frame", "last_frame", "reference_image"),
    "video_url": ("reference_video",),
    "audio_url": ("reference_audio",),
}
FLAGS = ("camera_fixed", "watermark", "generate_audio", "return_last_frame")
PASSED = ("seed", *FLAGS, "callback_url", "service_tier", "execution_expires_after", "safety_identifier")
# Ark fields this server does not make; null (what the SDK sends by default), false or [] is fine.
UNSUPPORTED = {
    "draft": "draft videos are not made here; leave draft unset or false",
    "tools": "tools are not supported here",
    "frames": "frames is not supported here; give duration (5-15 seconds) instead",
    "priority": "priority is not supported here: tasks run in the order they are created",
    "omni_reference_task_type": "omni_reference_task_type is not supported here; the roles of the content items choose the mode",
}
MAX_TASK_IDS = 100
TASK_ID = re.compile(r"^task_[A-Za-z0-9_-]{32}$")  # domain.new_task_id's ids
MAX_PAGE = 500


@dataclass
class Translated:
    """The legacy body, and which Ark field each legacy field came from (for error messages)."""

    body: dict[str, Any]
    names: dict[str, str] = field(default_factory=dict)


def _bad(param: str | None, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def translate(body: Any, resolutions: dict[str, str]) -> Translated:
    """The legacy create body for an Ark one. ``resolutions``: model name -> its resolution, for
    the models the caller may use."""
    if not isinstance(body, dict):
        raise _bad(None, f"the request body must be a JSON object, not {_type_name(body)}", "invalid_body")
    for name, why in UNSUPPORTED.items():
        if body.get(name) not in (None, False, []):
            raise _bad(name, why, "unsupported_parameter")
    if body.get("output_format") not in (None, "mp4"):
        raise _bad("output_format", "output_format must be mp4 (the only format made here)", "unsupported_parameter")
    out = Translated({"model": body.get("model")})
    _content(body.get("content"), out)
    model = body.get("model")
    resolution = body.get("resolution")
    if resolution is not None and isinstance(model, str) and model in resolutions:
        if resolution != resolutions[model]:
            raise _bad(
                "resolution",
                f"the model {model!r} makes {resolutions[model]} videos; resolution must be "
                f"{resolutions[model]} or omitted, not {resolution!r}",
            )
    ratio = body.get("ratio")
    if ratio is not None and ratio not in RATIOS:
        raise _bad("ratio", f"ratio must be one of {', '.join(RATIOS)}; got {ratio!r}")
    if ratio not in (None, "adaptive"):  # adaptive (and the default): the nearest to the first image, 16:9 for text
        out.body["aspect_ratio"] = ratio
        out.names["aspect_ratio"] = "ratio"
    duration = body.get("duration")
    if duration is not None and duration != -1:  # -1: the model's default
        out.body["duration"] = duration
    extra = {key: body[key] for key in PASSED if body.get(key) is not None}
    extra.setdefault("generate_audio", True)  # Ark's default; the legacy API's is false
    extra.setdefault("execution_expires_after", DEFAULT_EXPIRES_AFTER)
    out.body["extra_body"] = extra
    out.names.update({f"extra_body.{key}": key for key in PASSED})
    return out


def _content(content: Any, out: Translated) -> None:
    if content is None:
        raise _bad("content", "content is required: a text item and/or image, video and audio items", "missing_field")
    if not isinstance(content, list) or not content:
        raise _bad("content", "content must be a non-empty array of items", "invalid_type")
    lists: dict[str, list[str]] = {"images": [], "videos": [], "audios": []}
    for i, item in enumerate(content):
        where = f"content[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, f"{where} must be an object, not {_type_name(item)}", "invalid_type")
        kind = item.get("type")
        if kind == "text":
            if "prompt" in out.body:
                raise _bad(where, f"{where}: only one text item is allowed", "duplicate_item")
            if not isinstance(item.get("text"), str):
                raise _bad(f"{where}.text", f"{where}.text must be a string, not {_type_name(item.get('text'))}", "invalid_type")
            out.body["prompt"] = item["text"]
            out.names["prompt"] = f"{where}.text"
            continue
        if not isinstance(kind, str) or kind not in ROLES:
            raise _bad(
                f"{where}.type",
                f"{where}.type must be text, image_url, video_url or audio_url; got {kind!r}",
                "unsupported_value",
            )
        media = item.get(kind)
        url = media.get("url") if isinstance(media, dict) else None
        if not isinstance(url, str):
            raise _bad(f"{where}.{kind}.url", f"{where}.{kind} must be an object with a url string", "invalid_type")
        role = item.get("role") or ROLES[kind][0]  # an image without a role is the first frame, as on Ark
        if role not in ROLES[kind]:
            raise _bad(f"{where}.role", f"{where}.role must be {' or '.join(ROLES[kind])} for {kind}; got {role!r}")
        param = f"{where}.{kind}.url"
        if role in ("first_frame", "last_frame"):
            legacy = "image" if role == "first_frame" else "last_image"
            if legacy in out.body:
                raise _bad(f"{where}.role", f"{where}: only one {role} image is allowed", "duplicate_item")
            out.body[legacy] = url
            out.names[legacy] = param
        else:
            legacy = MEDIA[kind] + "s"
            out.names[f"{legacy}[{len(lists[legacy])}]"] = param
            lists[legacy].append(url)
    for legacy, urls in lists.items():
        if urls:
            out.body[legacy] = urls
            out.names[legacy] = "content"


# Legacy mode-conflict errors, said in Ark's words.
_LAST_ALONE = "a last_frame image needs a first_frame image"
_AUDIO_ALONE = "reference_audio needs at least one reference_image or reference_video (audio alone is not a mode)"
_MIXED = "reference_image, reference_video and reference_audio items cannot be combined with first_frame or last_frame images"
_ROLE_OF = {"images": "reference_image", "videos": "reference_video", "audios": "reference_audio"}


def renamed(exc: InvalidRequest, names: dict[str, str]) -> InvalidRequest:
    """The same error, naming the Ark field the caller sent instead of its legacy twin."""
    param = exc.param or ""

    def same(message: str, new: str | None) -> InvalidRequest:
        return type(exc)(message, param=new, code=exc.code, retry_after=exc.retry_after)

    if param == "prompt" and exc.code == "missing_field":
        return same("content needs a text item (the prompt) when it has no image, video or audio", "content")
    if exc.code == "mode_conflict":
        if param == "last_image":
            message, where = _LAST_ALONE, names.get("last_image")
        else:
            message, where = (_MIXED if "combined" in exc.message else _AUDIO_ALONE), names.get(f"{param}[0]")
        return same(message, where.split(".")[0] if where else "content")  # content[i]: the item
    if param in LIMITS and (count := re.search(r"got (\d+)$", exc.message)):
        return same(f"content may hold 1 to {LIMITS[param]} {_ROLE_OF[param]} items; got {count[1]}", "content")
    new = names.get(param)
    if new is None:
        return exc
    return same(re.sub(rf"^{re.escape(param)}\b", new, exc.message), new)


class ArkService:
    def __init__(self, tasks: TaskService) -> None:
        self.tasks = tasks

    async def create(self, body: Any, *, caller: Caller, base_url: str, idempotency_key: str | None = None) -> Task:
        models = self.tasks.models_for(caller)
        ark = translate(body, {name: m.resolution for name, m in models.items()})
        try:
            return await self.tasks.create(ark.body, caller=caller, base_url=base_url, idempotency_key=idempotency_key, api="ark")
        except InvalidRequest as exc:
            raise renamed(exc, ark.names) from None

    async def get(self, task_id: str, owner: str) -> Task:
        return await self.tasks.get(task_id, owner)

    async def page(
        self,
        owner: str,
        *,
        page_num: Any,
        page_size: Any,
        status: str | None,
        task_ids: list[str],
        model: str | None,
        service_tier: str | None,
        base_url: str | None = None,
    ) -> dict[str, Any]:
        num = _int("page_num", page_num, 1)
        size = _int("page_size", page_size, 10)
        raw = None
        if status is not None:
            raw = RAW_STATUS.get(status)
            if raw is None:
                raise _bad("filter.status", f"filter.status must be one of {', '.join(RAW_STATUS)}; got {status!r}")
        if len(task_ids) > MAX_TASK_IDS:
            raise _bad("filter.task_ids", f"filter.task_ids may name at most {MAX_TASK_IDS} tasks; got {len(task_ids)}")
        for i, task_id in enumerate(task_ids):
            if not TASK_ID.match(task_id):
                raise _bad(
                    f"filter.task_ids[{i}]",
                    f"filter.task_ids[{i}] is not a task id (task_ and 32 letters, digits, - or _): {task_id[:60]!r}",
                )
        if service_tier is not None and service_tier not in ("default", "flex"):
            raise _bad("filter.service_tier", f"filter.service_tier must be default or flex; got {service_tier!r}")
        tasks, total = await asyncio.to_thread(
            self.tasks.store.search,
            owner,
            offset=(num - 1) * size,
            limit=size,
            raw_status=raw,
            ids=task_ids,
            model=model,
            service_tier=service_tier,
        )
        return {"total": total, "items": self.tasks.render_each(tasks, lambda t: self.render(t, base_url))}

    async def delete(self, task_id: str, owner: str) -> None:
        """Cancel a queued or running task; delete a finished one (as Ark's DELETE does)."""
        task = await self.tasks.get(task_id, owner)
        if not task.status.is_terminal():
            try:
                await self.tasks.cancel(task_id, owner)
                return
            except Conflict:
                pass  # it finished meanwhile: delete it
        await self.tasks.delete(task_id, owner)

    def render(self, task: Task, base_url: str | None = None) -> dict[str, Any]:
        """Links on ``base_url``, the request's (as the legacy route's; see ``content_url``)."""
        done = task.video_key is not None and task.raw_status.value == "COMPLETED"
        return ark_task(
            task,
            self.tasks.content_url(task, base_url=base_url) if done else None,
            self.tasks.content_url(task, "last_frame", base_url) if done and task.last_frame_key else None,
        )


def _int(name: str, value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise _bad(name, f"{name} must be an integer; got {value!r}", "invalid_type") from None
    if not 1 <= n <= MAX_PAGE:
        raise _bad(name, f"{name} must be between 1 and {MAX_PAGE}; got {n}")
    return n
