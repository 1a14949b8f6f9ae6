"""Etags (AIP-154): which version of a resource a caller saw, and the check that refuses to change any other.

Each resource's etag comes from what already changes with every visible change, so that reads (GetPost,
ListPosts: the benchmarked hot path) pay no query and almost no work for it:

- a post or a comment: its update_time, which every change moves strictly forward (``clock.later_than``);
- a user: the ``version`` column, bumped by every UPDATE of the row (users have no update_time);
- an attachment: a digest of everything the API shows of it (status, labels, model, attempts, a queued
  re-tag, ...): the tagging worker, retries and re-tags change it in many statements, and a digest of the
  view cannot miss one.

The check runs inside the write's transaction, on the row read FOR UPDATE (locked on PostgreSQL; SQLite's
writes take turns), so of concurrent changes sent with one etag exactly one applies.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from board_server.core.errors import StaleEtag

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def of_time(update_time: datetime) -> str:
    """The etag of a post or comment: its update_time in microseconds, in hex."""
    delta = update_time - _EPOCH
    return f"{(delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds:x}"


def of_version(version: int) -> str:
    """The etag of a user: its version."""
    return f"v{version}"


def of_text(text: str) -> str:
    """The etag of a resource shown as ``text`` (all of what the API shows of it)."""
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def require_current(sent: str, current: str, what: str) -> None:
    """Raise StaleEtag unless ``sent`` is empty (no condition) or ``current``."""
    if sent and sent != current:
        raise StaleEtag(f"{what} changed since you read it (the etag does not match); read it again")
