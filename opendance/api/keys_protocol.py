"""Wire shapes of the admin key API (``/v1/admin/keys``) and of ``/v1/usage``, and how a key
and a usage row are rendered (the same for ``opendance keys list`` / ``opendance usage``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..store.keys import ApiKey, UsageRow


class CreateKeyRequest(BaseModel):
    name: str = Field(description="1-100 letters, digits, '.', '_' or '-'; never reused")
    max_concurrent: int | None = Field(None, ge=1, description="tasks queued or running at once; none: no limit")
    seconds_per_day: int | None = Field(None, ge=1, description="seconds of video per UTC day; none: no limit")
    models: list[str] | None = Field(None, description="the models the key may use; none: every model")
    admin: bool = Field(False, description="may manage keys and read every key's usage")


class KeyInfo(BaseModel):
    object: Literal["api_key"]
    name: str
    hint: str = Field(description="the key's first characters")
    admin: bool
    max_concurrent: int | None
    seconds_per_day: int | None
    models: list[str] | None
    created_at: int
    last_used_at: int | None = Field(description="updated at most once a minute per API server")
    revoked_at: int | None
    seconds_today: int | None = Field(None, description="video seconds charged today (UTC)")


class NewKey(KeyInfo):
    key: str = Field(description="the key itself: shown this once, never stored")


class KeyList(BaseModel):
    object: Literal["list"]
    data: list[KeyInfo]


class UsageItem(BaseModel):
    date: str = Field(description="the UTC day the tasks were created, YYYY-MM-DD")
    model: str
    video_seconds: int = Field(description="seconds of video of the completed tasks")
    completed: int
    failed: int
    cancelled: int
    expired: int
    key: str | None = Field(None, description="the key's name (opendance usage without --key)")


class UsageReport(BaseModel):
    object: Literal["usage"]
    key: str | None
    from_: str = Field(alias="from")
    to: str
    data: list[UsageItem]


def key_info(key: ApiKey, seconds_today: int | None = None) -> dict[str, Any]:
    def ts(value: float | None) -> int | None:
        return None if value is None else int(value)

    return {
        "object": "api_key",
        "name": key.name,
        "hint": key.hint,
        "admin": key.admin,
        "max_concurrent": key.max_concurrent,
        "seconds_per_day": key.seconds_per_day,
        "models": list(key.models) if key.models is not None else None,
        "created_at": int(key.created_at),
        "last_used_at": ts(key.last_used_at),
        "revoked_at": ts(key.revoked_at),
        "seconds_today": seconds_today,
    }


def usage_item(row: UsageRow, key: str | None = None) -> dict[str, Any]:
    item = {
        "date": row.day,
        "model": row.model,
        "video_seconds": row.video_seconds,
        "completed": row.completed,
        "failed": row.failed,
        "cancelled": row.cancelled,
        "expired": row.expired,
    }
    if key is not None:
        item["key"] = key
    return item
