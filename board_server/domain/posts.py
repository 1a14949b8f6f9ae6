"""Posts: create, read, list (and search), update and delete; only the author or an admin changes one.

Every create/update/delete is written to the audit logger ``board.audit`` at INFO after its commit, naming
the actor (``by=user:7``); reads never are, so no read can push history out of the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

from sqlalchemy import Connection

from board_server.core.errors import FieldViolation, InvalidArgument
from board_server.core.limits import POST_CONTENT_MAX, TITLE_MAX
from board_server.core.records import PostRecord
from board_server.domain import etags
from board_server.domain.accounts import Accounts, Caller
from board_server.domain.clock import later_than, now
from board_server.domain.idempotency import RequestIds, request_key
from board_server.domain.paging import Page, PageTokens, query_digest
from board_server.domain.quotas import Quotas
from board_server.domain.served_models import ServedModels
from board_server.domain.validation import Violations, check_id
from board_server.query.filter import parse_filter, parse_order_by
from board_server.query.post_search import (
    all_of,
    canonical_query,
    cursor_from_dict,
    cursor_to_dict,
    legacy_filter,
    search_posts,
)
from board_server.storage import posts as post_rows
from board_server.storage.engine import Database

audit = logging.getLogger("board.audit")


class PostService:
    """Create, read, list (and search), update and delete posts; only the author or an admin changes one."""

    MUTABLE = frozenset({"title", "content"})

    def __init__(
        self,
        db: Database,
        accounts: Accounts,
        tokens: PageTokens,
        models: ServedModels,
        *,
        quotas: Quotas,
        requests: RequestIds,
    ) -> None:
        self._db = db
        self._accounts = accounts
        self._tokens = tokens
        self._models = models
        self._quotas = quotas
        self._requests = requests

    async def create_post(
        self, caller: Caller, user_id: int, title: str, content: str, *, request_id: str = ""
    ) -> PostRecord:
        """Create a post by the caller (once per ``request_id``, see domain/idempotency.py); raise
        InvalidArgument, Unauthenticated, PermissionDenied, QuotaExceeded (writes per minute)."""
        violations = Violations()
        if user_id < 0:
            violations.add("user_id", "must be your own id, or 0 for yourself")
        violations.text("title", title, TITLE_MAX)
        violations.text("content", content, POST_CONTENT_MAX)
        violations.request_id("request_id", request_id)
        violations.raise_if_any()
        author = self._accounts.author_for_new(caller, user_id, "user_id")
        check_id("user_id", author)
        key = request_key(caller, request_id, "post", author, title, content)

        def add(conn: Connection) -> PostRecord:
            self._quotas.count_write(conn, caller)
            return post_rows.add_post(conn, author, title, content, now())

        if key is None and self._db.loop_connections is not None:
            # PostgreSQL: a post without a request_id is one statement, its INSERT and its count.
            counter = self._quotas.counter(caller)
            post = await post_rows.insert_post(self._db, author, title, content, now(), counted=counter)
            if post is None:
                raise self._quotas.refused(caller)
            created = True
        else:
            post, created = await self._requests.once(key, add, post_rows.read_post)
        if created:
            audit.info("Post created; id=%d; user_id=%d; by=%s", post.id, author, caller.actor)
        return post

    async def get_post(self, caller: Caller, post_id: int) -> PostRecord:
        """Return the post; raise InvalidArgument, PostNotFound."""
        self._accounts.require_reader(caller)
        check_id("id", post_id)
        return await post_rows.fetch_post(self._db, post_id)

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
            rows = await post_rows.list_posts(self._db, user_id, request.after_id, request.size + 1)
            return self._tokens.cut("posts", query, rows, request, lambda p: p.id)
        classes = await self._models.class_names()
        where = all_of(parse_filter(filter_text, classes), legacy_filter(label, min_label_fraction, user_id))
        order = parse_order_by(order_by, classes)
        binding = query_digest(canonical_query(where, order))
        search = self._tokens.request("posts-search", binding, page_size, page_token)
        cursor = cursor_from_dict(search.cursor, order) if search.cursor is not None else None
        found = await self._db.run_search(lambda conn: search_posts(conn, where, order, cursor, search.size))
        after = found.next_cursor
        token = (
            self._tokens.encode("posts-search", binding, cursor_to_dict(after)) if after is not None else ""
        )
        return Page(cast(Sequence[PostRecord], found.rows), token)

    async def update_post(
        self, caller: Caller, post_id: int, paths: Sequence[str], title: str, content: str, *, etag: str = ""
    ) -> PostRecord:
        """Change the masked fields (only of the version ``etag`` names, when given); raise InvalidArgument,
        PostNotFound, PermissionDenied, StaleEtag, QuotaExceeded."""
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
            current = post_rows.read_post(conn, post_id, for_update=True)
            self._accounts.require_owner(caller, current.user_id, "this post")
            etags.require_current(etag, etags.of_time(current.update_time), f"post {post_id}")
            self._quotas.count_write(conn, caller)
            values["update_time"] = later_than(current.update_time)
            return post_rows.update_post(conn, post_id, values)

        post = await self._db.run_write(change)
        audit.info("Post updated; id=%d; fields=%s; by=%s", post.id, ",".join(paths), caller.actor)
        return post

    async def delete_post(self, caller: Caller, post_id: int, *, etag: str = "") -> None:
        """Delete the post with its comments and attachments (only the version ``etag`` names, when given);
        raise InvalidArgument, PostNotFound, PermissionDenied, StaleEtag, QuotaExceeded."""
        check_id("id", post_id)

        def remove(conn: Connection) -> None:
            current = post_rows.read_post(conn, post_id, for_update=True)
            self._accounts.require_owner(caller, current.user_id, "this post")
            etags.require_current(etag, etags.of_time(current.update_time), f"post {post_id}")
            self._quotas.count_write(conn, caller)
            post_rows.delete_post(conn, post_id)

        await self._db.run_write(remove)
        audit.info("Post deleted; id=%d; by=%s", post_id, caller.actor)
