"""The legacy video task routes: HTTP only (parse, call the service, return)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import WithJsonSchema

from ..domain import Status
from ..errors import AuthenticationError, InvalidRequest, NotFound, PayloadTooLarge
from ..keys import Caller
from ..storage import LocalFile, Stream
from .protocol import CreateVideoRequest, ErrorResponse, ModelList, TaskList, TaskObject
from .bodies import encode
from .serving import VARIANTS, TaskService
from .streaming import RangeFileResponse, stream_response

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 429, 500, 503)}


async def get_service(request: Request) -> TaskService:
    return request.app.state.service


# The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread
# (a hand-off and a loop wake-up each, the largest cost of a GET before issue 14). Telling a
# key of OPENDANCE_API_KEYS needs no store read, so it is done on the loop; a store key (or an
# open server, which asks the store whether a key exists yet) is read in a thread, as before.
async def caller_dep(request: Request) -> Caller:
    """``get_caller`` without a thread where no store read is needed."""
    caller = request.app.state.auth.known(request.headers.get("authorization"))
    if caller is None:
        return await asyncio.to_thread(get_caller, request)
    rate_limit(request, caller.owner)
    return caller


async def owner_dep(request: Request) -> str:
    return (await caller_dep(request)).owner


def get_caller(request: Request) -> Caller:
    """Who is calling (401 without a valid key), after taking a request from its rate limit.
    Blocking (it may read the store): the routes use ``caller_dep``."""
    try:
        caller = request.app.state.auth.caller(request.headers.get("authorization"))
    except AuthenticationError:
        rate_limit(request, "")  # failed attempts spend the client address's requests: no free guessing
        raise
    rate_limit(request, caller.owner)
    return caller


def get_owner(request: Request) -> str:
    """The caller's owner id: the tasks it may see."""
    return get_caller(request).owner


def rate_limit(request: Request, owner: str) -> None:
    """429 when the caller is over its request rate: keyed by API key, or by client address on
    an open server (``owner`` "") and for signed links, which carry no key."""
    limiter = request.app.state.limiter
    if not limiter.enabled:  # off (OPENDANCE_RATE_LIMIT_PER_MINUTE=0): nothing to take
        return
    address = request.client.host if request.client else "unknown"
    limiter.check(owner or f"address:{address}")


Service = Annotated[TaskService, Depends(get_service)]
Owner = Annotated[str, Depends(owner_dep)]
CallerDep = Annotated[Caller, Depends(caller_dep)]


_BASES: dict[tuple, str] = {}  # what base_url computed, by the parts of the scope it reads
_BASES_KEPT = 256  # distinct Host headers are the client's to choose: a bounded memo


def base_url(request: Request) -> str:
    """The request's base URL without the trailing slash (Starlette's ``request.base_url``,
    which parses a URL on every call, memoised by what it reads: scheme, server, root path and
    the Host header)."""
    scope = request.scope
    key = (
        scope.get("scheme"),
        scope.get("server"),
        scope.get("app_root_path", scope.get("root_path", "")),
        request.headers.get("host"),
    )
    base = _BASES.get(key)
    if base is None:
        if len(_BASES) >= _BASES_KEPT:
            _BASES.clear()
        base = _BASES[key] = str(request.base_url).rstrip("/")
    return base


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {int(declared)} bytes; at most {limit} bytes are accepted")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    return bytes(body)


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing (413) anything over ``limit`` bytes before reading it all."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise InvalidRequest(
            f"the body must be JSON (Content-Type: application/json), not {ctype}", code="unsupported_content_type"
        )
    body = await read_body(request, limit)
    try:
        return json.loads(body, parse_constant=_no_constants)
    except RecursionError:  # the parser's own limit (about 1000 levels), reached before ours
        raise InvalidRequest("the body is nested too deeply to read", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        reason = "a number has too many digits" if "integer string conversion" in str(exc) else str(exc)
        raise InvalidRequest(f"the body is not valid JSON: {reason}", code="invalid_json") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def documented_as(schema: dict[str, Any]) -> WithJsonSchema:
    """A query parameter read as text (the service parses it, with its own messages) but
    documented as what it must hold, so the OpenAPI schema is as strict as the validator."""
    return WithJsonSchema(schema)


# What the list routes' query parameters must hold, as documented (the service checks them).
LIMIT_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
ORDER_SCHEMA = {"type": "string", "enum": ["asc", "desc"], "default": "desc"}
STATUS_SCHEMA = {"type": "string", "enum": [s.value for s in Status]}

Variant = Annotated[str, documented_as({"type": "string", "enum": list(VARIANTS), "default": "video"})]
Limit = Annotated[str | None, documented_as(LIMIT_SCHEMA)]
Order = Annotated[str, documented_as(ORDER_SCHEMA)]


def query_parameters(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``openapi_extra`` documenting optional query parameters that a route reads itself from
    ``request.query_params`` (FastAPI's per-parameter resolution cost the list route more than
    its database read); the service checks each value with its own messages."""
    return {
        "parameters": [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in schemas.items()]
    }


LIST_QUERY: dict[str, dict[str, Any]] = {
    "limit": LIMIT_SCHEMA,
    "after": {"type": "string"},
    "status": STATUS_SCHEMA,
    "model": {"type": "string"},
    "order": ORDER_SCHEMA,
}


IDEMPOTENCY_KEY_MAX = 300  # characters
# The Idempotency-Key header as the create routes document it (``idempotency_key`` reads it).
IDEMPOTENCY_HEADER = {
    "name": "idempotency-key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX, "title": "Idempotency-Key"},
}


def idempotency_key(request: Request) -> str | None:
    """The create's ``Idempotency-Key`` header, if any (400 when longer than 300 characters)."""
    key = request.headers.get("idempotency-key")
    if key is not None and len(key) > IDEMPOTENCY_KEY_MAX:
        message = f"idempotency-key: must be at most {IDEMPOTENCY_KEY_MAX} characters; got {len(key)}"
        raise InvalidRequest(message, param="idempotency-key")
    return key


CREATE_BODY = {
    "parameters": [IDEMPOTENCY_HEADER],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": CreateVideoRequest.model_json_schema()}},
    },
}


@router.post("/v1/video/generations", responses={200: {"model": TaskObject}, **ERRORS}, openapi_extra=CREATE_BODY)
@router.post(
    "/v1/videos/generations", responses={200: {"model": TaskObject}, **ERRORS}, openapi_extra=CREATE_BODY, include_in_schema=False
)
async def create_task(request: Request) -> Response:
    # As in get_task: the service, the caller and the header read here (the same checks in the
    # same order: the key, its rate limit, the header, then the body).
    service: TaskService = request.app.state.service
    caller = await caller_dep(request)
    key = idempotency_key(request)
    body = await read_json(request, service.settings.max_body_bytes)
    task = await service.create(body, caller=caller, base_url=base_url(request), idempotency_key=key)
    return Response(encode(service.render(task, base_url(request))), media_type="application/json")


@router.get("/v1/video/generations", responses={200: {"model": TaskList}, **ERRORS}, openapi_extra=query_parameters(LIST_QUERY))
async def list_tasks(request: Request) -> Response:
    # The service, the caller and the query read here, not as FastAPI dependencies and
    # parameters: on the two hottest routes their resolution cost more than the read (the same
    # checks in the same order; a repeated parameter is its last value, as FastAPI takes it).
    service: TaskService = request.app.state.service
    owner = await owner_dep(request)
    query = request.query_params
    body = await service.list_body(
        owner,
        base_url(request),
        limit=query.get("limit"),
        after=query.get("after"),
        status=query.get("status"),
        model=query.get("model"),
        order=query.get("order", "desc"),
    )
    return Response(body, media_type="application/json")


def page(data: list[dict[str, Any]], tasks: list, has_more: bool) -> dict[str, Any]:
    """A list page. The cursors are the page's first and last tasks, also when one of them could
    not be rendered, so ``after=last_id`` always continues where this page ended."""
    return {
        "object": "list",
        "data": data,
        "first_id": tasks[0].id if tasks else None,
        "last_id": tasks[-1].id if tasks else None,
        "has_more": has_more,
    }


# The task id is read from the matched path, not as a FastAPI parameter (as list_tasks reads its
# query): the route is polled more than any other; the document still names the parameter.
TASK_ID_PATH = {
    "parameters": [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "string", "title": "Task Id"}}]
}


@router.get("/v1/video/generations/{task_id}", responses={200: {"model": TaskObject}, **ERRORS}, openapi_extra=TASK_ID_PATH)
@router.get("/v1/videos/generations/{task_id}", responses={200: {"model": TaskObject}, **ERRORS}, include_in_schema=False)
async def get_task(request: Request) -> Response:
    service: TaskService = request.app.state.service
    owner = await owner_dep(request)  # as in list_tasks
    task_id = request.scope["path_params"]["task_id"]
    return Response(await service.get_body(task_id, owner, base_url(request)), media_type="application/json")


@router.post("/v1/video/generations/{task_id}/cancel", responses={200: {"model": TaskObject}, **ERRORS})
@router.post("/v1/videos/generations/{task_id}/cancel", responses={200: {"model": TaskObject}, **ERRORS}, include_in_schema=False)
async def cancel_task(task_id: str, request: Request, service: Service, owner: Owner) -> JSONResponse:
    return JSONResponse(service.render(await service.cancel(task_id, owner), base_url(request)))


@router.delete("/v1/video/generations/{task_id}", responses=ERRORS)
@router.delete("/v1/videos/generations/{task_id}", responses=ERRORS, include_in_schema=False)
async def delete_task(task_id: str, service: Service, owner: Owner) -> JSONResponse:
    await service.delete(task_id, owner)
    return JSONResponse({"id": task_id, "object": "video.generation.job.deleted", "deleted": True})


CONTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"video/mp4": {}, "image/png": {}}},
    206: {"description": "a byte range"},
    416: {"model": ErrorResponse, "description": "the Range starts past the end of the file"},
    **ERRORS,
}


# GET and HEAD (a HEAD is a GET without the body: the size and type of the file, for players).
@router.get("/v1/video/generations/{task_id}/content", responses=CONTENT_RESPONSES, response_class=Response)
@router.head("/v1/video/generations/{task_id}/content", response_class=Response, include_in_schema=False)
@router.get("/v1/videos/generations/{task_id}/content", response_class=Response, include_in_schema=False)
@router.head("/v1/videos/generations/{task_id}/content", response_class=Response, include_in_schema=False)
async def get_content(
    task_id: str,
    request: Request,
    service: Service,
    variant: Variant = "video",
    token: str | None = None,
) -> Response:
    # A signed link (video_url) needs no key; otherwise the caller must own the task.
    owner = None if token is not None and request.headers.get("authorization") is None else get_owner(request)
    if owner is None:
        rate_limit(request, "")
    task, where = await service.content(task_id, owner, variant, token)
    if isinstance(where, LocalFile):
        media_type = "video/mp4" if variant == "video" else "image/png"
        filename = f"{task.id}.mp4" if variant == "video" else f"{task.id}-last-frame.png"
        try:  # stat here, not in the response: a file deleted meanwhile is a 404, not a 500
            stat = await asyncio.to_thread(os.stat, where.path)
        except FileNotFoundError:
            gone = "the file of this task is gone (deleted meanwhile)"
            raise NotFound(gone, param="task_id", code="content_not_found") from None
        return RangeFileResponse(
            where.path,
            media_type=media_type,
            filename=filename,
            stat_result=stat,
            content_disposition_type="inline",
            headers={"Cache-Control": "private, max-age=86400"},
        )
    if isinstance(where, Stream):  # S3 with content_serving = "proxy"
        media_type = "video/mp4" if variant == "video" else "image/png"
        filename = f"{task.id}.mp4" if variant == "video" else f"{task.id}-last-frame.png"
        return stream_response(where, request, media_type, filename, {"Cache-Control": "private, max-age=86400"})
    return RedirectResponse(where.url, status_code=302)


@router.get("/v1/models", responses={200: {"model": ModelList}, **ERRORS})
async def list_models(service: Service, caller: CallerDep) -> JSONResponse:
    data = [
        {
            "id": m.name,
            "object": "model",
            "created": 0,
            "owned_by": m.owned_by,
            "resolution": m.resolution,
            "modes": [mode.value for mode in m.modes],
            "loras": list(m.allowed_loras),
        }
        for m in service.models_for(caller).values()
    ]
    return JSONResponse({"object": "list", "data": data})
