"""Queries of the board: they never commit; they return rows or raise domain errors.

Writes take an ORM Session and return ORM rows; reads take a Connection and return plain rows.

Grouped by resource (users, posts, comments) so that later resources add a section, not a rewrite.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from board_server.errors import AlreadyExists, CommentNotFound, PostNotFound, UserNotFound
from board_server.models import Comment, Post, User
from board_server.records import CommentRecord, PostRecord, UserRecord

# Reads are Core statements on a Connection: plain rows, no ORM identity map (half the CPU per call).
# Built once here so that only SQLAlchemy's cache lookup happens per call.
_USERS, _POSTS, _COMMENTS = User.__table__, Post.__table__, Comment.__table__
_READ_USER = select(_USERS).where(_USERS.c.id == bindparam("id"))
_READ_POST = select(_POSTS).where(_POSTS.c.id == bindparam("id"))
_READ_COMMENT = select(_COMMENTS).where(_COMMENTS.c.id == bindparam("id"))
_LIST_USERS = (
    select(_USERS).where(_USERS.c.id > bindparam("after")).order_by(_USERS.c.id).limit(bindparam("n"))
)
_LIST_ALL_POSTS = (
    select(_POSTS).where(_POSTS.c.id > bindparam("after")).order_by(_POSTS.c.id).limit(bindparam("n"))
)
_LIST_USER_POSTS = (
    select(_POSTS)
    .where(_POSTS.c.user_id == bindparam("user_id"), _POSTS.c.id > bindparam("after"))
    .order_by(_POSTS.c.id)
    .limit(bindparam("n"))
)
_LIST_COMMENTS = (
    select(_COMMENTS)
    .where(_COMMENTS.c.post_id == bindparam("post_id"), _COMMENTS.c.id > bindparam("after"))
    .order_by(_COMMENTS.c.id)
    .limit(bindparam("n"))
)
_POST_EXISTS = select(_POSTS.c.id).where(_POSTS.c.id == bindparam("id"))

EMAIL_INDEX = "ix_users_email_lower"


def _is_duplicate_email(error: IntegrityError) -> bool:
    text = str(error.orig).lower()
    # PostgreSQL names the index; SQLite names the indexed expression.
    return EMAIL_INDEX in text or ("unique" in text and "email" in text)


# --- users -------------------------------------------------------------------------------------------------


def add_user(session: Session, name: str, email: str, now: datetime) -> User:
    """Insert a user; raise AlreadyExists if the email is taken (ignoring case)."""
    user = User(name=name, email=email, create_time=now)
    session.add(user)
    flush_user(session, email)
    return user


def flush_user(session: Session, email: str) -> None:
    """Flush pending user changes; raise AlreadyExists when the unique email index rejects them."""
    try:
        session.flush()
    except IntegrityError as exc:
        if _is_duplicate_email(exc):
            raise AlreadyExists(f"a user with email {email!r} already exists") from exc
        raise


def get_user(session: Session, user_id: int, *, for_update: bool = False) -> User:
    """Return the user; raise UserNotFound."""
    user = session.get(User, user_id, with_for_update=for_update)
    if user is None:
        raise UserNotFound(user_id)
    return user


def require_user(session: Session, user_id: int) -> None:
    """Raise UserNotFound unless the user exists (share-locked on PostgreSQL against a racing delete)."""
    found = session.execute(select(User.id).where(User.id == user_id).with_for_update(read=True)).first()
    if found is None:
        raise UserNotFound(user_id)


def read_user(conn: Connection, user_id: int) -> UserRecord:
    """Return the user; raise UserNotFound."""
    row = conn.execute(_READ_USER, {"id": user_id}).first()
    if row is None:
        raise UserNotFound(user_id)
    return cast(UserRecord, row)


def list_users(conn: Connection, after_id: int, limit: int) -> Sequence[UserRecord]:
    """Return up to ``limit`` users with id > ``after_id``, ordered by id."""
    return cast(Sequence[UserRecord], conn.execute(_LIST_USERS, {"after": after_id, "n": limit}).all())


def delete_user(session: Session, user_id: int) -> None:
    """Delete the user with their posts and comments; raise UserNotFound."""
    # Explicit deletes (not only ON DELETE CASCADE) keep the cascade correct on a database without FK checks.
    post_ids = select(Post.id).where(Post.user_id == user_id).scalar_subquery()
    session.execute(delete(Comment).where((Comment.user_id == user_id) | Comment.post_id.in_(post_ids)))
    session.execute(delete(Post).where(Post.user_id == user_id))
    if session.execute(delete(User).where(User.id == user_id)).rowcount == 0:  # type: ignore[attr-defined]
        raise UserNotFound(user_id)


# --- posts -------------------------------------------------------------------------------------------------


def add_post(session: Session, user_id: int, title: str, content: str, now: datetime) -> Post:
    """Insert a post; raise UserNotFound if the author does not exist."""
    require_user(session, user_id)
    post = Post(user_id=user_id, title=title, content=content, create_time=now, update_time=now)
    session.add(post)
    session.flush()
    return post


def get_post(session: Session, post_id: int, *, for_update: bool = False) -> Post:
    """Return the post; raise PostNotFound."""
    post = session.get(Post, post_id, with_for_update=for_update)
    if post is None:
        raise PostNotFound(post_id)
    return post


def require_post(session: Session, post_id: int) -> None:
    """Raise PostNotFound unless the post exists (share-locked on PostgreSQL)."""
    found = session.execute(select(Post.id).where(Post.id == post_id).with_for_update(read=True)).first()
    if found is None:
        raise PostNotFound(post_id)


def read_post(conn: Connection, post_id: int) -> PostRecord:
    """Return the post; raise PostNotFound."""
    row = conn.execute(_READ_POST, {"id": post_id}).first()
    if row is None:
        raise PostNotFound(post_id)
    return cast(PostRecord, row)


def list_posts(conn: Connection, user_id: int, after_id: int, limit: int) -> Sequence[PostRecord]:
    """Return up to ``limit`` posts with id > ``after_id`` (of ``user_id`` unless 0), ordered by id."""
    if user_id:
        rows = conn.execute(_LIST_USER_POSTS, {"user_id": user_id, "after": after_id, "n": limit}).all()
    else:
        rows = conn.execute(_LIST_ALL_POSTS, {"after": after_id, "n": limit}).all()
    return cast(Sequence[PostRecord], rows)


def post_exists(conn: Connection, post_id: int) -> bool:
    return conn.execute(_POST_EXISTS, {"id": post_id}).first() is not None


def delete_post(session: Session, post_id: int) -> None:
    """Delete the post and its comments; raise PostNotFound."""
    session.execute(delete(Comment).where(Comment.post_id == post_id))
    if session.execute(delete(Post).where(Post.id == post_id)).rowcount == 0:  # type: ignore[attr-defined]
        raise PostNotFound(post_id)


# --- comments ----------------------------------------------------------------------------------------------


def add_comment(session: Session, post_id: int, user_id: int, content: str, now: datetime) -> Comment:
    """Insert a comment; raise PostNotFound / UserNotFound if either does not exist."""
    require_post(session, post_id)
    require_user(session, user_id)
    comment = Comment(post_id=post_id, user_id=user_id, content=content, create_time=now, update_time=now)
    session.add(comment)
    session.flush()
    return comment


def get_comment(session: Session, comment_id: int, *, for_update: bool = False) -> Comment:
    """Return the comment; raise CommentNotFound."""
    comment = session.get(Comment, comment_id, with_for_update=for_update)
    if comment is None:
        raise CommentNotFound(comment_id)
    return comment


def read_comment(conn: Connection, comment_id: int) -> CommentRecord:
    """Return the comment; raise CommentNotFound."""
    row = conn.execute(_READ_COMMENT, {"id": comment_id}).first()
    if row is None:
        raise CommentNotFound(comment_id)
    return cast(CommentRecord, row)


def list_comments(conn: Connection, post_id: int, after_id: int, limit: int) -> Sequence[CommentRecord]:
    """Return up to ``limit`` comments of the post with id > ``after_id``, ordered by id; PostNotFound."""
    rows = conn.execute(_LIST_COMMENTS, {"post_id": post_id, "after": after_id, "n": limit}).all()
    if not rows and not post_exists(conn, post_id):
        raise PostNotFound(post_id)
    return cast(Sequence[CommentRecord], rows)


def delete_comment(session: Session, comment_id: int) -> None:
    """Delete the comment; raise CommentNotFound."""
    if session.execute(delete(Comment).where(Comment.id == comment_id)).rowcount == 0:  # type: ignore[attr-defined]
        raise CommentNotFound(comment_id)
