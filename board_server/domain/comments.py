"""Comments: create, read, list, update and delete; only the author or an admin changes one.

Every create/update/delete is written to the audit logger ``board.audit`` at INFO after its commit, naming
the actor (``by=user:7``); reads never are, so no read can push history out of the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import Connection

from board_server.core.limits import COMMENT_CONTENT_MAX
from board_server.core.records import CommentRecord
from board_server.domain import etags
from board_server.domain.accounts import Accounts, Caller
from board_server.domain.clock import later_than, now
from board_server.domain.idempotency import RequestIds, request_key
from board_server.domain.paging import Page, PageTokens
from board_server.domain.quotas import Quotas
from board_server.domain.validation import Violations, check_id
from board_server.storage import comments as comment_rows
from board_server.storage.engine import Database

audit = logging.getLogger("board.audit")


class CommentService:
    """Create, read, list, update and delete comments; only the author or an admin changes one."""

    MUTABLE = frozenset({"content"})

    def __init__(
        self, db: Database, accounts: Accounts, tokens: PageTokens, quotas: Quotas, requests: RequestIds
    ) -> None:
        self._db = db
        self._accounts = accounts
        self._tokens = tokens
        self._quotas = quotas
        self._requests = requests

    async def create_comment(
        self, caller: Caller, post_id: int, user_id: int, content: str, *, request_id: str = ""
    ) -> CommentRecord:
        """Comment as the caller (once per ``request_id``, see domain/idempotency.py); raise
        InvalidArgument, PostNotFound, Unauthenticated, PermissionDenied, QuotaExceeded (writes per
        minute)."""
        violations = Violations()
        violations.row_id("post_id", post_id)
        if user_id < 0:
            violations.add("user_id", "must be your own id, or 0 for yourself")
        violations.text("content", content, COMMENT_CONTENT_MAX)
        violations.request_id("request_id", request_id)
        violations.raise_if_any()
        author = self._accounts.author_for_new(caller, user_id, "user_id")
        check_id("user_id", author)
        key = request_key(caller, request_id, "comment", post_id, author, content)

        def add(conn: Connection) -> CommentRecord:
            self._quotas.count_write(conn, caller)
            return comment_rows.add_comment(conn, post_id, author, content, now())

        comment, created = await self._requests.once(
            key,
            add,
            comment_rows.read_comment,
        )
        if created:
            audit.info(
                "Comment created; id=%d; post_id=%d; user_id=%d; by=%s",
                comment.id,
                post_id,
                author,
                caller.actor,
            )
        return comment

    async def get_comment(self, caller: Caller, comment_id: int) -> CommentRecord:
        """Return the comment; raise InvalidArgument, CommentNotFound."""
        self._accounts.require_reader(caller)
        check_id("id", comment_id)
        return await self._db.run_read(lambda conn: comment_rows.read_comment(conn, comment_id))

    async def list_comments(
        self, caller: Caller, post_id: int, page_size: int, page_token: str
    ) -> Page[CommentRecord]:
        """One page of the post's comments ordered by id; raise InvalidArgument, PostNotFound."""
        self._accounts.require_reader(caller)
        check_id("post_id", post_id)
        query = str(post_id)
        request = self._tokens.id_page("comments", query, page_size, page_token)
        rows = await self._db.run_read(
            lambda conn: comment_rows.list_comments(conn, post_id, request.after_id, request.size + 1)
        )
        return self._tokens.cut("comments", query, rows, request, lambda c: c.id)

    async def update_comment(
        self, caller: Caller, comment_id: int, paths: Sequence[str], content: str, *, etag: str = ""
    ) -> CommentRecord:
        """Change the masked field (content) of the version ``etag`` names, when given; raise
        InvalidArgument, CommentNotFound, PermissionDenied, StaleEtag, QuotaExceeded."""
        violations = Violations()
        violations.row_id("comment.id", comment_id)
        paths = violations.mask("update_mask", paths, self.MUTABLE)
        if "content" in paths:
            violations.text("comment.content", content, COMMENT_CONTENT_MAX)
        violations.raise_if_any()

        def change(conn: Connection) -> CommentRecord:
            current = comment_rows.read_comment(conn, comment_id, for_update=True)
            self._accounts.require_owner(caller, current.user_id, "this comment")
            etags.require_current(etag, etags.of_time(current.update_time), f"comment {comment_id}")
            self._quotas.count_write(conn, caller)
            values = {"content": content, "update_time": later_than(current.update_time)}
            return comment_rows.update_comment(conn, comment_id, values)

        comment = await self._db.run_write(change)
        audit.info("Comment updated; id=%d; fields=%s; by=%s", comment.id, ",".join(paths), caller.actor)
        return comment

    async def delete_comment(self, caller: Caller, comment_id: int, *, etag: str = "") -> None:
        """Delete the comment (only the version ``etag`` names, when given); raise InvalidArgument,
        CommentNotFound, PermissionDenied, StaleEtag, QuotaExceeded."""
        check_id("id", comment_id)

        def remove(conn: Connection) -> None:
            current = comment_rows.read_comment(conn, comment_id, for_update=True)
            self._accounts.require_owner(caller, current.user_id, "this comment")
            etags.require_current(etag, etags.of_time(current.update_time), f"comment {comment_id}")
            self._quotas.count_write(conn, caller)
            comment_rows.delete_comment(conn, comment_id)

        await self._db.run_write(remove)
        audit.info("Comment deleted; id=%d; by=%s", comment_id, caller.actor)
