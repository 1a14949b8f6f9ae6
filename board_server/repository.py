"""Queries of the board: each function takes a Connection inside the caller's transaction, never commits,
and returns rows (read-only records) or raises domain errors.

Core statements on the ORM's tables rather than ORM sessions: the unit of work and identity map cost more
CPU than the queries themselves (measured by bench/board.py), and every use case here is one or two
statements. Statements are built once at import (no I/O) so that a call only pays SQLAlchemy's cache lookup.

Grouped by resource (users, posts, comments) so that later resources add a section, not a rewrite.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from board_server.database import LeanQuery
from board_server.errors import AlreadyExists, CommentNotFound, PostNotFound, UserNotFound, excerpt
from board_server.models import Comment, DeploymentSecret, Post, User
from board_server.records import CommentRecord, PostRecord, UserRecord

_USERS, _POSTS, _COMMENTS = (cast(Table, model.__table__) for model in (User, Post, Comment))
EMAIL_INDEX = "ix_users_email_lower"


def _is_duplicate_email(error: IntegrityError) -> bool:
    text = str(error.orig).lower()
    # PostgreSQL names the index; SQLite names the indexed expression.
    return EMAIL_INDEX in text or ("unique" in text and "email" in text)


def _is_foreign_key_violation(error: IntegrityError) -> bool:
    return "foreign key" in str(error.orig).lower()


# --- users ------------------------------------------------------------------------------------------------

# Every column but the password hash, which never leaves the accounts code.
_USER_COLUMNS = [c for c in _USERS.c if c.name != "password_hash"]
_READ_USER = LeanQuery(select(*_USER_COLUMNS).where(_USERS.c.id == bindparam("id")))
# FOR SHARE on PostgreSQL: a post or comment being added keeps its author from being deleted under it.
_LOCK_USER = select(_USERS.c.id).where(_USERS.c.id == bindparam("id")).with_for_update(read=True)
_LIST_USERS = LeanQuery(
    select(*_USER_COLUMNS).where(_USERS.c.id > bindparam("after")).order_by(_USERS.c.id).limit(bindparam("n"))
)
_INSERT_USER = insert(_USERS).returning(*_USER_COLUMNS)


def add_user(
    conn: Connection, name: str, email: str, now: datetime, password_hash: str | None = None
) -> UserRecord:
    """Insert a user; raise AlreadyExists if the email is taken (ignoring case)."""
    values = {"name": name, "email": email, "create_time": now, "password_hash": password_hash}
    try:
        row = conn.execute(_INSERT_USER, values).one()
    except IntegrityError as exc:
        if _is_duplicate_email(exc):
            raise AlreadyExists(f"a user with email {excerpt(email)} already exists") from exc
        raise
    return cast(UserRecord, row)


def read_user(conn: Connection, user_id: int) -> UserRecord:
    """Return the user; raise UserNotFound."""
    row = _READ_USER.first(conn, {"id": user_id})
    if row is None:
        raise UserNotFound(user_id)
    return cast(UserRecord, row)


def require_user(conn: Connection, user_id: int) -> None:
    """Raise UserNotFound unless the user exists (share-locked on PostgreSQL until commit)."""
    if conn.execute(_LOCK_USER, {"id": user_id}).first() is None:
        raise UserNotFound(user_id)


def list_users(conn: Connection, after_id: int, limit: int) -> Sequence[UserRecord]:
    """Return up to ``limit`` users with id > ``after_id``, ordered by id."""
    return cast(Sequence[UserRecord], _LIST_USERS.all(conn, {"after": after_id, "n": limit}))


def update_user(conn: Connection, user_id: int, values: Mapping[str, Any]) -> UserRecord:
    """Set ``values`` on the user; raise UserNotFound, AlreadyExists (email taken)."""
    statement = update(_USERS).where(_USERS.c.id == user_id).values(**values).returning(*_USER_COLUMNS)
    try:
        row = conn.execute(statement).first()
    except IntegrityError as exc:
        if _is_duplicate_email(exc):
            raise AlreadyExists(
                f"a user with email {excerpt(str(values.get('email')))} already exists"
            ) from exc
        raise
    if row is None:
        raise UserNotFound(user_id)
    return cast(UserRecord, row)


def delete_user(conn: Connection, user_id: int) -> None:
    """Delete the user with their posts and comments; raise UserNotFound."""
    # Explicit deletes (besides ON DELETE CASCADE) keep the cascade right even where FK checks are off.
    post_ids = select(_POSTS.c.id).where(_POSTS.c.user_id == user_id).scalar_subquery()
    conn.execute(
        delete(_COMMENTS).where((_COMMENTS.c.user_id == user_id) | _COMMENTS.c.post_id.in_(post_ids))
    )
    conn.execute(delete(_POSTS).where(_POSTS.c.user_id == user_id))
    if conn.execute(delete(_USERS).where(_USERS.c.id == user_id)).rowcount == 0:
        raise UserNotFound(user_id)


# --- posts ------------------------------------------------------------------------------------------------

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
_INSERT_POST = LeanQuery(
    insert(_POSTS)
    .values({c.name: bindparam(c.name) for c in _POSTS.c if c.name != "id"})
    .returning(*_POSTS.c)
)


def add_post(conn: Connection, user_id: int, title: str, content: str, now: datetime) -> PostRecord:
    """Insert a post; raise UserNotFound if the author does not exist."""
    values = {"user_id": user_id, "title": title, "content": content, "create_time": now, "update_time": now}
    try:
        # The foreign key is the existence check (its only one, so a violation names the author): one
        # statement instead of two on the hottest write.
        return cast(PostRecord, _INSERT_POST.first(conn, values))
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


def require_post(conn: Connection, post_id: int) -> None:
    """Raise PostNotFound unless the post exists (share-locked on PostgreSQL until commit)."""
    if conn.execute(_LOCK_POST, {"id": post_id}).first() is None:
        raise PostNotFound(post_id)


def list_posts(conn: Connection, user_id: int, after_id: int, limit: int) -> Sequence[PostRecord]:
    """Return up to ``limit`` posts with id > ``after_id`` (of ``user_id`` unless 0), ordered by id."""
    if user_id:
        rows = _LIST_USER_POSTS.all(conn, {"user_id": user_id, "after": after_id, "n": limit})
    else:
        rows = _LIST_ALL_POSTS.all(conn, {"after": after_id, "n": limit})
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


# --- comments ---------------------------------------------------------------------------------------------

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


# --- deployment secrets -----------------------------------------------------------------------------------

_SECRETS = cast(Table, DeploymentSecret.__table__)
_READ_SECRET = select(_SECRETS.c.value).where(_SECRETS.c.name == bindparam("name"))


def read_secret(conn: Connection, name: str) -> bytes | None:
    row = conn.execute(_READ_SECRET, {"name": name}).first()
    return None if row is None else bytes(row.value)


def add_secret(conn: Connection, name: str, value: bytes, now: datetime) -> None:
    """Insert a secret; raise IntegrityError when another server created it first."""
    conn.execute(insert(_SECRETS), {"name": name, "value": value, "create_time": now})
