"""Queries of the board: functions take a Session, never commit, return ORM rows or raise domain errors.

Grouped by resource (users, posts, comments) so that later resources add a section, not a rewrite.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from board_server.errors import AlreadyExists, CommentNotFound, PostNotFound, UserNotFound
from board_server.models import Comment, Post, User

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


def list_users(session: Session, after_id: int, limit: int) -> Sequence[User]:
    """Return up to ``limit`` users with id > ``after_id``, ordered by id."""
    return session.scalars(select(User).where(User.id > after_id).order_by(User.id).limit(limit)).all()


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


def list_posts(session: Session, user_id: int, after_id: int, limit: int) -> Sequence[Post]:
    """Return up to ``limit`` posts with id > ``after_id`` (of ``user_id`` unless 0), ordered by id."""
    query = select(Post).where(Post.id > after_id)
    if user_id:
        query = query.where(Post.user_id == user_id)
    return session.scalars(query.order_by(Post.id).limit(limit)).all()


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


def list_comments(session: Session, post_id: int, after_id: int, limit: int) -> Sequence[Comment]:
    """Return up to ``limit`` comments of the post with id > ``after_id``, ordered by id."""
    query = select(Comment).where(Comment.post_id == post_id, Comment.id > after_id)
    return session.scalars(query.order_by(Comment.id).limit(limit)).all()


def delete_comment(session: Session, comment_id: int) -> None:
    """Delete the comment; raise CommentNotFound."""
    if session.execute(delete(Comment).where(Comment.id == comment_id)).rowcount == 0:  # type: ignore[attr-defined]
        raise CommentNotFound(comment_id)
