"""Remembered request ids of creates (AIP-155): which resource a caller's request_id created, and a digest of
the request, until the sweep (see storage/users.py for how row modules work).

The primary key (caller_id, request_id) is what makes concurrent duplicates race to one resource: on SQLite
the writes take turns, so a duplicate finds the first one's row; on PostgreSQL the second INSERT waits for
the first transaction and fails once it commits, which ``remember`` reports as RequestIdTaken.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError

from board_server.storage.lean import LeanQuery
from board_server.storage.tables import RequestId

_REQUESTS = cast(Table, RequestId.__table__)
_R = _REQUESTS.c

# Both on the lean path: they run inside the hottest write (CreatePost) whenever a client sends a request_id.
_EARLIER = LeanQuery(
    select(_R.digest, _R.resource_id, _R.create_time).where(
        _R.caller_id == bindparam("caller_id"), _R.request_id == bindparam("request_id")
    )
)
_REMEMBER = LeanQuery(
    insert(_REQUESTS).values({c.name: bindparam(c.name) for c in _REQUESTS.c}).returning(_R.resource_id)
)


class RequestIdTaken(Exception):  # noqa: N818 - says what happened, like the domain's errors
    """Another transaction committed the same (caller, request_id) first; this one must be rolled back."""


@dataclass(frozen=True)
class Remembered:
    """What a caller's request_id did: the request's digest, the resource it created, and when."""

    digest: str
    resource_id: int
    create_time: datetime


def earlier(conn: Connection, caller_id: int, request_id: str) -> Remembered | None:
    """The remembered request, or None."""
    row = _EARLIER.first(conn, {"caller_id": caller_id, "request_id": request_id})
    return None if row is None else Remembered(str(row.digest), int(row.resource_id), row.create_time)


def remember(
    conn: Connection, caller_id: int, request_id: str, *, digest: str, resource_id: int, now: datetime
) -> None:
    """Remember that the request created ``resource_id``; raise RequestIdTaken when a concurrent duplicate
    committed first (the caller's transaction is then unusable on PostgreSQL and must be rolled back)."""
    values = {
        "caller_id": caller_id,
        "request_id": request_id,
        "digest": digest,
        "resource_id": resource_id,
        "create_time": now,
    }
    try:
        _REMEMBER.first(conn, values)
    except (IntegrityError, sqlite3.IntegrityError) as exc:  # the primary key: nothing else can fail so
        raise RequestIdTaken(request_id) from exc


def forget(conn: Connection, caller_id: int, request_id: str) -> None:
    """Forget one remembered request (its time is up; the id may start a new request)."""
    conn.execute(delete(_REQUESTS).where(_R.caller_id == caller_id, _R.request_id == request_id))


def sweep(conn: Connection, before: datetime) -> int:
    """Forget every request remembered before ``before``; how many."""
    return int(conn.execute(delete(_REQUESTS).where(_R.create_time < before)).rowcount)
