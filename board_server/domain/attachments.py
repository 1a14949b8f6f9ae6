"""Attachments: upload (checked by domain/images.py), read, list, watch, retry, delete, content, mask and
previews (domain/preview_cache.py); one transaction each, audit lines for every change.

An upload is committed as PENDING and the tagging worker is woken (``on_added``); the caller never waits for
the model. Only the post's author (or an admin) adds, retries or deletes its attachments; the attachments of
one user's posts hold at most the user's storage quota (domain/quotas.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from board_server.core.errors import AttachmentNotFound, FailedPrecondition, ResourceExhausted
from board_server.core.limits import FILENAME_MAX
from board_server.core.records import AttachmentStatus, ModelIdentity
from board_server.domain import etags
from board_server.domain.accounts import Accounts, Caller
from board_server.domain.clock import now
from board_server.domain.idempotency import RequestIds, request_key
from board_server.domain.images import inspect_image
from board_server.domain.paging import Page, PageTokens
from board_server.domain.preview_cache import PreviewCache
from board_server.domain.previews import Preview, preview_options
from board_server.domain.quotas import Quotas
from board_server.domain.validation import Violations, check_id
from board_server.domain.watch import WatchHub
from board_server.storage import attachments as attachment_rows
from board_server.storage import tagging_queue as queue
from board_server.storage.engine import Database

audit = logging.getLogger("board.audit")


@dataclass(frozen=True)
class LabelView:
    name: str
    fraction: float
    pixels: int


@dataclass(frozen=True)
class AttachmentView:
    """An attachment as the API shows it (no bytes); ``model`` is None until a model has labelled it."""

    id: int
    post_id: int
    filename: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    status: AttachmentStatus
    labels: tuple[LabelView, ...]
    create_time: datetime
    update_time: datetime
    failure_reason: str
    model: ModelIdentity | None
    attempts: int
    retag_pending: bool = False

    @property
    def settled(self) -> bool:
        """TAGGED or FAILED, with no re-tag queued: a watch ends here."""
        return self.status != AttachmentStatus.PENDING and not self.retag_pending

    @property
    def version(self) -> tuple[str, datetime, int, bool]:
        return (self.status, self.update_time, self.attempts, self.retag_pending)

    @property
    def etag(self) -> str:
        """A digest of all of the view: it changes whenever anything the API shows of it does."""
        return etags.of_text(repr(self))


def _view(row: Any, labels: Sequence[tuple[str, float, int]]) -> AttachmentView:
    status = AttachmentStatus(row.status)
    model = (
        ModelIdentity(
            row.model_arch,
            row.model_weights or "",
            row.model_sha256,
            row.model_archive_sha256,
            bool(row.model_untrained),
        )
        if row.model_arch
        else None
    )
    return AttachmentView(
        id=row.id,
        post_id=row.post_id,
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        width=row.width,
        height=row.height,
        status=status,
        labels=tuple(LabelView(n, f, p) for n, f, p in labels),
        create_time=row.create_time,
        update_time=row.update_time,
        # A PENDING row may carry the last transient error; the API shows a reason only once FAILED.
        failure_reason=(row.failure_reason or "") if status == AttachmentStatus.FAILED else "",
        model=model,
        attempts=row.attempts,
        retag_pending=bool(row.retag_pending),
    )


def _read_view(conn: Connection, attachment_id: int, *, for_update: bool = False) -> AttachmentView:
    """The attachment with its labels (row-locked on PostgreSQL with ``for_update``); AttachmentNotFound."""
    row = attachment_rows.read_attachment(conn, attachment_id, for_update=for_update)
    return _view(row, attachment_rows.read_labels(conn, [attachment_id]).get(attachment_id, ()))


def attachment_views(db: Database) -> Callable[[Sequence[int]], Any]:
    """A reader of the current views of some attachments by id (what watchers compare)."""

    async def read_many(ids: Sequence[int]) -> dict[int, AttachmentView]:
        def read(conn: Connection) -> dict[int, AttachmentView]:
            found = attachment_rows.read_attachments(conn, ids)
            labels = attachment_rows.read_labels(conn, [r.id for r in found])
            return {r.id: _view(r, labels.get(r.id, ())) for r in found}

        return await db.run_snapshot(read)

    return read_many


def watch_hub(db: Database, poll_s: float) -> WatchHub[AttachmentView]:
    """The watchers of attachments: versions compared, changes read by id."""
    return WatchHub(attachment_views(db), lambda view: view.version, poll_s=poll_s)


class AttachmentService:
    """Add, read, list, watch, retry and delete attachments; a post holds at most ``max_per_post``."""

    def __init__(
        self,
        db: Database,
        accounts: Accounts,
        tokens: PageTokens,
        *,
        previews: PreviewCache,
        quotas: Quotas,
        watchers: WatchHub[AttachmentView],
        requests: RequestIds,
        max_bytes: int,
        max_per_post: int,
        on_added: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._accounts = accounts
        self._tokens = tokens
        self._previews = previews
        self._quotas = quotas
        self.watchers = watchers
        self._requests = requests
        self._max_bytes = max_bytes
        self._max_per_post = max_per_post
        self._on_added = on_added  # wakes this process's tagging worker

    @property
    def max_bytes(self) -> int:
        """The largest attachment this board takes, in bytes."""
        return self._max_bytes

    async def add_attachment(
        self,
        caller: Caller,
        post_id: int,
        *,
        filename: str,
        content_type: str,
        data: bytes,
        traceparent: str | None = None,
        request_id: str = "",
    ) -> AttachmentView:
        """Store an image as PENDING (once per ``request_id``, see domain/idempotency.py); raise
        InvalidArgument, PostNotFound, PermissionDenied, ResourceExhausted (the post is full), QuotaExceeded
        (the author's storage, the caller's writes)."""
        violations = Violations()
        violations.row_id("post_id", post_id)
        violations.text("filename", filename, FILENAME_MAX)
        violations.request_id("request_id", request_id)
        violations.raise_if_any()
        info = inspect_image(data, content_type, self._max_bytes)
        stamp = now()
        values = {
            "post_id": post_id,
            "filename": filename,
            "content_type": info.content_type,
            "size_bytes": len(data),
            "width": info.width,
            "height": info.height,
            "data": data,
            "status": AttachmentStatus.PENDING,
            "attempts": 0,
            "next_attempt_time": stamp,
            "create_time": stamp,
            "update_time": stamp,
            "traceparent": traceparent,
        }

        def add(conn: Connection) -> AttachmentView:
            author = self._require_room(conn, caller, post_id, for_update=True)
            self._quotas.count_write(conn, caller)
            self._quotas.require_storage(conn, author, len(data))
            return _view(attachment_rows.add_attachment(conn, values), ())

        digest = hashlib.sha256(data).hexdigest()
        key = request_key(caller, request_id, "attachment", post_id, filename, content_type, digest)
        view, created = await self._requests.once(key, add, _read_view)
        if not created:
            return view
        audit.info(
            "Attachment created; id=%d; post_id=%d; bytes=%d; by=%s",
            view.id,
            post_id,
            len(data),
            caller.actor,
        )
        if self._on_added is not None:
            self._on_added()
        return view

    def _require_room(self, conn: Connection, caller: Caller, post_id: int, *, for_update: bool) -> int:
        """The post exists, the caller may add to it, and it has room; return its author's id; raise
        PostNotFound, Unauthenticated, PermissionDenied, ResourceExhausted."""
        author = attachment_rows.post_author(conn, post_id, for_update=for_update)
        self._accounts.require_owner(caller, author, "this post's attachments")
        if attachment_rows.count_of_post(conn, post_id) >= self._max_per_post:
            raise ResourceExhausted(
                f"post {post_id} already has {self._max_per_post} attachments, the most a post may hold"
            )
        return author

    async def require_storage_for(self, caller: Caller, post_id: int, size_bytes: int) -> None:
        """Check, before an upload's bytes are read, that the caller may add ``size_bytes`` to the post:
        raise InvalidArgument, PostNotFound, Unauthenticated, PermissionDenied, ResourceExhausted (the post
        is full), QuotaExceeded (the post author's storage). The upload itself checks again as it commits."""
        check_id("post_id", post_id)

        def check(conn: Connection) -> None:
            author = self._require_room(conn, caller, post_id, for_update=False)
            self._quotas.require_storage(conn, author, size_bytes)

        await self._db.run_read(check)

    async def get_attachment(self, caller: Caller, attachment_id: int) -> AttachmentView:
        """Return the attachment with its labels; raise InvalidArgument, AttachmentNotFound."""
        self._accounts.require_reader(caller)
        check_id("id", attachment_id)
        return await self._db.run_snapshot(lambda conn: _read_view(conn, attachment_id))

    async def watch_attachment(self, caller: Caller, attachment_id: int) -> AsyncIterator[AttachmentView]:
        """The attachment now, then every change, until it is TAGGED or FAILED; raise InvalidArgument,
        AttachmentNotFound (also when it is deleted while watched)."""
        current = await self.get_attachment(caller, attachment_id)
        yield current
        if current.settled:
            return
        async for changed in self.watchers.changes(attachment_id, current):
            yield changed
            if changed.settled:
                return
        raise AttachmentNotFound(attachment_id)

    async def list_attachments(
        self, caller: Caller, post_id: int, page_size: int, page_token: str
    ) -> Page[AttachmentView]:
        """One page of the post's attachments ordered by id; raise InvalidArgument, PostNotFound."""
        self._accounts.require_reader(caller)
        check_id("post_id", post_id)
        query = str(post_id)
        request = self._tokens.id_page("attachments", query, page_size, page_token)

        def read(conn: Connection) -> list[AttachmentView]:
            rows = attachment_rows.list_attachments(conn, post_id, request.after_id, request.size + 1)
            labels = attachment_rows.read_labels(conn, [r.id for r in rows[: request.size]])
            return [_view(r, labels.get(r.id, ())) for r in rows]

        views = await self._db.run_snapshot(read)
        return self._tokens.cut("attachments", query, views, request, lambda a: a.id)

    async def get_content(self, caller: Caller, attachment_id: int) -> tuple[bytes, str]:
        """The uploaded bytes and MIME type; raise InvalidArgument, AttachmentNotFound."""
        self._accounts.require_reader(caller)
        check_id("id", attachment_id)
        return await self._db.run_read(lambda conn: attachment_rows.read_content(conn, attachment_id))

    async def get_mask(self, caller: Caller, attachment_id: int) -> bytes:
        """The mask PNG; raise InvalidArgument, AttachmentNotFound, FailedPrecondition (not TAGGED yet)."""
        self._accounts.require_reader(caller)
        check_id("id", attachment_id)
        status, png = await self._db.run_read(lambda conn: attachment_rows.read_mask(conn, attachment_id))
        if png is None:
            raise FailedPrecondition(
                f"attachment {attachment_id} is {status}; a mask exists once it is TAGGED"
            )
        return png

    async def delete_attachment(self, caller: Caller, attachment_id: int, *, etag: str = "") -> None:
        """Delete the attachment with its labels and mask (only the version ``etag`` names, when given);
        raise InvalidArgument, AttachmentNotFound, PermissionDenied, StaleEtag, QuotaExceeded."""
        check_id("id", attachment_id)

        def remove(conn: Connection) -> None:
            _, author, _ = attachment_rows.owner(conn, attachment_id)
            self._accounts.require_owner(caller, author, "this attachment")
            if etag:  # the row locked until the delete commits: the worker cannot change it in between
                current = _read_view(conn, attachment_id, for_update=True)
                etags.require_current(etag, current.etag, f"attachment {attachment_id}")
            self._quotas.count_write(conn, caller)
            attachment_rows.delete_attachment(conn, attachment_id)

        await self._db.run_write(remove)
        audit.info("Attachment deleted; id=%d; by=%s", attachment_id, caller.actor)

    async def retry_attachment(self, caller: Caller, attachment_id: int) -> AttachmentView:
        """Queue a FAILED attachment for tagging again; raise InvalidArgument, AttachmentNotFound,
        PermissionDenied, FailedPrecondition (not FAILED), QuotaExceeded."""
        check_id("id", attachment_id)

        def requeue(conn: Connection) -> AttachmentView:
            _, author, status = attachment_rows.owner(conn, attachment_id)
            self._accounts.require_owner(caller, author, "this attachment")
            self._quotas.count_write(conn, caller)
            if not queue.requeue_failed(conn, attachment_id, now()):
                raise FailedPrecondition(
                    f"attachment {attachment_id} is {status}; only a FAILED one is retried"
                )
            return _read_view(conn, attachment_id)  # with its labels: the etag GetAttachment gives

        view = await self._db.run_write(requeue)
        audit.info("Attachment queued again; id=%d; by=%s", attachment_id, caller.actor)
        if self._on_added is not None:
            self._on_added()
        return view

    async def attachments_of_posts(
        self, caller: Caller, post_ids: Sequence[int]
    ) -> dict[int, list[AttachmentView]]:
        """The attachments (with labels and model) of each of ``post_ids``, for ListPosts' full view."""
        self._accounts.require_reader(caller)

        def read(conn: Connection) -> dict[int, list[AttachmentView]]:
            rows = attachment_rows.attachments_of_posts(conn, post_ids)
            labels = attachment_rows.read_labels(conn, [r.id for r in rows])
            found: dict[int, list[AttachmentView]] = {}
            for row in rows:
                found.setdefault(row.post_id, []).append(_view(row, labels.get(row.id, ())))
            return found

        return await self._db.run_snapshot(read) if post_ids else {}

    async def get_preview(
        self, caller: Caller, attachment_id: int, *, max_size: int, overlay: bool, content_type: str
    ) -> Preview:
        """A JPEG/WebP preview (mask blended in with ``overlay``), from the preview cache
        (domain/preview_cache.py); raise InvalidArgument, AttachmentNotFound, FailedPrecondition (overlay
        before TAGGED)."""
        self._accounts.require_reader(caller)
        check_id("id", attachment_id)
        size, kind = preview_options(max_size, content_type)
        return await self._previews.preview(caller.peer, attachment_id, size, overlay, kind)
