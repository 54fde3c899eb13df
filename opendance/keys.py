"""API keys: who a caller is (``Caller``), and making, listing and revoking keys in the store
(``KeyService``), for both ``opendance keys`` and ``/v1/admin/keys``.

A key is ``od-`` and 43 random URL-safe characters (256 bits). The store keeps its SHA-256
only: a key this random needs no slow hash, and a lookup by hash is a single indexed read.
The owner id of a key's tasks is the first 32 hex digits of that hash, exactly as for keys in
``OPENDANCE_API_KEYS``, so a task's owner never depends on where its key was configured.
"""

from __future__ import annotations

import builtins

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass

from .errors import InvalidRequest, NotFound
from .store.keys import ApiKey, DuplicateKeyName, KeyStore, UsageRow

KEY_PREFIX = "od-"
HINT_LENGTH = 7  # "od-" and 4 characters: enough to tell keys apart, far too few to guess one
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_USAGE_DAYS = 366


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of(key: str) -> str:
    """The owner id a key's tasks carry."""
    return hash_key(key)[:32]


@dataclass(frozen=True)
class Caller:
    """Who makes a request: the owner id of its tasks, and a store key's name, role and limits
    (``None`` for keys from the environment and on an open server: no limits, every model)."""

    owner: str = ""
    name: str | None = None
    admin: bool = False
    max_concurrent: int | None = None
    seconds_per_day: int | None = None
    models: frozenset[str] | None = None

    @classmethod
    def of_key(cls, key: ApiKey) -> Caller:
        return cls(
            owner=key.owner,
            name=key.name,
            admin=key.admin,
            max_concurrent=key.max_concurrent,
            seconds_per_day=key.seconds_per_day,
            models=frozenset(key.models) if key.models is not None else None,
        )

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    @property
    def limited(self) -> bool:
        return self.max_concurrent is not None or self.seconds_per_day is not None


def utc_midnight(now: float) -> float:
    """The start of ``now``'s UTC day (quotas reset then)."""
    return float(int(now // 86400) * 86400)


def day_range(start: str | None, end: str | None, today: dt.date) -> tuple[dt.date, dt.date]:
    """``from`` and ``to`` (YYYY-MM-DD, both included; default today)."""

    def parse(value: str | None, param: str) -> dt.date:
        if value is None or value == "":
            return today
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise InvalidRequest(f"{param} must be a date as YYYY-MM-DD; got {value!r}", param=param) from None

    first, last = parse(start, "from"), parse(end, "to")
    if last < first:
        raise InvalidRequest(f"to ({last}) is before from ({first})", param="to")
    if (last - first).days >= MAX_USAGE_DAYS:
        raise InvalidRequest(
            f"at most {MAX_USAGE_DAYS} days at once; from {first} to {last} is {(last - first).days + 1}", param="from"
        )
    return first, last


def _epoch(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


class KeyService:
    """What ``opendance keys`` and the admin API do, with no HTTP and no printing in it."""

    def __init__(self, store: KeyStore, models: Collection[str]) -> None:
        self.store = store
        self.models = list(models)

    def create(
        self,
        name: object,
        *,
        max_concurrent: object = None,
        seconds_per_day: object = None,
        models: object = None,
        admin: object = False,
    ) -> tuple[ApiKey, str]:
        """A new key: its row, and the key itself (shown once, never stored)."""
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidRequest(
                "name must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit", param="name"
            )
        limits = {k: _positive(k, v) for k, v in (("max_concurrent", max_concurrent), ("seconds_per_day", seconds_per_day))}
        if not isinstance(admin, bool):
            raise InvalidRequest("admin must be a boolean", param="admin", code="invalid_type")
        allowed = self._models(models)
        key = new_key()
        digest = hash_key(key)
        try:
            row = self.store.add(
                name=name, key_hash=digest, owner=digest[:32], hint=key[:HINT_LENGTH], admin=admin, models=allowed, **limits
            )
        except DuplicateKeyName:
            raise InvalidRequest(
                f"a key named {name!r} exists (names are never reused, revoked keys' too)", param="name", code="duplicate_name"
            ) from None
        return row, key

    def _models(self, models: object) -> list[str] | None:
        if models is None:
            return None
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            raise InvalidRequest("models must be a non-empty list of model names", param="models", code="invalid_type")
        unknown = [m for m in models if m not in self.models]
        if unknown:
            raise InvalidRequest(
                f"models: {', '.join(map(repr, unknown))} not configured; one of: {', '.join(self.models)}", param="models"
            )
        return sorted(set(models))

    def list(self, now: float) -> list[tuple[ApiKey, int]]:
        """Every key (revoked ones too) and the video seconds it is charged for today."""
        since = utc_midnight(now)
        return [(key, self.store.counts(key.owner, since)[1]) for key in self.store.all()]

    def revoke(self, name: str) -> ApiKey:
        key = self.store.revoke(name)
        if key is None:
            raise NotFound(f"no key named {name!r}", param="name", code="key_not_found")
        return key

    def owner_named(self, name: str) -> str:
        key = self.store.by_name(name)
        if key is None:
            raise NotFound(f"no key named {name!r}", param="key", code="key_not_found")
        return key.owner

    def usage(self, owner: str | None, first: dt.date, last: dt.date) -> builtins.list[UsageRow]:
        return self.store.usage(owner, _epoch(first), _epoch(last + dt.timedelta(days=1)))

    def names(self) -> dict[str, str]:
        """owner id -> key name, for tables that show every owner."""
        return {key.owner: key.name for key in self.store.all()}


def _positive(param: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"{param} must be a whole number of at least 1; got {value!r}", param=param)
    return value
