"""The Ark-native routes (``/api/v3/contents/generations/tasks``): HTTP only (parse, call
``ArkService``, return). Same keys, rate limits and tasks as every other route; errors under
``/api/v3`` are rendered in Ark's shape by the app's one error handler."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from .ark_protocol import TASKS, ArkErrorResponse, ArkTask, ArkTaskList, CreateTaskRequest, TaskId, inline_schema
from .ark_serving import ArkService
from .routes import IDEMPOTENCY_HEADER, CallerDep, Owner, Service, base_url, idempotency_key, read_json

router = APIRouter(tags=["Ark content generation"])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ArkErrorResponse} for code in (400, 401, 404, 409, 413, 429, 500, 503)}


async def get_ark(service: Service) -> ArkService:
    return ArkService(service)


Ark = Annotated[ArkService, Depends(get_ark)]

CREATE_BODY = {
    "parameters": [IDEMPOTENCY_HEADER],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inline_schema(CreateTaskRequest)}},
    },
}


@router.post(TASKS, responses={200: {"model": TaskId}, **ERRORS}, openapi_extra=CREATE_BODY)
async def create_task(
    request: Request,
    ark: Ark,
    caller: CallerDep,
) -> JSONResponse:
    key = idempotency_key(request)
    body = await read_json(request, ark.tasks.settings.max_body_bytes)
    task = await ark.create(body, caller=caller, base_url=base_url(request), idempotency_key=key)
    return JSONResponse({"id": task.id})


@router.get(TASKS, responses={200: {"model": ArkTaskList}, **ERRORS})
async def list_tasks(
    request: Request,
    ark: Ark,
    owner: Owner,
    page_num: str | None = None,
    page_size: str | None = None,
    status: Annotated[str | None, Query(alias="filter.status")] = None,
    task_ids: Annotated[list[str] | None, Query(alias="filter.task_ids")] = None,
    model: Annotated[str | None, Query(alias="filter.model")] = None,
    service_tier: Annotated[str | None, Query(alias="filter.service_tier")] = None,
) -> JSONResponse:
    page = await ark.page(
        owner,
        page_num=page_num,
        page_size=page_size,
        status=status,
        task_ids=task_ids or [],
        model=model,
        service_tier=service_tier,
        base_url=base_url(request),
    )
    return JSONResponse(page)


@router.get(TASKS + "/{task_id}", responses={200: {"model": ArkTask}, **ERRORS})
async def get_task(task_id: str, request: Request, ark: Ark, owner: Owner) -> JSONResponse:
    return JSONResponse(ark.render(await ark.get(task_id, owner), base_url(request)))


@router.delete(
    TASKS + "/{task_id}", responses={200: {"description": "cancelled (queued, running) or deleted (finished)"}, **ERRORS}
)
async def delete_task(task_id: str, ark: Ark, owner: Owner) -> JSONResponse:
    await ark.delete(task_id, owner)
    return JSONResponse({})
