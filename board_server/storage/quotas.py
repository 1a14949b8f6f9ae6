"""What a user's quotas count: writes per minute (a row per user, minute and connection) and the bytes the
attachments of the user's posts hold. Like every row module (storage/users.py): functions take a Connection
inside the caller's transaction and never commit."""

from __future__ import annotations

import functools
from typing import Any, cast

from sqlalchemy import (
    CTE,
    BigInteger,
    Connection,
    Integer,
    Table,
    bindparam,
    delete,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.dml import ReturningInsert

from board_server.storage.lean import LeanQuery
from board_server.storage.tables import Attachment, Post, WriteTally

_TALLIES, _ATTACHMENTS, _POSTS = (cast(Table, m.__table__) for m in (WriteTally, Attachment, Post))

# The parameters of a counted write (``counted``), named apart from the write's own.
COUNTER_USER, MINUTE, LIMIT = "counter_user", "minute", "write_limit"
_USER, _MINUTE = bindparam(COUNTER_USER, type_=BigInteger()), bindparam(MINUTE, type_=BigInteger())
_KEY = [_TALLIES.c.user_id, _TALLIES.c.minute, _TALLIES.c.shard]
_ONE_MORE = {"writes": _TALLIES.c.writes + 1}

# SQLite (one writer at a time): one upsert on the writer's transaction, the user's writes in the minute
# (this one included) returned; over the limit, the caller raises and the transaction rolls the count back.
_COUNT_WRITE_SQLITE = LeanQuery(
    sqlite.insert(_TALLIES)
    .values({"user_id": _USER, "minute": _MINUTE, "shard": 0, "writes": 1})
    .on_conflict_do_update(index_elements=_KEY, set_=_ONE_MORE)
    .returning(_TALLIES.c.writes)
)


@functools.cache
def _count_on_own_row() -> ReturningInsert[Any]:
    """PostgreSQL: in one statement, sum the user's writes of the minute over every connection's row and, if
    below the limit, count one more on this connection's own row (its backend pid), which only this
    connection's transactions touch: concurrent writes of one user never wait for each other's counter lock
    (one shared row made them commit one at a time). RETURNING gives a row when the write is admitted.
    The sum sees what other connections committed before the statement, so writes of one user in flight
    together may pass the limit by at most their number."""
    used = (
        select(func.coalesce(func.sum(_TALLIES.c.writes), 0).label("n"))
        .where(_TALLIES.c.user_id == _USER, _TALLIES.c.minute == _MINUTE)
        .cte("used")
    )
    admitted = select(_USER, _MINUTE, func.pg_backend_pid(), literal(1)).where(
        used.c.n < bindparam(LIMIT, type_=Integer())
    )
    # Made at first use: a board on SQLite never loads PostgreSQL's dialect.
    from sqlalchemy.dialects import postgresql

    return (
        postgresql.insert(_TALLIES)
        .from_select(["user_id", "minute", "shard", "writes"], admitted)
        .on_conflict_do_update(index_elements=_KEY, set_=_ONE_MORE)
        .returning(_TALLIES.c.writes)
    )


def counted() -> CTE:
    """PostgreSQL: the counting as a CTE (``tally``) of one row when the write is admitted, none when the
    user reached the limit: an INSERT that selects its values FROM it is the write and its count in one
    statement (storage/posts.py ``insert_post``)."""
    return _count_on_own_row().cte("tally")


_USED_BY = (
    select(func.coalesce(func.sum(_ATTACHMENTS.c.size_bytes), 0))
    .select_from(_ATTACHMENTS.join(_POSTS, _POSTS.c.id == _ATTACHMENTS.c.post_id))
    .where(_POSTS.c.user_id == bindparam("user_id"))
)
# PostgreSQL: one user's uploads take turns (to different posts too), so that two cannot both fit the quota.
_STORAGE_TURN = text("SELECT pg_advisory_xact_lock(4242005, CAST(:user_id % 2147483647 AS integer))")


def count_write(conn: Connection, user_id: int, minute: int, limit: int) -> bool:
    """Count one write of the user in ``minute`` (seconds since the epoch // 60) unless that would make more
    than ``limit``; whether it was counted. The count is part of the caller's transaction: a write that fails
    rolls it back. On SQLite the count is exact; on PostgreSQL see ``_count_on_own_row``."""
    params = {COUNTER_USER: user_id, MINUTE: minute}
    if conn.dialect.name == "sqlite":
        return int(_COUNT_WRITE_SQLITE.first(conn, params).writes) <= limit
    return conn.execute(_count_on_own_row(), {**params, LIMIT: limit}).first() is not None


def delete_old_write_counts(conn: Connection, before_minute: int) -> int:
    """Forget the counters of minutes before ``before_minute``."""
    return int(conn.execute(delete(_TALLIES).where(_TALLIES.c.minute < before_minute)).rowcount)


def storage_used(conn: Connection, user_id: int) -> int:
    """Bytes held by the attachments of the user's posts (PostgreSQL: the user's uploads wait for each other
    from here until the transaction ends)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_STORAGE_TURN, {"user_id": user_id})
    return int(conn.execute(_USED_BY, {"user_id": user_id}).scalar_one())
