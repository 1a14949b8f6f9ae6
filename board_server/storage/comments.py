"""Comment rows (see storage/users.py for how row modules work)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update

from board_server.core.errors import CommentNotFound, PostNotFound
from board_server.core.records import CommentRecord
from board_server.storage.lean import LeanQuery
from board_server.storage.posts import require_post
from board_server.storage.tables import Comment, Post
from board_server.storage.users import require_user

_POSTS, _COMMENTS = (cast(Table, model.__table__) for model in (Post, Comment))

_READ_COMMENT = LeanQuery(select(_COMMENTS).where(_COMMENTS.c.id == bindparam("id")))
_READ_COMMENT_FOR_UPDATE = select(_COMMENTS).where(_COMMENTS.c.id == bindparam("id")).with_for_update()
_LIST_COMMENTS = LeanQuery(
    select(_COMMENTS)
    .where(_COMMENTS.c.post_id == bindparam("post_id"), _COMMENTS.c.id > bindparam("after"))
    .order_by(_COMMENTS.c.id)
    .limit(bindparam("n"))
)
_POST_EXISTS = select(_POSTS.c.id).where(_POSTS.c.id == bindparam("id"))
_INSERT_COMMENT = insert(_COMMENTS).returning(*_COMMENTS.c)


def add_comment(conn: Connection, post_id: int, user_id: int, content: str, now: datetime) -> CommentRecord:
    """Insert a comment; raise PostNotFound / UserNotFound if either does not exist."""
    require_post(conn, post_id)
    require_user(conn, user_id)
    values = {
        "post_id": post_id,
        "user_id": user_id,
        "content": content,
        "create_time": now,
        "update_time": now,
    }
    return cast(CommentRecord, conn.execute(_INSERT_COMMENT, values).one())


def read_comment(conn: Connection, comment_id: int, *, for_update: bool = False) -> CommentRecord:
    """Return the comment (row-locked on PostgreSQL with ``for_update``); raise CommentNotFound."""
    params = {"id": comment_id}
    row = (
        conn.execute(_READ_COMMENT_FOR_UPDATE, params).first()
        if for_update
        else _READ_COMMENT.first(conn, params)
    )
    if row is None:
        raise CommentNotFound(comment_id)
    return cast(CommentRecord, row)


def list_comments(conn: Connection, post_id: int, after_id: int, limit: int) -> Sequence[CommentRecord]:
    """Return up to ``limit`` comments of the post with id > ``after_id``, ordered by id; PostNotFound."""
    rows = _LIST_COMMENTS.all(conn, {"post_id": post_id, "after": after_id, "n": limit})
    if not rows and conn.execute(_POST_EXISTS, {"id": post_id}).first() is None:
        raise PostNotFound(post_id)
    return cast(Sequence[CommentRecord], rows)


def update_comment(conn: Connection, comment_id: int, values: Mapping[str, Any]) -> CommentRecord:
    """Set ``values`` on the comment; raise CommentNotFound."""
    statement = update(_COMMENTS).where(_COMMENTS.c.id == comment_id).values(**values).returning(*_COMMENTS.c)
    row = conn.execute(statement).first()
    if row is None:
        raise CommentNotFound(comment_id)
    return cast(CommentRecord, row)


def delete_comment(conn: Connection, comment_id: int) -> None:
    """Delete the comment; raise CommentNotFound."""
    if conn.execute(delete(_COMMENTS).where(_COMMENTS.c.id == comment_id)).rowcount == 0:
        raise CommentNotFound(comment_id)
