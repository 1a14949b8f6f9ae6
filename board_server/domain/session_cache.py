"""Who an access token names, remembered per process on PostgreSQL while every revocation is heard.

Each authenticated call would otherwise read the token's row. A revocation (sign-out, a password change, an
admin flag granted or taken, a user deleted) sends a notification naming the user when it commits
(storage/notifications.py), and every process forgets that user's tokens when it arrives; the process that
made the change forgets them at once. While the listener is not connected nothing is remembered or used,
and on (re)connecting everything is forgotten: a revocation missed meanwhile is read from the database.

A lookup that started before a change was heard is not remembered (``generation``): it may have read the
row before the change committed. Unknown and revoked tokens are never remembered. Expiry is checked at
each use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

CAPACITY = 10_000  # tokens remembered per process; the oldest is forgotten first


@dataclass(frozen=True)
class Identity:
    """What a token names: its session, its user and their admin flag, and when it expires."""

    token_id: int
    user_id: int
    admin: bool
    expire_time: datetime


class SessionCache:
    """Identities by token digest, used only while ``listening()`` is true (the change listener connected)."""

    def __init__(self, listening: Callable[[], bool], capacity: int = CAPACITY) -> None:
        self._listening = listening
        self._capacity = capacity
        self._by_digest: dict[str, Identity] = {}
        self._by_user: dict[int, set[str]] = {}
        self.generation = 0

    def get(self, digest: str) -> Identity | None:
        if not self._listening():
            return None
        return self._by_digest.get(digest)

    def put(self, digest: str, identity: Identity, generation: int) -> None:
        """Remember ``identity``, read when ``generation`` was current, unless a change came since."""
        if generation != self.generation or not self._listening():
            return
        if len(self._by_digest) >= self._capacity:
            self._forget(next(iter(self._by_digest)))
        self._by_digest[digest] = identity
        self._by_user.setdefault(identity.user_id, set()).add(digest)

    def changed(self, user_ids: frozenset[int] | None) -> None:
        """Forget the tokens of ``user_ids`` (None: of everyone)."""
        self.generation += 1
        if user_ids is None:
            self._by_digest.clear()
            self._by_user.clear()
            return
        for user_id in user_ids:
            for digest in self._by_user.pop(user_id, ()):
                self._by_digest.pop(digest, None)

    def _forget(self, digest: str) -> None:
        identity = self._by_digest.pop(digest)
        digests = self._by_user.get(identity.user_id)
        if digests is not None:
            digests.discard(digest)
            if not digests:
                del self._by_user[identity.user_id]
