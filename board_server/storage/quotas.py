"""What a user's quotas count: writes per minute (one counter row per user and minute) and the bytes the
attachments of the user's posts hold. Like every row module (storage/users.py): functions take a Connection
inside the caller's transaction and never commit."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite

from board_server.storage.engine import Database
from board_server.storage.lean import LeanQuery
from board_server.storage.tables import Attachment, Post, WriteCount

_COUNTS, _ATTACHMENTS, _POSTS = (cast(Table, m.__table__) for m in (WriteCount, Attachment, Post))


# An upsert on the writer's own transaction: one statement, no read before it (the hottest writes pay it);
# the same statement in each dialect's spelling.
_FIRST = {"user_id": bindparam("user_id"), "minute": bindparam("minute"), "writes": 1}
_KEY, _ONE_MORE = [_COUNTS.c.user_id, _COUNTS.c.minute], {"writes": _COUNTS.c.writes + 1}
_COUNT_WRITE_SQLITE = LeanQuery(
    sqlite.insert(_COUNTS)
    .values(_FIRST)
    .on_conflict_do_update(index_elements=_KEY, set_=_ONE_MORE)
    .returning(_COUNTS.c.writes)
)
_COUNT_WRITE_POSTGRES = (
    postgresql.insert(_COUNTS)
    .values(_FIRST)
    .on_conflict_do_update(index_elements=_KEY, set_=_ONE_MORE)
    .returning(_COUNTS.c.writes)
)
# PostgreSQL, before the write's own transaction: one statement in a transaction of its own that commits
# without waiting for the disk (a counter lost in a crash costs nothing), so one user's writes do not queue
# for the counter row's lock behind each other's flush; it counts only up to the limit (no row: refused).
# Run on the driver itself (psycopg's placeholders): it is on every write's path.
_ADMIT_WRITE_POSTGRES = f"""
WITH unsynced AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO {_COUNTS.name} (user_id, minute, writes)
SELECT %(user_id)s, %(minute)s, 1 FROM unsynced
ON CONFLICT (user_id, minute) DO UPDATE SET writes = {_COUNTS.name}.writes + 1
WHERE {_COUNTS.name}.writes < %(limit)s
RETURNING writes
"""  # noqa: S608 - the table's own name, no input
_USED_BY = (
    select(func.coalesce(func.sum(_ATTACHMENTS.c.size_bytes), 0))
    .select_from(_ATTACHMENTS.join(_POSTS, _POSTS.c.id == _ATTACHMENTS.c.post_id))
    .where(_POSTS.c.user_id == bindparam("user_id"))
)
# PostgreSQL: one user's uploads take turns (to different posts too), so that two cannot both fit the quota.
_STORAGE_TURN = text("SELECT pg_advisory_xact_lock(4242005, CAST(:user_id % 2147483647 AS integer))")


def count_write(conn: Connection, user_id: int, minute: int) -> int:
    """Count one write of the user in ``minute`` (seconds since the epoch // 60); the user's writes in that
    minute, this one included."""
    params = {"user_id": user_id, "minute": minute}
    if conn.dialect.name == "sqlite":
        return int(_COUNT_WRITE_SQLITE.first(conn, params).writes)
    return int(conn.execute(_COUNT_WRITE_POSTGRES, params).scalar_one())


async def admit_write(db: Database, user_id: int, minute: int, limit: int) -> bool:
    """PostgreSQL, as a statement of its own (in autocommit, on a loop connection's cursor): count one write
    of the user in ``minute`` unless the user made ``limit`` already; whether it was counted."""
    assert db.loop_connections is not None, "writes are counted apart on PostgreSQL only"
    params = {"user_id": user_id, "minute": minute, "limit": limit}

    async def admit(cursor: Any) -> bool:
        await cursor.execute(_ADMIT_WRITE_POSTGRES, params)
        return await cursor.fetchone() is not None

    return await db.loop_connections.on_cursor(admit)


def delete_old_write_counts(conn: Connection, before_minute: int) -> int:
    """Forget the counters of minutes before ``before_minute``."""
    return int(conn.execute(delete(_COUNTS).where(_COUNTS.c.minute < before_minute)).rowcount)


def storage_used(conn: Connection, user_id: int) -> int:
    """Bytes held by the attachments of the user's posts (PostgreSQL: the user's uploads wait for each other
    from here until the transaction ends)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_STORAGE_TURN, {"user_id": user_id})
    return int(conn.execute(_USED_BY, {"user_id": user_id}).scalar_one())
