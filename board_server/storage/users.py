"""User rows (a user's sign-in material is in storage/sessions.py). Like every row module here: functions take
a Connection inside the caller's transaction, never commit, and return read-only records or raise domain
errors; statements are built once at import so that a call pays only SQLAlchemy's cache lookup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from board_server.core.errors import AlreadyExists, UserNotFound, excerpt
from board_server.core.records import UserRecord
from board_server.storage.lean import LeanQuery
from board_server.storage.notifications import notify_sessions_changed
from board_server.storage.tables import Comment, Post, User

_USERS, _POSTS, _COMMENTS = (cast(Table, model.__table__) for model in (User, Post, Comment))
EMAIL_INDEX = "ix_users_email_canonical"


def _is_duplicate_email(error: IntegrityError) -> bool:
    text = str(error.orig).lower()
    # PostgreSQL names the index; SQLite names the indexed column.
    return EMAIL_INDEX in text or ("unique" in text and "email_canonical" in text)


# Every column but the password hash, which never leaves the accounts code, and the lookup key.
_USER_COLUMNS = [c for c in _USERS.c if c.name not in ("password_hash", "email_canonical")]
_READ_USER = LeanQuery(select(*_USER_COLUMNS).where(_USERS.c.id == bindparam("id")))
_READ_USER_FOR_UPDATE = select(*_USER_COLUMNS).where(_USERS.c.id == bindparam("id")).with_for_update()
# FOR SHARE on PostgreSQL: a post or comment being added keeps its author from being deleted under it.
_LOCK_USER = select(_USERS.c.id).where(_USERS.c.id == bindparam("id")).with_for_update(read=True)
_LIST_USERS = LeanQuery(
    select(*_USER_COLUMNS).where(_USERS.c.id > bindparam("after")).order_by(_USERS.c.id).limit(bindparam("n"))
)
_INSERT_USER = insert(_USERS).returning(*_USER_COLUMNS)


def add_user(
    conn: Connection,
    *,
    name: str,
    email: str,
    email_canonical: str,
    now: datetime,
    password_hash: str | None = None,
) -> UserRecord:
    """Insert a user; raise AlreadyExists if another user has the same canonical email."""
    values = {
        "name": name,
        "email": email,
        "email_canonical": email_canonical,
        "create_time": now,
        "password_hash": password_hash,
    }
    try:
        row = conn.execute(_INSERT_USER, values).one()
    except IntegrityError as exc:
        if _is_duplicate_email(exc):
            raise AlreadyExists(f"a user with email {excerpt(email)} already exists") from exc
        raise
    return cast(UserRecord, row)


def read_user(conn: Connection, user_id: int, *, for_update: bool = False) -> UserRecord:
    """Return the user (row-locked on PostgreSQL with ``for_update``); raise UserNotFound."""
    params = {"id": user_id}
    row = (
        conn.execute(_READ_USER_FOR_UPDATE, params).first() if for_update else _READ_USER.first(conn, params)
    )
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
    """Set ``values`` on the user (a new ``email`` comes with its ``email_canonical``) and bump its version
    (its etag); raise UserNotFound, AlreadyExists (email taken)."""
    statement = (
        update(_USERS)
        .where(_USERS.c.id == user_id)
        .values(**values, version=_USERS.c.version + 1)
        .returning(*_USER_COLUMNS)
    )
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
    notify_sessions_changed(conn, [user_id])  # their tokens went with them
