"""Bearer keys, task ownership, and signed content links.

A task belongs to the key that made it: the store keeps a hash of the key (``owner``), never
the key. Keys are compared in constant time. ``video_url`` links carry a signature so that a
browser or ``<video src>`` can fetch the file without the key; the signature covers one task
and one variant, so it reveals nothing else.
"""

from __future__ import annotations

import hashlib
import hmac

from ..errors import AuthenticationError


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Auth:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [(k.encode(), owner_of(k)) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def owner(self, authorization: str | None) -> str:
        """The owner id for an ``Authorization`` header ("" on an open server)."""
        if not self._keys:
            return ""
        if not authorization:
            raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise AuthenticationError("the Authorization header must be 'Bearer <key>'")
        candidate = given.strip().encode()
        found = ""
        for key, owner in self._keys:  # no early exit: the time does not depend on which key
            if hmac.compare_digest(candidate, key):
                found = owner
        if not found:
            raise AuthenticationError("invalid API key")
        return found


class UrlSigner:
    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    def sign(self, task_id: str, variant: str) -> str:
        return hmac.new(self._secret, f"{task_id}:{variant}".encode(), hashlib.sha256).hexdigest()[:32]

    def verify(self, task_id: str, variant: str, token: str) -> bool:
        return hmac.compare_digest(self.sign(task_id, variant), token)
