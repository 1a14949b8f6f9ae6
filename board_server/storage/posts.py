"""Post rows (see storage/users.py for how row modules work)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from board_server.core.errors import PostNotFound, UserNotFound
from board_server.core.records import PostRecord
from board_server.storage import quotas
from board_server.storage.engine import Database
from board_server.storage.lean import LeanQuery
from board_server.storage.tables import Comment, Post

_POSTS, _COMMENTS = (cast(Table, model.__table__) for model in (Post, Comment))


_READ_POST = LeanQuery(select(_POSTS).where(_POSTS.c.id == bindparam("id")))
_READ_POST_FOR_UPDATE = select(_POSTS).where(_POSTS.c.id == bindparam("id")).with_for_update()
_LOCK_POST = select(_POSTS.c.id).where(_POSTS.c.id == bindparam("id")).with_for_update(read=True)
_LIST_ALL_POSTS = LeanQuery(
    select(_POSTS).where(_POSTS.c.id > bindparam("after")).order_by(_POSTS.c.id).limit(bindparam("n"))
)
_LIST_USER_POSTS = LeanQuery(
    select(_POSTS)
    .where(_POSTS.c.user_id == bindparam("user_id"), _POSTS.c.id > bindparam("after"))
    .order_by(_POSTS.c.id)
    .limit(bindparam("n"))
)
_NEW_POST = {c.name: bindparam(c.name, type_=c.type) for c in _POSTS.c if c.name != "id"}
_INSERT_POST = LeanQuery(insert(_POSTS).values(_NEW_POST).returning(*_POSTS.c))


@functools.cache
def _insert_counted_post() -> LeanQuery:
    """PostgreSQL: the INSERT and its count against the writer's quota in one statement; no row when refused.
    Made at first use, in PostgreSQL's dialect."""
    return LeanQuery(
        insert(_POSTS)
        .from_select(list(_NEW_POST), select(*_NEW_POST.values()).select_from(quotas.counted()))
        .returning(*_POSTS.c)
    )


def add_post(conn: Connection, user_id: int, title: str, content: str, now: datetime) -> PostRecord:
    """Insert a post; raise UserNotFound if the author does not exist."""
    with _author_must_exist(user_id):
        return cast(PostRecord, _INSERT_POST.first(conn, _post_values(user_id, title, content, now)))


async def insert_post(
    db: Database, user_id: int, title: str, content: str, now: datetime, *, counted: dict[str, int] | None
) -> PostRecord | None:
    """PostgreSQL: ``add_post`` as a write of its own, one statement (``Database.write_first``), which with
    ``counted`` (domain/quotas.py ``Quotas.counter``) also counts it against its writer's quota: None when
    the quota refused it."""
    values = _post_values(user_id, title, content, now)
    with _author_must_exist(user_id):
        if counted is None:
            row = await db.write_first(_INSERT_POST, values)
        else:
            row = await db.write_first(_insert_counted_post(), {**values, **counted})
    return cast(PostRecord | None, row)


def _post_values(user_id: int, title: str, content: str, now: datetime) -> dict[str, Any]:
    return {"user_id": user_id, "title": title, "content": content, "create_time": now, "update_time": now}


@contextmanager
def _author_must_exist(user_id: int) -> Iterator[None]:
    """The foreign key is the existence check (a post's only one, so a violation names the author): one
    statement instead of two on the hottest write. Raises UserNotFound."""
    try:
        yield
    except (IntegrityError, sqlite3.IntegrityError) as exc:
        if "foreign key" in str(getattr(exc, "orig", exc)).lower():
            raise UserNotFound(user_id) from exc
        raise


def read_post(conn: Connection, post_id: int, *, for_update: bool = False) -> PostRecord:
    """Return the post (row-locked on PostgreSQL with ``for_update``); raise PostNotFound."""
    params = {"id": post_id}
    row = (
        conn.execute(_READ_POST_FOR_UPDATE, params).first() if for_update else _READ_POST.first(conn, params)
    )
    if row is None:
        raise PostNotFound(post_id)
    return cast(PostRecord, row)


async def fetch_post(db: Database, post_id: int) -> PostRecord:
    """``read_post`` as a read of its own (``Database.read_first``); raise PostNotFound."""
    row = await db.read_first(_READ_POST, {"id": post_id})
    if row is None:
        raise PostNotFound(post_id)
    return cast(PostRecord, row)


def require_post(conn: Connection, post_id: int) -> None:
    """Raise PostNotFound unless the post exists (share-locked on PostgreSQL until commit)."""
    if conn.execute(_LOCK_POST, {"id": post_id}).first() is None:
        raise PostNotFound(post_id)


async def list_posts(db: Database, user_id: int, after_id: int, limit: int) -> Sequence[PostRecord]:
    """Up to ``limit`` posts with id > ``after_id`` (of ``user_id`` unless 0), ordered by id: a read of its
    own (``Database.read_all``)."""
    if user_id:
        rows = await db.read_all(_LIST_USER_POSTS, {"user_id": user_id, "after": after_id, "n": limit})
    else:
        rows = await db.read_all(_LIST_ALL_POSTS, {"after": after_id, "n": limit})
    return cast(Sequence[PostRecord], rows)


def update_post(conn: Connection, post_id: int, values: Mapping[str, Any]) -> PostRecord:
    """Set ``values`` on the post; raise PostNotFound."""
    statement = update(_POSTS).where(_POSTS.c.id == post_id).values(**values).returning(*_POSTS.c)
    row = conn.execute(statement).first()
    if row is None:
        raise PostNotFound(post_id)
    return cast(PostRecord, row)


def delete_post(conn: Connection, post_id: int) -> None:
    """Delete the post and its comments; raise PostNotFound."""
    conn.execute(delete(_COMMENTS).where(_COMMENTS.c.post_id == post_id))
    if conn.execute(delete(_POSTS).where(_POSTS.c.id == post_id)).rowcount == 0:
        raise PostNotFound(post_id)
