"""Use cases of attachments: upload validation (size, type sniffed from the bytes, dimensions read by Pillow
without decoding the pixels), one transaction each, audit lines; and the ListPosts label filter.

An upload is committed as PENDING and the tagging worker is woken (board_server/tagging.py); the caller never
waits for the model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, Row

from board_server import attachment_repository as repo
from board_server import tagging_queue as queue
from board_server.accounts import Accounts, Caller
from board_server.database import Database
from board_server.errors import (
    AttachmentNotFound,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    excerpt,
)
from board_server.models import FILENAME_MAX
from board_server.paging import Page, PageTokens
from board_server.previews import Preview, preview_options, render_preview
from board_server.served_model import ServedModels
from board_server.validation import Violations, check_id
from board_server.watch import WatchHub
from seg_handler import image_policy

audit = logging.getLogger("board.audit")


_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/x-ms-bmp": "image/bmp",
    "image/x-bmp": "image/bmp",
    "image/tif": "image/tiff",
}


def normalise_content_type(value: str) -> str:
    """Lower-case, without parameters, aliases folded (``image/jpg`` → ``image/jpeg``)."""
    base = value.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int


def inspect_image(data: bytes, content_type: str, max_bytes: int) -> ImageInfo:
    """Validate an upload and read its size from the header; raise InvalidArgument naming the fields.

    The image rules (formats, MPO from phones, pixel limit, PNG chunk CRCs) are the segmentation handler's
    own, from seg_handler/image_policy.py: what the board stores, the model can read.
    """
    violations = Violations()
    if not data:
        violations.add("data", "must not be empty")
    elif len(data) > max_bytes:
        violations.add("data", f"must be at most {max_bytes} bytes (got {len(data)})")
    violations.raise_if_any()
    try:
        header = image_policy.inspect(data)
    except image_policy.ImageRejectedError as exc:
        raise InvalidArgument(
            [FieldViolation("data", f"is not an image we take ({exc.code}): {exc.message}")]
        ) from exc
    declared = normalise_content_type(content_type) if content_type else header.mime
    if declared != header.mime:
        violations.add("content_type", f"is {excerpt(declared)} but the data is {header.mime!r}")
    violations.raise_if_any()
    return ImageInfo(header.mime, header.width, header.height)


@dataclass(frozen=True)
class LabelView:
    name: str
    fraction: float
    pixels: int


@dataclass(frozen=True)
class AttachmentView:
    """An attachment as the API shows it (no bytes)."""

    id: int
    post_id: int
    filename: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    status: str
    labels: tuple[LabelView, ...]
    create_time: datetime
    update_time: datetime
    failure_reason: str
    model_arch: str
    model_weights: str
    model_sha256: str
    model_untrained: bool
    attempts: int
    retag_pending: bool = False
    model_archive_sha256: str = ""

    @property
    def settled(self) -> bool:
        """TAGGED or FAILED, with no re-tag queued: a watch ends here."""
        return self.status in (repo.TAGGED, repo.FAILED) and not self.retag_pending

    @property
    def version(self) -> tuple[str, datetime, int, bool]:
        return (self.status, self.update_time, self.attempts, self.retag_pending)


def _view(row: Any, labels: Sequence[tuple[str, float, int]]) -> AttachmentView:
    # A PENDING row may carry the last transient error as failure_reason; the API shows it only once FAILED.
    return AttachmentView(
        id=row.id,
        post_id=row.post_id,
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        width=row.width,
        height=row.height,
        status=row.status,
        labels=tuple(LabelView(n, f, p) for n, f, p in labels),
        create_time=row.create_time,
        update_time=row.update_time,
        failure_reason=(row.failure_reason or "") if row.status == repo.FAILED else "",
        model_arch=row.model_arch or "",
        model_weights=row.model_weights or "",
        model_sha256=row.model_sha256 or "",
        model_untrained=bool(row.model_untrained),
        attempts=row.attempts,
        retag_pending=bool(row.retag_pending),
        model_archive_sha256=row.model_archive_sha256 or "",
    )


def _now() -> datetime:
    return datetime.now(UTC)


class AttachmentService:
    """Add, read, list, retry and delete attachments; ``on_added`` wakes the tagging worker after each upload.

    Only the post's author (or an admin) adds, retries or deletes its attachments; a post holds at most
    ``max_per_post`` of them.
    """

    def __init__(
        self,
        db: Database,
        accounts: Accounts,
        tokens: PageTokens,
        *,
        max_bytes: int,
        max_per_post: int,
        models: ServedModels,
        watch_poll_s: float = 0.5,
    ) -> None:
        self._db = db
        self._accounts = accounts
        self._tokens = tokens
        self._max_bytes = max_bytes
        self._max_per_post = max_per_post
        # Told after each upload (wakes this process's tagging worker).
        self.on_added: Callable[[], None] | None = None
        self._models = models
        # Rendering decodes whole photos: a few at a time, off the event loop (Pillow releases the GIL).
        self._render_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="board-preview")
        self._render_slots = asyncio.Semaphore(4)
        self.watchers: WatchHub[AttachmentView] = WatchHub(
            self._read_many, lambda v: v.version, poll_s=watch_poll_s
        )

    async def add_attachment(
        self,
        caller: Caller,
        post_id: int,
        *,
        filename: str,
        content_type: str,
        data: bytes,
        traceparent: str | None = None,
    ) -> AttachmentView:
        """Store an image as PENDING; raise InvalidArgument, PostNotFound, PermissionDenied,
        ResourceExhausted (the post is full)."""
        violations = Violations()
        violations.row_id("post_id", post_id)
        violations.text("filename", filename, FILENAME_MAX)
        violations.raise_if_any()
        info = inspect_image(data, content_type, self._max_bytes)
        now = _now()
        values = {
            "post_id": post_id,
            "filename": filename,
            "content_type": info.content_type,
            "size_bytes": len(data),
            "width": info.width,
            "height": info.height,
            "data": data,
            "status": repo.PENDING,
            "attempts": 0,
            "next_attempt_time": now,
            "create_time": now,
            "update_time": now,
            "traceparent": traceparent,
        }

        def add(conn: Connection) -> Row[Any]:
            author = repo.post_author(conn, post_id, for_update=True)
            self._accounts.require_owner(caller, author, "this post's attachments")
            if repo.count_of_post(conn, post_id) >= self._max_per_post:
                raise ResourceExhausted(
                    f"post {post_id} already has {self._max_per_post} attachments, the most a post may hold"
                )
            return repo.add_attachment(conn, values)

        row = await self._db.run_write(add)
        audit.info(
            "Attachment created; id=%d; post_id=%d; bytes=%d; by=%s", row.id, post_id, len(data), caller.actor
        )
        if self.on_added is not None:
            self.on_added()
        return _view(row, ())

    async def get_attachment(self, caller: Caller, attachment_id: int) -> AttachmentView:
        """Return the attachment with its labels; raise InvalidArgument, AttachmentNotFound."""
        self._accounts.require_reader(caller)
        check_id("id", attachment_id)

        def read(conn: Connection) -> AttachmentView:
            row = repo.read_attachment(conn, attachment_id)
            return _view(row, repo.read_labels(conn, [attachment_id]).get(attachment_id, ()))

        return await self._db.run_read(read)

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

    async def _read_many(self, ids: Sequence[int]) -> dict[int, AttachmentView]:
        def read(conn: Connection) -> dict[int, AttachmentView]:
            rows = repo.read_attachments(conn, ids)
            labels = repo.read_labels(conn, [r.id for r in rows])
            return {r.id: _view(r, labels.get(r.id, ())) for r in rows}

        return await self._db.run_read(read)

    async def list_attachments(
        self, caller: Caller, post_id: int, page_size: int, page_token: str
    ) -> Page[AttachmentView]:
        """One page of the post's attachments ordered by id; raise InvalidArgument, PostNotFound."""
        self._accounts.require_reader(caller)
        check_id("post_id", post_id)
        query = str(post_id)
        request = self._tokens.id_page("attachments", query, page_size, page_token)

        def read(conn: Connection) -> list[AttachmentView]:
            rows = repo.list_attachments(conn, post_id, request.after_id, request.size + 1)
            labels = repo.read_labels(conn, [r.id for r in rows[: request.size]])
            return [_view(r, labels.get(r.id, ())) for r in rows]

        views = await self._db.run_read(read)
        return self._tokens.cut("attachments", query, views, request, lambda a: a.id)

    async def get_content(self, caller: Caller, attachment_id: int) -> tuple[bytes, str]:
        """The uploaded bytes and MIME type; raise InvalidArgument, AttachmentNotFound."""
        self._accounts.require_reader(caller)
        check_id("id", attachment_id)
        return await self._db.run_read(lambda conn: repo.read_content(conn, attachment_id))

    async def get_mask(self, caller: Caller, attachment_id: int) -> bytes:
        """The mask PNG; raise InvalidArgument, AttachmentNotFound, FailedPrecondition (not TAGGED yet)."""
        self._accounts.require_reader(caller)
        check_id("id", attachment_id)
        status, png = await self._db.run_read(lambda conn: repo.read_mask(conn, attachment_id))
        if png is None:
            raise FailedPrecondition(
                f"attachment {attachment_id} is {status}; a mask exists once it is TAGGED"
            )
        return png

    async def delete_attachment(self, caller: Caller, attachment_id: int) -> None:
        """Delete the attachment with its labels and mask; raise InvalidArgument, AttachmentNotFound,
        PermissionDenied."""
        check_id("id", attachment_id)

        def remove(conn: Connection) -> None:
            _, author, _ = repo.owner(conn, attachment_id)
            self._accounts.require_owner(caller, author, "this attachment")
            repo.delete_attachment(conn, attachment_id)

        await self._db.run_write(remove)
        audit.info("Attachment deleted; id=%d; by=%s", attachment_id, caller.actor)

    async def retry_attachment(self, caller: Caller, attachment_id: int) -> AttachmentView:
        """Queue a FAILED attachment for tagging again; raise InvalidArgument, AttachmentNotFound,
        PermissionDenied, FailedPrecondition (not FAILED)."""
        check_id("id", attachment_id)

        def requeue(conn: Connection) -> AttachmentView:
            _, author, status = repo.owner(conn, attachment_id)
            self._accounts.require_owner(caller, author, "this attachment")
            if not queue.requeue_failed(conn, attachment_id, _now()):
                raise FailedPrecondition(
                    f"attachment {attachment_id} is {status}; only a FAILED one is retried"
                )
            return _view(repo.read_attachment(conn, attachment_id), ())

        view = await self._db.run_write(requeue)
        audit.info("Attachment queued again; id=%d; by=%s", attachment_id, caller.actor)
        if self.on_added is not None:
            self.on_added()
        return view

    async def attachments_of_posts(
        self, caller: Caller, post_ids: Sequence[int]
    ) -> dict[int, list[AttachmentView]]:
        """The attachments (with labels and model) of each of ``post_ids``, for ListPosts' full view."""
        self._accounts.require_reader(caller)

        def read(conn: Connection) -> dict[int, list[AttachmentView]]:
            rows = repo.attachments_of_posts(conn, post_ids)
            labels = repo.read_labels(conn, [r.id for r in rows])
            found: dict[int, list[AttachmentView]] = {}
            for row in rows:
                found.setdefault(row.post_id, []).append(_view(row, labels.get(row.id, ())))
            return found

        return await self._db.run_read(read) if post_ids else {}

    async def get_preview(
        self, caller: Caller, attachment_id: int, *, max_size: int, overlay: bool, content_type: str
    ) -> Preview:
        """A JPEG/WebP preview (mask blended in with ``overlay``), rendered once and then served from the
        cache; raise InvalidArgument, AttachmentNotFound, FailedPrecondition (overlay before TAGGED)."""
        self._accounts.require_reader(caller)
        check_id("id", attachment_id)
        size, kind = preview_options(max_size, content_type)
        cached = await self._db.run_read(
            lambda conn: repo.read_preview(conn, attachment_id, size, overlay, kind)
        )
        if cached is not None:
            return Preview(bytes(cached.data), kind, int(cached.width), int(cached.height))

        def sources(conn: Connection) -> tuple[bytes, bytes | None, str]:
            data, _ = repo.read_content(conn, attachment_id)
            status, mask = repo.read_mask(conn, attachment_id)
            return data, mask, status

        data, mask, status = await self._db.run_read(sources)
        if overlay and mask is None:
            raise FailedPrecondition(
                f"attachment {attachment_id} is {status}; an overlay exists once it is TAGGED"
            )
        classes = await self._models.class_names()
        async with self._render_slots:
            preview: Preview = await asyncio.get_running_loop().run_in_executor(
                self._render_pool,
                partial(render_preview, data, mask if overlay else None, size, kind, classes),
            )
        await self._db.run_write(
            lambda conn: repo.store_preview(
                conn, attachment_id, size=size, overlay=overlay, preview=preview, now=datetime.now(UTC)
            )
        )
        return preview
