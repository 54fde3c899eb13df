"""``/v1/admin/keys`` (admin keys only) and ``/v1/usage``: HTTP only; ``KeyService`` does the work.

The admin API needs a store key made with ``admin``: keys from ``OPENDANCE_API_KEYS`` and an
open server have no admin rights (the first admin key is made with ``opendance keys create
--admin`` on the server's database).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from ..errors import InvalidRequest, PermissionDenied
from ..keys import Caller, KeyService, day_range
from .keys_protocol import CreateKeyRequest, KeyInfo, KeyList, NewKey, UsageReport, key_info, usage_item
from .protocol import ErrorResponse
from .routes import ERRORS as TASK_ERRORS
from .routes import CallerDep, read_json

router = APIRouter(tags=["keys and usage"])
ERRORS = {**TASK_ERRORS, 403: {"model": ErrorResponse}}  # a key without admin rights


async def get_keys(request: Request) -> KeyService:
    return request.app.state.keys


async def require_admin(caller: CallerDep) -> Caller:
    if not caller.admin:
        raise PermissionDenied("the admin API needs an admin key (opendance keys create --admin)", code="admin_required")
    return caller


Keys = Annotated[KeyService, Depends(get_keys)]
Admin = Annotated[Caller, Depends(require_admin)]
CREATE_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": CreateKeyRequest.model_json_schema()}}}
}


@router.post("/v1/admin/keys", responses={200: {"model": NewKey}, **ERRORS}, openapi_extra=CREATE_BODY)
async def create_key(request: Request, keys: Keys, admin: Admin) -> JSONResponse:
    body = await read_json(request, 64 * 1024)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_body")
    key, plain = await asyncio.to_thread(
        keys.create,
        body.get("name"),
        max_concurrent=body.get("max_concurrent"),
        seconds_per_day=body.get("seconds_per_day"),
        models=body.get("models"),
        admin=body.get("admin", False),
    )
    return JSONResponse({**key_info(key, 0), "key": plain})


@router.get("/v1/admin/keys", responses={200: {"model": KeyList}, **ERRORS})
async def list_keys(keys: Keys, admin: Admin) -> JSONResponse:
    rows = await asyncio.to_thread(keys.list, time.time())
    return JSONResponse({"object": "list", "data": [key_info(key, today) for key, today in rows]})


@router.delete("/v1/admin/keys/{name}", responses={200: {"model": KeyInfo}, **ERRORS})
async def revoke_key(name: str, keys: Keys, admin: Admin) -> JSONResponse:
    return JSONResponse(key_info(await asyncio.to_thread(keys.revoke, name)))


@router.get("/v1/usage", responses={200: {"model": UsageReport}, **ERRORS})
async def usage(
    keys: Keys,
    caller: CallerDep,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    key: str | None = None,
) -> JSONResponse:
    """The caller's usage per UTC day and model; an admin may name any key (``key``)."""
    first, last = day_range(start, end, dt.datetime.now(dt.UTC).date())
    owner, name = caller.owner, caller.name
    if key is not None and key != caller.name:
        if not caller.admin:
            raise PermissionDenied("only an admin key may read another key's usage", param="key", code="admin_required")
        owner, name = await asyncio.to_thread(keys.owner_named, key), key
    rows = await asyncio.to_thread(keys.usage, owner, first, last)
    return JSONResponse(
        {"object": "usage", "key": name, "from": first.isoformat(), "to": last.isoformat(), "data": [usage_item(r) for r in rows]}
    )
