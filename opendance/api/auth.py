"""Bearer keys, task ownership, and signed content links.

Keys come from two places: ``OPENDANCE_API_KEYS`` (compared in constant time, no limits) and
the store (``opendance keys create``; looked up by their SHA-256, with a name, limits and
models). Once any key exists in either place, every request needs one; a server with none is
open. A store key is read from the store on every request it makes, so a revoked key is a 401
at once on every API server sharing the database: there is no cache to outlive a revoke.

A task belongs to the key that made it: the store keeps the key's owner id (derived from a
hash of the key), never the key. ``video_url`` links carry a signature so that a browser or
``<video src>`` can fetch the file without the key; the signature covers one task and one
variant, so it reveals nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from ..errors import AuthenticationError
from ..keys import Caller, hash_key, owner_of
from ..store.keys import KeyStore

__all__ = ["Auth", "UrlSigner", "owner_of"]

OPEN = Caller()
TOUCH_EVERY = 60.0  # seconds between writes of a key's last_used_at (per API server)


class Auth:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [(k.encode(), owner_of(k)) for k in keys]
        self.store: KeyStore | None = None  # attached once the store is open
        self._closed = bool(self._keys)  # once a key exists the server is never open again
        self._touched: dict[str, float] = {}

    def attach(self, store: KeyStore) -> None:
        self.store = store

    @property
    def closed(self) -> bool:
        """The last known answer of ``enabled`` (no store read): whether links must be signed."""
        return self._closed

    @property
    def enabled(self) -> bool:
        """Whether requests need a key (reads the store while none is known)."""
        if not self._closed and self.store is not None and self.store.any():
            self._closed = True
        return self._closed

    def known(self, authorization: str | None) -> Caller | None:
        """The caller when telling needs no store read: a key of ``OPENDANCE_API_KEYS`` (compared
        in constant time, as in ``caller``). None: ask ``caller`` (which may read the store)."""
        if not authorization or not self._keys:
            return None
        scheme, _, given = authorization.partition(" ")
        candidate = given.strip()
        if scheme.lower() != "bearer" or not candidate:
            return None
        found = ""
        encoded = candidate.encode()
        for key, owner in self._keys:  # no early exit: the time does not depend on which key
            if hmac.compare_digest(encoded, key):
                found = owner
        return Caller(owner=found) if found else None

    def owner(self, authorization: str | None) -> str:
        return self.caller(authorization).owner

    def caller(self, authorization: str | None) -> Caller:
        """Who sends this ``Authorization`` header (``OPEN`` on an open server). Blocking: the
        store is read, so call it from a thread."""
        if not authorization:
            if self.enabled:
                raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
            return OPEN
        scheme, _, given = authorization.partition(" ")
        candidate = given.strip()
        if scheme.lower() != "bearer" or not candidate:
            if self.enabled:
                raise AuthenticationError("the Authorization header must be 'Bearer <key>'")
            return OPEN
        found = ""
        for key, owner in self._keys:  # no early exit: the time does not depend on which key
            if hmac.compare_digest(candidate.encode(), key):
                found = owner
        if found:
            return Caller(owner=found)
        row = self.store.by_hash(hash_key(candidate)) if self.store is not None else None
        if row is not None:
            if row.revoked_at is not None:
                raise AuthenticationError("this API key was revoked")
            self._closed = True
            self._touch(row.owner)
            return Caller.of_key(row)
        if not self.enabled:
            return OPEN  # an open server ignores whatever key it is sent
        raise AuthenticationError("invalid API key")

    def _touch(self, owner: str) -> None:
        """Record the key's use, at most once a minute per server (a write per request would
        make every GET a write)."""
        now = time.time()
        if self.store is not None and now - self._touched.get(owner, 0.0) >= TOUCH_EVERY:
            self._touched[owner] = now
            self.store.touch(owner, now)


class UrlSigner:
    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    def sign(self, task_id: str, variant: str) -> str:
        return hmac.new(self._secret, f"{task_id}:{variant}".encode(), hashlib.sha256).hexdigest()[:32]

    def verify(self, task_id: str, variant: str, token: str) -> bool:
        return hmac.compare_digest(self.sign(task_id, variant), token)
