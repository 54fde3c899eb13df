"""OpenAI's Videos API (``/v1/videos``): HTTP only (parse, call ``VideoService``, return).

``GET /v1/videos/{id}`` is also the legacy alias of the task query (spec/api.md), so it
answers with one object holding every field of both shapes; ``object`` is ``"video"`` for
OpenAI's SDKs (recognised by the ``X-Stainless-*`` / ``OpenAI-*`` headers or an ``OpenAI/``
user agent) and ``"video.generation.job"`` for everyone else. ``?shape=openai|legacy`` decides
explicitly. docs/openai.md explains the choice.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InvalidRequest
from .openai_protocol import CreateVideoForm, Video, VideoDeleted, VideoList, VideoOrTask
from .openai_serving import Upload, VideoService
from .routes import (
    IDEMPOTENCY_HEADER,
    CONTENT_RESPONSES,
    ERRORS,
    CallerDep,
    Limit,
    Order,
    Owner,
    Service,
    base_url,
    documented_as,
    get_content,
    get_owner,
    idempotency_key,
    read_body,
    read_json,
)

router = APIRouter(tags=["OpenAI videos"])

# Tells the SDK's poll helper how long to wait between polls (it reads this header).
POLL_AFTER_MS = "500"
SHAPES = ("openai", "legacy")
VARIANTS = ("video", "thumbnail", "last_frame")
Shape = Annotated[str | None, documented_as({"type": "string", "enum": list(SHAPES)})]


async def get_videos(service: Service) -> VideoService:
    return VideoService(service)


Videos = Annotated[VideoService, Depends(get_videos)]


def wants_openai_shape(request: Request, shape: str | None) -> bool:
    if shape is not None:
        if shape not in SHAPES:
            raise InvalidRequest(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}", param="shape")
        return shape == "openai"
    if any(name.startswith(("x-stainless-", "openai-")) for name in request.headers.keys()):
        return True
    return request.headers.get("user-agent", "").lower().startswith("openai/")


async def read_create(request: Request, limit: int) -> tuple[Any, Upload | None]:
    """The create request as (fields, the ``input_reference`` file part if one was sent)."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await read_json(request, limit), None
    body = await read_body(request, limit)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=10, max_fields=100, max_part_size=limit)
    except StarletteHTTPException as exc:
        raise InvalidRequest(f"the form cannot be read: {exc.detail}", code="invalid_form") from None
    fields: dict[str, Any] = {}
    upload = None
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name == "input_reference":
                    upload = Upload(value.filename, value.content_type, await value.read())
            else:
                fields[name] = value
    finally:
        await form.close()
    return fields, upload


CREATE_BODY = {
    "parameters": [IDEMPOTENCY_HEADER],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": CreateVideoForm.model_json_schema()},
            "multipart/form-data": {"schema": CreateVideoForm.model_json_schema()},
        },
    },
}


@router.post("/v1/videos", responses={200: {"model": Video}, **ERRORS}, openapi_extra=CREATE_BODY)
async def create_video(
    request: Request,
    videos: Videos,
    caller: CallerDep,
) -> JSONResponse:
    key = idempotency_key(request)
    fields, upload = await read_create(request, videos.tasks.settings.max_body_bytes)
    task = await videos.create(fields, upload, caller=caller, base_url=base_url(request), idempotency_key=key)
    return JSONResponse(videos.render(task))


@router.get("/v1/videos", responses={200: {"model": VideoList}, **ERRORS})
async def list_videos(
    videos: Videos, owner: Owner, after: str | None = None, limit: Limit = None, order: Order = "desc"
) -> JSONResponse:
    return JSONResponse(await videos.page(owner, after=after, limit=limit, order=order))


@router.get("/v1/videos/{video_id}", responses={200: {"model": VideoOrTask}, **ERRORS})
async def get_video(video_id: str, request: Request, videos: Videos, owner: Owner, shape: Shape = None) -> JSONResponse:
    openai = wants_openai_shape(request, shape)
    task = await videos.get(video_id, owner)
    headers = None if task.status.is_terminal() else {"openai-poll-after-ms": POLL_AFTER_MS}
    return JSONResponse(videos.render_dual(task, openai, base_url(request)), headers=headers)


@router.delete("/v1/videos/{video_id}", responses={200: {"model": VideoDeleted}, **ERRORS})
async def delete_video(video_id: str, videos: Videos, owner: Owner) -> JSONResponse:
    return JSONResponse(await videos.delete(video_id, owner))


@router.get(
    "/v1/videos/{video_id}/content",
    responses={**CONTENT_RESPONSES, 200: {"content": {"video/mp4": {}, "image/webp": {}, "image/png": {}}}},
    response_class=Response,
)
@router.head("/v1/videos/{video_id}/content", response_class=Response, include_in_schema=False)
async def get_video_content(
    video_id: str,
    request: Request,
    service: Service,
    videos: Videos,
    variant: Annotated[str, documented_as({"type": "string", "enum": list(VARIANTS), "default": "video"})] = "video",
    token: str | None = None,
) -> Response:
    if variant not in VARIANTS:
        raise InvalidRequest(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}", param="variant")
    if variant != "thumbnail":
        return await get_content(video_id, request, service, variant, token)  # the legacy route, Range and all
    # Signed links (``token``) are made for the legacy variants only; a thumbnail needs the key.
    task, data = await videos.thumbnail(video_id, get_owner(request))
    headers = {"Content-Disposition": f'inline; filename="{task.id}-thumbnail.webp"', "Cache-Control": "private, max-age=86400"}
    return Response(data, media_type="image/webp", headers=headers)
