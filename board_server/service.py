"""Use cases of the board: one transaction each, validation, and the audit log.

Every create/update/delete is written to the audit logger ``board.audit`` at INFO after its commit, every
not-found at WARNING, with this module's file and the use case's function name in the record.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, ParamSpec, TypeVar

from sqlalchemy import Connection

from board_server import repository
from board_server.database import Database
from board_server.errors import FieldViolation, InvalidArgument, NotFound
from board_server.models import (
    COMMENT_CONTENT_MAX,
    EMAIL_MAX,
    NAME_MAX,
    POST_CONTENT_MAX,
    TITLE_MAX,
)
from board_server.records import CommentRecord, PostRecord, UserRecord

audit = logging.getLogger("board.audit")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
EMAIL_PATTERN = re.compile(r"[^@\s\x00]+@[^@\s.\x00]+(\.[^@\s.\x00]+)+")
IMMUTABLE_PATHS = frozenset({"id", "create_time", "update_time", "user_id", "post_id"})

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: the rows and the token of the next page ("" on the last page)."""

    items: Sequence[T]
    next_page_token: str


def _now() -> datetime:
    return datetime.now(UTC)


def _later_than(previous: datetime) -> datetime:
    """Now, but strictly after ``previous`` so that update_time always advances."""
    return max(_now(), previous + timedelta(microseconds=1))


def audit_not_found(method: Callable[P, T]) -> Callable[P, T]:
    """Write a WARNING audit line (naming ``method``) for every NotFound that ``method`` raises."""
    code = method.__code__

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except NotFound as exc:
            if audit.isEnabledFor(logging.WARNING):
                record = audit.makeRecord(
                    audit.name, logging.WARNING, code.co_filename, code.co_firstlineno, str(exc), (), None,
                    func=method.__name__,
                )  # fmt: skip
                audit.handle(record)
            raise

    return wrapper


# --- validation --------------------------------------------------------------------------------------------


class Violations:
    """Collects field violations; ``raise_if_any`` raises one InvalidArgument naming all of them."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def text(self, field: str, value: str, max_len: int) -> None:
        if not value.strip():
            self.add(field, "must not be blank")
        elif len(value) > max_len:
            self.add(field, f"must be at most {max_len} characters (got {len(value)})")
        elif "\x00" in value:  # PostgreSQL text cannot hold NUL
            self.add(field, "must not contain NUL characters")

    def email(self, field: str, value: str) -> None:
        if len(value) > EMAIL_MAX:
            self.add(field, f"must be at most {EMAIL_MAX} characters (got {len(value)})")
        elif not EMAIL_PATTERN.fullmatch(value):
            self.add(field, "must be an email address like name@example.org")

    def row_id(self, field: str, value: int) -> None:
        if value <= 0:
            self.add(field, "must be a positive id")

    def mask(self, field: str, paths: Sequence[str], mutable: frozenset[str]) -> list[str]:
        """Check an update mask; return its paths without duplicates."""
        if not paths:
            self.add(field, "must name at least one field")
        for path in paths:
            if path in IMMUTABLE_PATHS:
                self.add(field, f"{path!r} cannot be changed")
            elif path not in mutable:
                self.add(field, f"unknown field {path!r}; allowed: {', '.join(sorted(mutable))}")
        return list(dict.fromkeys(paths))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def check_id(field: str, value: int) -> None:
    """Raise InvalidArgument unless ``value`` is a positive id."""
    violations = Violations()
    violations.row_id(field, value)
    violations.raise_if_any()


# --- page tokens -------------------------------------------------------------------------------------------

_TOKEN_VERSION = 1
_TOKEN_KEY = b"board.v1 page token"
_DIGEST_BYTES = 8


@dataclass(frozen=True)
class PageRequest:
    """A validated list request: how many rows, and the id after which the page starts."""

    size: int
    after_id: int


def encode_page_token(resource: str, query: int, after_id: int) -> str:
    """Opaque token for the page after ``after_id`` of the list ``resource`` filtered by ``query``."""
    payload = json.dumps(
        {"v": _TOKEN_VERSION, "r": resource, "q": query, "a": after_id}, separators=(",", ":")
    )
    data = payload.encode()
    digest = hashlib.blake2b(data, key=_TOKEN_KEY, digest_size=_DIGEST_BYTES).digest()
    return base64.urlsafe_b64encode(digest + data).decode().rstrip("=")


def page_request(resource: str, query: int, page_size: int, page_token: str) -> PageRequest:
    """Validate page_size/page_token of a list ``resource`` with filter ``query``; raise InvalidArgument."""
    violations = Violations()
    if page_size < 0:
        violations.add("page_size", "must not be negative")
    after_id = 0
    if page_token:
        decoded = _decode_page_token(resource, query, page_token)
        if decoded is None:
            violations.add(
                "page_token", "is not a page token of this list; pass the next_page_token received"
            )
        else:
            after_id = decoded
    violations.raise_if_any()
    size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
    return PageRequest(size=size, after_id=after_id)


def _decode_page_token(resource: str, query: int, token: str) -> int | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    digest, data = raw[:_DIGEST_BYTES], raw[_DIGEST_BYTES:]
    expected = hashlib.blake2b(data, key=_TOKEN_KEY, digest_size=_DIGEST_BYTES).digest()
    if len(digest) != _DIGEST_BYTES or not hmac.compare_digest(digest, expected):
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict) or payload.get("v") != _TOKEN_VERSION:
        return None
    after = payload.get("a")
    if payload.get("r") != resource or payload.get("q") != query or not isinstance(after, int) or after < 0:
        return None
    return after


def _page(
    resource: str, query: int, rows: Sequence[T], request: PageRequest, last_id: Callable[[T], int]
) -> Page[T]:
    """Cut the ``size + 1`` rows fetched into a page; the extra row only says that another page exists."""
    if len(rows) > request.size:
        items = rows[: request.size]
        return Page(items, encode_page_token(resource, query, last_id(items[-1])))
    return Page(rows, "")


# --- users -------------------------------------------------------------------------------------------------


class UserService:
    """Create, read, list, update and delete users."""

    MUTABLE = frozenset({"name", "email"})

    def __init__(self, db: Database) -> None:
        self._db = db

    def create_user(self, name: str, email: str) -> UserRecord:
        """Create a user; raise InvalidArgument, AlreadyExists."""
        violations = Violations()
        violations.text("name", name, NAME_MAX)
        violations.email("email", email)
        violations.raise_if_any()
        user = self._db.write(lambda conn: repository.add_user(conn, name, email, _now()))
        audit.info("User created; id=%d", user.id)
        return user

    @audit_not_found
    def get_user(self, user_id: int) -> UserRecord:
        """Return the user; raise InvalidArgument, UserNotFound."""
        check_id("id", user_id)
        with self._db.read() as conn:
            return repository.read_user(conn, user_id)

    def list_users(self, page_size: int, page_token: str) -> Page[UserRecord]:
        """One page of users ordered by id; raise InvalidArgument on a bad size or token."""
        request = page_request("users", 0, page_size, page_token)
        with self._db.read() as conn:
            rows = repository.list_users(conn, request.after_id, request.size + 1)
        return _page("users", 0, rows, request, lambda u: u.id)

    @audit_not_found
    def update_user(self, user_id: int, paths: Sequence[str], name: str, email: str) -> UserRecord:
        """Change the masked fields (name, email); raise InvalidArgument, UserNotFound, AlreadyExists."""
        violations = Violations()
        violations.row_id("user.id", user_id)
        paths = violations.mask("update_mask", paths, self.MUTABLE)
        if "name" in paths:
            violations.text("user.name", name, NAME_MAX)
        if "email" in paths:
            violations.email("user.email", email)
        violations.raise_if_any()

        values = {path: {"name": name, "email": email}[path] for path in paths}
        user = self._db.write(lambda conn: repository.update_user(conn, user_id, values))
        audit.info("User updated; id=%d; fields=%s", user.id, ",".join(paths))
        return user

    @audit_not_found
    def delete_user(self, user_id: int) -> None:
        """Delete the user with their posts and comments, atomically; raise InvalidArgument, UserNotFound."""
        check_id("id", user_id)
        self._db.write(lambda conn: repository.delete_user(conn, user_id))
        audit.info("User deleted; id=%d", user_id)


# --- posts -------------------------------------------------------------------------------------------------


class PostService:
    """Create, read, list, update and delete posts."""

    MUTABLE = frozenset({"title", "content"})

    def __init__(self, db: Database) -> None:
        self._db = db

    @audit_not_found
    def create_post(self, user_id: int, title: str, content: str) -> PostRecord:
        """Create a post; raise InvalidArgument, UserNotFound."""
        violations = Violations()
        violations.row_id("user_id", user_id)
        violations.text("title", title, TITLE_MAX)
        violations.text("content", content, POST_CONTENT_MAX)
        violations.raise_if_any()
        post = self._db.write(lambda conn: repository.add_post(conn, user_id, title, content, _now()))
        audit.info("Post created; id=%d; user_id=%d", post.id, user_id)
        return post

    @audit_not_found
    def get_post(self, post_id: int) -> PostRecord:
        """Return the post; raise InvalidArgument, PostNotFound."""
        check_id("id", post_id)
        with self._db.read() as conn:
            return repository.read_post(conn, post_id)

    def list_posts(self, user_id: int, page_size: int, page_token: str) -> Page[PostRecord]:
        """One page of posts ordered by id, of one user unless ``user_id`` is 0; raise InvalidArgument."""
        if user_id < 0:
            raise InvalidArgument([FieldViolation("user_id", "must be a positive id, or 0 for every user")])
        request = page_request("posts", user_id, page_size, page_token)
        with self._db.read() as conn:
            rows = repository.list_posts(conn, user_id, request.after_id, request.size + 1)
        return _page("posts", user_id, rows, request, lambda p: p.id)

    @audit_not_found
    def update_post(self, post_id: int, paths: Sequence[str], title: str, content: str) -> PostRecord:
        """Change the masked fields (title, content); raise InvalidArgument, PostNotFound."""
        violations = Violations()
        violations.row_id("post.id", post_id)
        paths = violations.mask("update_mask", paths, self.MUTABLE)
        if "title" in paths:
            violations.text("post.title", title, TITLE_MAX)
        if "content" in paths:
            violations.text("post.content", content, POST_CONTENT_MAX)
        violations.raise_if_any()

        values: dict[str, object] = {path: {"title": title, "content": content}[path] for path in paths}

        def change(conn: Connection) -> PostRecord:
            current = repository.read_post(conn, post_id, for_update=True)
            values["update_time"] = _later_than(current.update_time)
            return repository.update_post(conn, post_id, values)

        post = self._db.write(change)
        audit.info("Post updated; id=%d; fields=%s", post.id, ",".join(paths))
        return post

    @audit_not_found
    def delete_post(self, post_id: int) -> None:
        """Delete the post with its comments, atomically; raise InvalidArgument, PostNotFound."""
        check_id("id", post_id)
        self._db.write(lambda conn: repository.delete_post(conn, post_id))
        audit.info("Post deleted; id=%d", post_id)


# --- comments ----------------------------------------------------------------------------------------------


class CommentService:
    """Create, read, list, update and delete comments."""

    MUTABLE = frozenset({"content"})

    def __init__(self, db: Database) -> None:
        self._db = db

    @audit_not_found
    def create_comment(self, post_id: int, user_id: int, content: str) -> CommentRecord:
        """Create a comment; raise InvalidArgument, PostNotFound, UserNotFound."""
        violations = Violations()
        violations.row_id("post_id", post_id)
        violations.row_id("user_id", user_id)
        violations.text("content", content, COMMENT_CONTENT_MAX)
        violations.raise_if_any()
        comment = self._db.write(lambda conn: repository.add_comment(conn, post_id, user_id, content, _now()))
        audit.info("Comment created; id=%d; post_id=%d; user_id=%d", comment.id, post_id, user_id)
        return comment

    @audit_not_found
    def get_comment(self, comment_id: int) -> CommentRecord:
        """Return the comment; raise InvalidArgument, CommentNotFound."""
        check_id("id", comment_id)
        with self._db.read() as conn:
            return repository.read_comment(conn, comment_id)

    @audit_not_found
    def list_comments(self, post_id: int, page_size: int, page_token: str) -> Page[CommentRecord]:
        """One page of the post's comments ordered by id; raise InvalidArgument, PostNotFound."""
        check_id("post_id", post_id)
        request = page_request("comments", post_id, page_size, page_token)
        with self._db.read() as conn:
            rows = repository.list_comments(conn, post_id, request.after_id, request.size + 1)
        return _page("comments", post_id, rows, request, lambda c: c.id)

    @audit_not_found
    def update_comment(self, comment_id: int, paths: Sequence[str], content: str) -> CommentRecord:
        """Change the masked field (content); raise InvalidArgument, CommentNotFound."""
        violations = Violations()
        violations.row_id("comment.id", comment_id)
        paths = violations.mask("update_mask", paths, self.MUTABLE)
        if "content" in paths:
            violations.text("comment.content", content, COMMENT_CONTENT_MAX)
        violations.raise_if_any()

        def change(conn: Connection) -> CommentRecord:
            current = repository.read_comment(conn, comment_id, for_update=True)
            values = {"content": content, "update_time": _later_than(current.update_time)}
            return repository.update_comment(conn, comment_id, values)

        comment = self._db.write(change)
        audit.info("Comment updated; id=%d; fields=%s", comment.id, ",".join(paths))
        return comment

    @audit_not_found
    def delete_comment(self, comment_id: int) -> None:
        """Delete the comment; raise InvalidArgument, CommentNotFound."""
        check_id("id", comment_id)
        self._db.write(lambda conn: repository.delete_comment(conn, comment_id))
        audit.info("Comment deleted; id=%d", comment_id)


@dataclass(frozen=True)
class Board:
    """The board's use cases, one service per resource."""

    users: UserService
    posts: PostService
    comments: CommentService

    @classmethod
    def over(cls, db: Database) -> Board:
        return cls(users=UserService(db), posts=PostService(db), comments=CommentService(db))
