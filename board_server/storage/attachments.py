"""Attachment rows, their labels and cached previews (see storage/users.py for how row modules work); the
tagging queue's statements are in storage/tagging_queue.py."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, bindparam, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from board_server.core.errors import AttachmentNotFound, PostNotFound
from board_server.storage.notifications import notify_attachments_changed
from board_server.storage.tables import Attachment, AttachmentLabel, AttachmentPreview, Post

_ATTACHMENTS, _LABELS, _POSTS, _PREVIEWS = (
    cast(Table, m.__table__) for m in (Attachment, AttachmentLabel, Post, AttachmentPreview)
)

# Everything but the bytes: metadata reads never drag images or masks over the wire.
_META = [c for c in _ATTACHMENTS.c if c.name not in ("data", "mask_png")]

_READ_META = select(*_META).where(_ATTACHMENTS.c.id == bindparam("id"))
_READ_META_FOR_UPDATE = _READ_META.with_for_update()
_LIST_META = (
    select(*_META)
    .where(_ATTACHMENTS.c.post_id == bindparam("post_id"), _ATTACHMENTS.c.id > bindparam("after"))
    .order_by(_ATTACHMENTS.c.id)
    .limit(bindparam("n"))
)
_POST_EXISTS = select(_POSTS.c.id).where(_POSTS.c.id == bindparam("id"))
_POST_AUTHOR = select(_POSTS.c.user_id).where(_POSTS.c.id == bindparam("id"))
# FOR UPDATE on PostgreSQL: two uploads to one post count the quota one after the other.
_POST_AUTHOR_LOCKED = _POST_AUTHOR.with_for_update()
_COUNT_OF_POST = select(func.count()).where(_ATTACHMENTS.c.post_id == bindparam("post_id"))
_OWNER = (
    select(_ATTACHMENTS.c.post_id, _POSTS.c.user_id, _ATTACHMENTS.c.status)
    .join(_POSTS, _POSTS.c.id == _ATTACHMENTS.c.post_id)
    .where(_ATTACHMENTS.c.id == bindparam("id"))
)
_INSERT = insert(_ATTACHMENTS).returning(*_META)
_CONTENT = select(_ATTACHMENTS.c.data, _ATTACHMENTS.c.content_type).where(
    _ATTACHMENTS.c.id == bindparam("id")
)
_MASK = select(_ATTACHMENTS.c.status, _ATTACHMENTS.c.mask_png).where(_ATTACHMENTS.c.id == bindparam("id"))
_LABELS_OF = (
    select(_LABELS.c.attachment_id, _LABELS.c.name, _LABELS.c.fraction, _LABELS.c.pixels)
    .where(_LABELS.c.attachment_id.in_(bindparam("ids", expanding=True)))
    .order_by(_LABELS.c.attachment_id, _LABELS.c.fraction.desc(), _LABELS.c.name)
)


def add_attachment(conn: Connection, values: dict[str, Any]) -> Row[Any]:
    """Insert an attachment (PENDING); raise PostNotFound if the post does not exist."""
    try:
        return conn.execute(_INSERT, values).one()
    except IntegrityError as exc:
        if "foreign key" in str(exc.orig).lower():
            raise PostNotFound(int(values["post_id"])) from exc
        raise


_READ_MANY = select(*_META).where(_ATTACHMENTS.c.id.in_(bindparam("ids", expanding=True)))


_STATUS_COUNTS = select(_ATTACHMENTS.c.status, func.count()).group_by(_ATTACHMENTS.c.status)
_RETAGS_QUEUED = select(func.count()).where(_ATTACHMENTS.c.retag_pending.is_(True))


def status_counts(conn: Connection) -> tuple[dict[str, int], int]:
    """Attachments per status, and how many re-tags are queued."""
    counts = {str(status): int(n) for status, n in conn.execute(_STATUS_COUNTS)}
    return counts, int(conn.execute(_RETAGS_QUEUED).scalar_one())


def read_attachments(conn: Connection, attachment_ids: Sequence[int]) -> Sequence[Row[Any]]:
    """The metadata of those of ``attachment_ids`` that exist."""
    return conn.execute(_READ_MANY, {"ids": list(attachment_ids)}).all() if attachment_ids else []


def read_attachment(conn: Connection, attachment_id: int, *, for_update: bool = False) -> Row[Any]:
    """The attachment's metadata (no bytes; row-locked on PostgreSQL with ``for_update``); raise
    AttachmentNotFound."""
    row = conn.execute(_READ_META_FOR_UPDATE if for_update else _READ_META, {"id": attachment_id}).first()
    if row is None:
        raise AttachmentNotFound(attachment_id)
    return row


def list_attachments(conn: Connection, post_id: int, after_id: int, limit: int) -> Sequence[Row[Any]]:
    """Up to ``limit`` of the post's attachments (metadata) with id > ``after_id``; raise PostNotFound."""
    rows = conn.execute(_LIST_META, {"post_id": post_id, "after": after_id, "n": limit}).all()
    if not rows and conn.execute(_POST_EXISTS, {"id": post_id}).first() is None:
        raise PostNotFound(post_id)
    return rows


def post_author(conn: Connection, post_id: int, *, for_update: bool = False) -> int:
    """The author of the post (row-locked on PostgreSQL with ``for_update``); raise PostNotFound."""
    row = conn.execute(_POST_AUTHOR_LOCKED if for_update else _POST_AUTHOR, {"id": post_id}).first()
    if row is None:
        raise PostNotFound(post_id)
    return int(row.user_id)


def count_of_post(conn: Connection, post_id: int) -> int:
    return int(conn.execute(_COUNT_OF_POST, {"post_id": post_id}).scalar_one())


def owner(conn: Connection, attachment_id: int) -> tuple[int, int, str]:
    """(post id, the post author's id, status) of the attachment; raise AttachmentNotFound."""
    row = conn.execute(_OWNER, {"id": attachment_id}).first()
    if row is None:
        raise AttachmentNotFound(attachment_id)
    return int(row.post_id), int(row.user_id), str(row.status)


def read_labels(conn: Connection, attachment_ids: Sequence[int]) -> dict[int, list[tuple[str, float, int]]]:
    """Labels per attachment id, largest share first."""
    found: dict[int, list[tuple[str, float, int]]] = {}
    if attachment_ids:
        for row in conn.execute(_LABELS_OF, {"ids": list(attachment_ids)}):
            found.setdefault(row.attachment_id, []).append((row.name, row.fraction, row.pixels))
    return found


def read_content(conn: Connection, attachment_id: int) -> tuple[bytes, str]:
    """The uploaded bytes and their MIME type; raise AttachmentNotFound."""
    row = conn.execute(_CONTENT, {"id": attachment_id}).first()
    if row is None:
        raise AttachmentNotFound(attachment_id)
    return bytes(row.data), str(row.content_type)


def read_mask(conn: Connection, attachment_id: int) -> tuple[str, bytes | None]:
    """The status and the mask PNG (None unless TAGGED); raise AttachmentNotFound."""
    row = conn.execute(_MASK, {"id": attachment_id}).first()
    if row is None:
        raise AttachmentNotFound(attachment_id)
    return str(row.status), None if row.mask_png is None else bytes(row.mask_png)


def delete_attachment(conn: Connection, attachment_id: int) -> None:
    """Delete the attachment with its labels; raise AttachmentNotFound."""
    conn.execute(delete(_LABELS).where(_LABELS.c.attachment_id == attachment_id))
    if conn.execute(delete(_ATTACHMENTS).where(_ATTACHMENTS.c.id == attachment_id)).rowcount == 0:
        raise AttachmentNotFound(attachment_id)
    notify_attachments_changed(conn, (attachment_id,))


_OF_POSTS = (
    select(*_META)
    .where(_ATTACHMENTS.c.post_id.in_(bindparam("ids", expanding=True)))
    .order_by(_ATTACHMENTS.c.post_id, _ATTACHMENTS.c.id)
)


def attachments_of_posts(conn: Connection, post_ids: Sequence[int]) -> Sequence[Row[Any]]:
    """The metadata of every attachment of those posts, by post then id."""
    return conn.execute(_OF_POSTS, {"ids": list(post_ids)}).all() if post_ids else []


# --- the preview cache ------------------------------------------------------------------------------------

# One preview (bind names unlike the columns': UPDATE and DELETE reserve those).
_PREVIEW_KEY = (
    _PREVIEWS.c.attachment_id == bindparam("k_id"),
    _PREVIEWS.c.max_size == bindparam("k_size"),
    _PREVIEWS.c.overlay == bindparam("k_overlay"),
    _PREVIEWS.c.content_type == bindparam("k_kind"),
)
_PREVIEW = select(_PREVIEWS.c.data, _PREVIEWS.c.width, _PREVIEWS.c.height, _PREVIEWS.c.last_use_time).where(
    *_PREVIEW_KEY
)
_TOUCH_PREVIEW = update(_PREVIEWS).where(*_PREVIEW_KEY).values(last_use_time=bindparam("now"))
_PREVIEW_SOURCE = select(_ATTACHMENTS.c.width, _ATTACHMENTS.c.height, _ATTACHMENTS.c.status).where(
    _ATTACHMENTS.c.id == bindparam("id")
)
# Read from the index on (last_use_time, size_bytes) alone.
_PREVIEW_BYTES = select(func.coalesce(func.sum(_PREVIEWS.c.size_bytes), 0))
_LEAST_RECENTLY_USED = (
    select(
        _PREVIEWS.c.attachment_id,
        _PREVIEWS.c.max_size,
        _PREVIEWS.c.overlay,
        _PREVIEWS.c.content_type,
        _PREVIEWS.c.size_bytes,
    )
    .order_by(_PREVIEWS.c.last_use_time)
    .limit(bindparam("n"))
)
_EVICT = delete(_PREVIEWS).where(*_PREVIEW_KEY)
# PostgreSQL: stores take turns, so that two replicas never both decide there is room.
_CACHE_TURN = text("SELECT pg_advisory_xact_lock(4242003)")
_EVICT_BATCH = 64


def preview_source(conn: Connection, attachment_id: int) -> Row[Any]:
    """(width, height, status) of the attachment a preview is made of; raise AttachmentNotFound."""
    row = conn.execute(_PREVIEW_SOURCE, {"id": attachment_id}).first()
    if row is None:
        raise AttachmentNotFound(attachment_id)
    return cast("Row[Any]", row)


def read_preview(
    conn: Connection, attachment_id: int, size: int, overlay: bool, kind: str
) -> Row[Any] | None:
    """The cached preview (data, width, height, last_use_time), or None."""
    params = {"k_id": attachment_id, "k_size": size, "k_overlay": overlay, "k_kind": kind}
    return cast("Row[Any] | None", conn.execute(_PREVIEW, params).first())


def touch_preview(
    conn: Connection, attachment_id: int, size: int, overlay: bool, kind: str, *, now: datetime
) -> None:
    """Record that the cached preview was served at ``now`` (least recently used ones are evicted first)."""
    params = {"k_id": attachment_id, "k_size": size, "k_overlay": overlay, "k_kind": kind, "now": now}
    conn.execute(_TOUCH_PREVIEW, params)


def preview_bytes(conn: Connection) -> int:
    """The bytes every cached preview holds together."""
    return int(conn.execute(_PREVIEW_BYTES).scalar_one())


def store_preview(
    conn: Connection,
    attachment_id: int,
    *,
    size: int,
    overlay: bool,
    preview: Any,
    now: datetime,
    budget: int,
) -> int:
    """Cache a rendered preview, evicting the least recently used ones until every preview fits in
    ``budget`` bytes; one larger than the whole budget is not kept. The number of previews evicted.

    A concurrent render of the same preview may have stored it first: that one is kept.
    """
    data = preview.data
    if len(data) > budget:
        return 0
    if conn.dialect.name == "postgresql":
        conn.execute(_CACHE_TURN)
    values = {
        "attachment_id": attachment_id,
        "max_size": size,
        "overlay": overlay,
        "content_type": preview.content_type,
        "data": data,
        "width": preview.width,
        "height": preview.height,
        "create_time": now,
        "size_bytes": len(data),
        "last_use_time": now,
    }
    try:
        with conn.begin_nested():
            conn.execute(insert(_PREVIEWS), values)
    except IntegrityError:
        return 0  # stored by the other render (or the attachment is gone)
    return _evict_beyond(conn, budget)


def _evict_beyond(conn: Connection, budget: int) -> int:
    """Delete the least recently used previews until the cache holds at most ``budget`` bytes."""
    excess = preview_bytes(conn) - budget
    evicted = 0
    while excess > 0:
        oldest = conn.execute(_LEAST_RECENTLY_USED, {"n": _EVICT_BATCH}).all()
        if not oldest:
            break
        keys = []
        for row in oldest:
            keys.append(
                {
                    "k_id": row.attachment_id,
                    "k_size": row.max_size,
                    "k_overlay": row.overlay,
                    "k_kind": row.content_type,
                }
            )
            excess -= row.size_bytes
            if excess <= 0:
                break
        conn.execute(_EVICT, keys)
        evicted += len(keys)
    return evicted
