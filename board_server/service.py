"""Use cases of the board: one transaction each, validation, who may do what, and the audit log.

Every use case takes the ``Caller`` (board_server/accounts.py) first. Every create/update/delete is written to
the audit logger ``board.audit`` at INFO after its commit, naming the actor (``by=user:7``); reads never are,
so no read can push history out of the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Connection

from board_server import account_repository as accounts_repo
from board_server import repository
from board_server.accounts import Accounts, Caller
from board_server.database import Database
from board_server.errors import FieldViolation, InvalidArgument, PermissionDenied, Unauthenticated
from board_server.models import COMMENT_CONTENT_MAX, NAME_MAX, POST_CONTENT_MAX, TITLE_MAX
from board_server.paging import Page, PageTokens, query_digest
from board_server.post_filter import parse_filter, parse_order_by
from board_server.post_search import (
    all_of,
    canonical_query,
    cursor_from_dict,
    cursor_to_dict,
    legacy_filter,
    search_posts,
)
from board_server.records import CommentRecord, PostRecord, UserRecord
from board_server.served_model import ServedModels
from board_server.validation import Violations, check_id

audit = logging.getLogger("board.audit")


def _now() -> datetime:
    return datetime.now(UTC)


def _later_than(previous: datetime) -> datetime:
    """Now, but strictly after ``previous`` so that update_time always advances."""
    return max(_now(), previous + timedelta(microseconds=1))


@dataclass(frozen=True)
class UserView:
    """A user as this caller may see them: email and admin flag only for the user and for admins."""

    id: int
    name: str
    email: str
    admin: bool
    create_time: datetime

    @classmethod
    def of(cls, user: UserRecord, caller: Caller) -> UserView:
        private = caller.is_or_admin(user.id)
        return cls(
            user.id, user.name, user.email if private else "", user.admin and private, user.create_time
        )


# --- users -------------------------------------------------------------------------------------------------


class UserService:
    """Sign-up, read, list, update (name, email, password) and delete users."""

    MUTABLE = frozenset({"name", "email", "password"})

    def __init__(self, db: Database, accounts: Accounts, tokens: PageTokens, *, sign_up_open: bool) -> None:
        self._db = db
        self._accounts = accounts
        self._tokens = tokens
        self._sign_up_open = sign_up_open

    async def create_user(self, caller: Caller, name: str, email: str, password: str) -> UserView:
        """Create a user; raise InvalidArgument, AlreadyExists, PermissionDenied (sign-up closed)."""
        if not self._sign_up_open and not (caller.admin or caller.unrestricted):
            if not caller.signed_in:
                raise Unauthenticated("sign-up is closed on this server: an admin creates accounts")
            raise PermissionDenied("sign-up is closed on this server: only admins create accounts")
        violations = Violations()
        violations.text("name", name, NAME_MAX)
        violations.email("email", email)
        if password or self._accounts.auth:
            violations.password("password", password, email)
        violations.raise_if_any()
        password_hash = await self._accounts.hash_password(password) if password else None
        user = await self._db.run_write(
            lambda conn: repository.add_user(conn, name, email, _now(), password_hash)
        )
        audit.info("User created; id=%d; by=%s", user.id, caller.actor)
        return UserView.of(user, Caller(user.id))  # whoever created it sees the email they sent

    async def get_user(self, caller: Caller, user_id: int) -> UserView:
        """Return the user (``0``: the signed-in caller); raise InvalidArgument, UserNotFound,
        Unauthenticated (``0`` without a token)."""
        self._accounts.require_reader(caller)
        if user_id == 0 and not (caller.unrestricted and caller.user_id is None):
            user_id = self._accounts.require_signed_in(caller, "asking who you are")
        check_id("id", user_id)
        user = await self._db.run_read(lambda conn: repository.read_user(conn, user_id))
        return UserView.of(user, caller)

    async def list_users(self, caller: Caller, page_size: int, page_token: str) -> Page[UserView]:
        """One page of users ordered by id; raise InvalidArgument on a bad size or token."""
        self._accounts.require_reader(caller)
        request = self._tokens.id_page("users", "", page_size, page_token)
        rows = await self._db.run_read(
            lambda conn: repository.list_users(conn, request.after_id, request.size + 1)
        )
        page = self._tokens.cut("users", "", rows, request, lambda u: u.id)
        return Page([UserView.of(u, caller) for u in page.items], page.next_page_token)

    async def update_user(
        self, caller: Caller, user_id: int, paths: Sequence[str], *, name: str, email: str, password: str
    ) -> UserView:
        """Change the masked fields; a new password revokes the user's other sessions.

        Raises InvalidArgument, UserNotFound, AlreadyExists, PermissionDenied.
        """
        violations = Violations()
        violations.row_id("user.id", user_id)
        paths = violations.mask("update_mask", paths, self.MUTABLE)
        if "name" in paths:
            violations.text("user.name", name, NAME_MAX)
        if "email" in paths:
            violations.email("user.email", email)
        if "password" in paths:
            violations.password("user.password", password, email)
        violations.raise_if_any()
        self._accounts.require_owner(caller, user_id, "this account")
        if "password" in paths and "email" not in paths:
            # Nor may the new password be the email the account keeps (the request's email is not set).
            current = await self._db.run_read(lambda conn: repository.read_user(conn, user_id))
            violations.password("user.password", password, current.email)
            violations.raise_if_any()
        values: dict[str, object] = {
            path: {"name": name, "email": email}[path] for path in paths if path != "password"
        }
        if "password" in paths:
            values["password_hash"] = await self._accounts.hash_password(password)
        # The caller's own session survives their password change; every other one ends now.
        keep = caller.token_id if caller.user_id == user_id else None

        def change(conn: Connection) -> tuple[UserRecord, int]:
            user = repository.update_user(conn, user_id, values)
            revoked = accounts_repo.delete_tokens_of(conn, user_id, keep) if "password" in paths else 0
            return user, revoked

        user, revoked = await self._db.run_write(change)
        audit.info("User updated; id=%d; fields=%s; by=%s", user.id, ",".join(paths), caller.actor)
        if revoked:
            audit.info("Sessions revoked; user_id=%d; count=%d; by=%s", user.id, revoked, caller.actor)
        return UserView.of(user, caller)

    async def delete_user(self, caller: Caller, user_id: int) -> None:
        """Delete the user with their posts, comments and sessions; raise InvalidArgument, UserNotFound,
        PermissionDenied."""
        check_id("id", user_id)
        self._accounts.require_owner(caller, user_id, "this account")
        await self._db.run_write(lambda conn: repository.delete_user(conn, user_id))
        audit.info("User deleted; id=%d; by=%s", user_id, caller.actor)

    async def sign_in(self, email: str, password: str) -> tuple[str, datetime, UserView]:
        """Open a session: (access token, expiry, user); raise Unauthenticated, ResourceExhausted."""
        violations = Violations()
        violations.text("email", email, 254)
        if not password:
            violations.add("password", "must not be empty")
        violations.raise_if_any()
        session = await self._accounts.sign_in(email, password)
        user = await self._db.run_read(lambda conn: repository.read_user(conn, session.user_id))
        caller = Caller(session.user_id, session.admin)
        audit.info("Signed in; user_id=%d; by=%s", session.user_id, caller.actor)
        return session.token, session.expire_time, UserView.of(user, caller)

    async def sign_out(self, caller: Caller) -> None:
        await self._accounts.sign_out(caller)
        audit.info("Signed out; user_id=%d; by=%s", caller.user_id or 0, caller.actor)


# --- posts -------------------------------------------------------------------------------------------------


class PostService:
    """Create, read, list (and search), update and delete posts; only the author or an admin changes one."""

    MUTABLE = frozenset({"title", "content"})

    def __init__(self, db: Database, accounts: Accounts, tokens: PageTokens, models: ServedModels) -> None:
        self._db = db
        self._accounts = accounts
        self._tokens = tokens
        self._models = models

    async def create_post(self, caller: Caller, user_id: int, title: str, content: str) -> PostRecord:
        """Create a post by the caller; raise InvalidArgument, Unauthenticated, PermissionDenied."""
        violations = Violations()
        if user_id < 0:
            violations.add("user_id", "must be your own id, or 0 for yourself")
        violations.text("title", title, TITLE_MAX)
        violations.text("content", content, POST_CONTENT_MAX)
        violations.raise_if_any()
        author = self._accounts.author_for_new(caller, user_id, "user_id")
        check_id("user_id", author)
        post = await self._db.run_write(
            lambda conn: repository.add_post(conn, author, title, content, _now())
        )
        audit.info("Post created; id=%d; user_id=%d; by=%s", post.id, author, caller.actor)
        return post

    async def get_post(self, caller: Caller, post_id: int) -> PostRecord:
        """Return the post; raise InvalidArgument, PostNotFound."""
        self._accounts.require_reader(caller)
        check_id("id", post_id)
        return await self._db.run_read(lambda conn: repository.read_post(conn, post_id))

    async def list_posts(
        self,
        caller: Caller,
        *,
        user_id: int = 0,
        page_size: int = 0,
        page_token: str = "",
        label: str = "",
        min_label_fraction: float = 0.0,
        filter_text: str = "",
        order_by: str = "",
    ) -> Page[PostRecord]:
        """One page of posts: of one user unless ``user_id`` is 0, matching the AIP-160 ``filter_text`` and
        the older ``label``/``min_label_fraction`` (all ANDed), in ``order_by`` (AIP-132; id by default).

        Raises InvalidArgument (a filter or order that does not parse or names an unknown class, a page
        token of another query).
        """
        self._accounts.require_reader(caller)
        if not (label or min_label_fraction or filter_text.strip() or order_by.strip()):
            if user_id < 0:
                raise InvalidArgument(
                    [FieldViolation("user_id", "must be a positive id, or 0 for every user")]
                )
            query = str(user_id)
            request = self._tokens.id_page("posts", query, page_size, page_token)
            rows = await self._db.run_read(
                lambda conn: repository.list_posts(conn, user_id, request.after_id, request.size + 1)
            )
            return self._tokens.cut("posts", query, rows, request, lambda p: p.id)
        classes = await self._models.class_names()
        where = all_of(parse_filter(filter_text, classes), legacy_filter(label, min_label_fraction, user_id))
        order = parse_order_by(order_by, classes)
        binding = query_digest(canonical_query(where, order))
        search = self._tokens.request("posts-search", binding, page_size, page_token)
        cursor = cursor_from_dict(search.cursor, order) if search.cursor is not None else None
        found = await self._db.run_read(lambda conn: search_posts(conn, where, order, cursor, search.size))
        after = found.next_cursor
        token = (
            self._tokens.encode("posts-search", binding, cursor_to_dict(after)) if after is not None else ""
        )
        return Page(cast(Sequence[PostRecord], found.rows), token)

    async def update_post(
        self, caller: Caller, post_id: int, paths: Sequence[str], title: str, content: str
    ) -> PostRecord:
        """Change the masked fields; raise InvalidArgument, PostNotFound, PermissionDenied."""
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
            self._accounts.require_owner(caller, current.user_id, "this post")
            values["update_time"] = _later_than(current.update_time)
            return repository.update_post(conn, post_id, values)

        post = await self._db.run_write(change)
        audit.info("Post updated; id=%d; fields=%s; by=%s", post.id, ",".join(paths), caller.actor)
        return post

    async def delete_post(self, caller: Caller, post_id: int) -> None:
        """Delete the post with its comments and attachments; raise InvalidArgument, PostNotFound,
        PermissionDenied."""
        check_id("id", post_id)

        def remove(conn: Connection) -> None:
            current = repository.read_post(conn, post_id, for_update=True)
            self._accounts.require_owner(caller, current.user_id, "this post")
            repository.delete_post(conn, post_id)

        await self._db.run_write(remove)
        audit.info("Post deleted; id=%d; by=%s", post_id, caller.actor)


# --- comments ----------------------------------------------------------------------------------------------


class CommentService:
    """Create, read, list, update and delete comments; only the author or an admin changes one."""

    MUTABLE = frozenset({"content"})

    def __init__(self, db: Database, accounts: Accounts, tokens: PageTokens) -> None:
        self._db = db
        self._accounts = accounts
        self._tokens = tokens

    async def create_comment(self, caller: Caller, post_id: int, user_id: int, content: str) -> CommentRecord:
        """Comment as the caller; raise InvalidArgument, PostNotFound, Unauthenticated, PermissionDenied."""
        violations = Violations()
        violations.row_id("post_id", post_id)
        if user_id < 0:
            violations.add("user_id", "must be your own id, or 0 for yourself")
        violations.text("content", content, COMMENT_CONTENT_MAX)
        violations.raise_if_any()
        author = self._accounts.author_for_new(caller, user_id, "user_id")
        check_id("user_id", author)
        comment = await self._db.run_write(
            lambda conn: repository.add_comment(conn, post_id, author, content, _now())
        )
        audit.info(
            "Comment created; id=%d; post_id=%d; user_id=%d; by=%s", comment.id, post_id, author, caller.actor
        )
        return comment

    async def get_comment(self, caller: Caller, comment_id: int) -> CommentRecord:
        """Return the comment; raise InvalidArgument, CommentNotFound."""
        self._accounts.require_reader(caller)
        check_id("id", comment_id)
        return await self._db.run_read(lambda conn: repository.read_comment(conn, comment_id))

    async def list_comments(
        self, caller: Caller, post_id: int, page_size: int, page_token: str
    ) -> Page[CommentRecord]:
        """One page of the post's comments ordered by id; raise InvalidArgument, PostNotFound."""
        self._accounts.require_reader(caller)
        check_id("post_id", post_id)
        query = str(post_id)
        request = self._tokens.id_page("comments", query, page_size, page_token)
        rows = await self._db.run_read(
            lambda conn: repository.list_comments(conn, post_id, request.after_id, request.size + 1)
        )
        return self._tokens.cut("comments", query, rows, request, lambda c: c.id)

    async def update_comment(
        self, caller: Caller, comment_id: int, paths: Sequence[str], content: str
    ) -> CommentRecord:
        """Change the masked field (content); raise InvalidArgument, CommentNotFound, PermissionDenied."""
        violations = Violations()
        violations.row_id("comment.id", comment_id)
        paths = violations.mask("update_mask", paths, self.MUTABLE)
        if "content" in paths:
            violations.text("comment.content", content, COMMENT_CONTENT_MAX)
        violations.raise_if_any()

        def change(conn: Connection) -> CommentRecord:
            current = repository.read_comment(conn, comment_id, for_update=True)
            self._accounts.require_owner(caller, current.user_id, "this comment")
            values = {"content": content, "update_time": _later_than(current.update_time)}
            return repository.update_comment(conn, comment_id, values)

        comment = await self._db.run_write(change)
        audit.info("Comment updated; id=%d; fields=%s; by=%s", comment.id, ",".join(paths), caller.actor)
        return comment

    async def delete_comment(self, caller: Caller, comment_id: int) -> None:
        """Delete the comment; raise InvalidArgument, CommentNotFound, PermissionDenied."""
        check_id("id", comment_id)

        def remove(conn: Connection) -> None:
            current = repository.read_comment(conn, comment_id, for_update=True)
            self._accounts.require_owner(caller, current.user_id, "this comment")
            repository.delete_comment(conn, comment_id)

        await self._db.run_write(remove)
        audit.info("Comment deleted; id=%d; by=%s", comment_id, caller.actor)


@dataclass(frozen=True)
class Board:
    """The board's use cases, one service per resource."""

    users: UserService
    posts: PostService
    comments: CommentService

    @classmethod
    def over(
        cls,
        db: Database,
        accounts: Accounts,
        tokens: PageTokens,
        models: ServedModels,
        *,
        sign_up_open: bool = True,
    ) -> Board:
        return cls(
            users=UserService(db, accounts, tokens, sign_up_open=sign_up_open),
            posts=PostService(db, accounts, tokens, models),
            comments=CommentService(db, accounts, tokens),
        )
