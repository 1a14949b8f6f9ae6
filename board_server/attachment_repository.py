"""Queries of attachments, their labels and the tagging queue: each takes a Connection inside the caller's
transaction, never commits, and returns rows or raises domain errors (like board_server/repository.py).

The queue needs no extra table: PENDING attachment rows are claimed with a lease by a conditional UPDATE
(``claim``), which is atomic on SQLite (one writer) and on PostgreSQL (the second updater re-checks the WHERE
after the first commits), so exactly one replica wins. Results are written only ``WHERE claimed_by = :me``,
so a worker whose lease expired and was taken over cannot overwrite the new owner's work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from board_server.errors import AttachmentNotFound, PostNotFound
from board_server.models import Attachment, AttachmentLabel, Post

_ATTACHMENTS, _LABELS, _POSTS = (cast(Table, m.__table__) for m in (Attachment, AttachmentLabel, Post))

PENDING, TAGGED, FAILED = "PENDING", "TAGGED", "FAILED"

# Everything but the bytes: metadata reads never drag images or masks over the wire.
_META = [c for c in _ATTACHMENTS.c if c.name not in ("data", "mask_png")]

_READ_META = select(*_META).where(_ATTACHMENTS.c.id == bindparam("id"))
_LIST_META = select(*_META).where(_ATTACHMENTS.c.post_id == bindparam("post_id")).order_by(_ATTACHMENTS.c.id)
_POST_EXISTS = select(_POSTS.c.id).where(_POSTS.c.id == bindparam("id"))
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


@dataclass(frozen=True)
class TagResult:
    """What the model said about one image."""

    labels: Sequence[tuple[str, float, int]]  # (name, fraction, pixels)
    mask_png: bytes
    arch: str
    weights: str
    sha256: str | None
    untrained: bool


def add_attachment(conn: Connection, values: dict[str, Any]) -> Row[Any]:
    """Insert an attachment (PENDING); raise PostNotFound if the post does not exist."""
    try:
        return conn.execute(_INSERT, values).one()
    except IntegrityError as exc:
        if "foreign key" in str(exc.orig).lower():
            raise PostNotFound(int(values["post_id"])) from exc
        raise


def read_attachment(conn: Connection, attachment_id: int) -> Row[Any]:
    """The attachment's metadata (no bytes); raise AttachmentNotFound."""
    row = conn.execute(_READ_META, {"id": attachment_id}).first()
    if row is None:
        raise AttachmentNotFound(attachment_id)
    return row


def list_attachments(conn: Connection, post_id: int) -> Sequence[Row[Any]]:
    """The post's attachments (metadata) ordered by id; raise PostNotFound."""
    rows = conn.execute(_LIST_META, {"post_id": post_id}).all()
    if not rows and conn.execute(_POST_EXISTS, {"id": post_id}).first() is None:
        raise PostNotFound(post_id)
    return rows


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


def list_posts_with_label(
    conn: Connection, *, label: str, min_fraction: float, user_id: int, after_id: int, limit: int
) -> Sequence[Row[Any]]:
    """Up to ``limit`` posts (of ``user_id`` unless 0) with id > ``after_id`` having an attachment tagged
    ``label`` covering at least ``min_fraction`` of the image, ordered by id."""
    matching = select(_LABELS.c.post_id).where(_LABELS.c.name == label, _LABELS.c.fraction >= min_fraction)
    statement = select(_POSTS).where(_POSTS.c.id > after_id, _POSTS.c.id.in_(matching))
    if user_id:
        statement = statement.where(_POSTS.c.user_id == user_id)
    return conn.execute(statement.order_by(_POSTS.c.id).limit(limit)).all()


# --- the tagging queue -------------------------------------------------------------------------------------

_DUE = (
    select(_ATTACHMENTS.c.id)
    .where(
        _ATTACHMENTS.c.status == PENDING,
        _ATTACHMENTS.c.next_attempt_time <= bindparam("now"),
        or_(_ATTACHMENTS.c.lease_until.is_(None), _ATTACHMENTS.c.lease_until < bindparam("now")),
    )
    .order_by(_ATTACHMENTS.c.next_attempt_time, _ATTACHMENTS.c.id)
    .limit(bindparam("n"))
)
_DUE_LOCKED = _DUE.with_for_update(skip_locked=True)
_CLAIM = (
    update(_ATTACHMENTS)
    .where(
        _ATTACHMENTS.c.id == bindparam("attachment_id"),
        _ATTACHMENTS.c.status == PENDING,
        or_(_ATTACHMENTS.c.lease_until.is_(None), _ATTACHMENTS.c.lease_until < bindparam("now")),
    )
    .values(
        claimed_by=bindparam("worker"),
        lease_until=bindparam("lease_until"),
        attempts=_ATTACHMENTS.c.attempts + 1,
    )
)
_IMAGE = select(_ATTACHMENTS.c.data, _ATTACHMENTS.c.attempts).where(_ATTACHMENTS.c.id == bindparam("id"))


def _mine(attachment_id: int, worker: str) -> Any:
    return and_(_ATTACHMENTS.c.id == attachment_id, _ATTACHMENTS.c.claimed_by == worker)


def claim_next(conn: Connection, worker: str, now: datetime, lease_until: datetime, scan: int) -> int | None:
    """Claim the oldest due PENDING attachment in one transaction; its id, or None when there is none.

    On PostgreSQL the scan skips rows another replica is claiming right now (FOR UPDATE SKIP LOCKED)
    instead of queueing behind its lock; on SQLite the single writer makes the scan and the claim atomic
    anyway. The conditional UPDATE stays the arbiter on both.
    """
    for row in conn.execute(_DUE_LOCKED, {"now": now, "n": scan}):
        if claim(conn, int(row.id), worker, now, lease_until):
            return int(row.id)
    return None


def claim(conn: Connection, attachment_id: int, worker: str, now: datetime, lease_until: datetime) -> bool:
    """Take the lease on a PENDING attachment; False when another worker holds it or it is done."""
    params = {"attachment_id": attachment_id, "worker": worker, "now": now, "lease_until": lease_until}
    return conn.execute(_CLAIM, params).rowcount == 1


def read_image(conn: Connection, attachment_id: int) -> tuple[bytes, int] | None:
    """The bytes and attempt count of an attachment (None when it was deleted meanwhile)."""
    row = conn.execute(_IMAGE, {"id": attachment_id}).first()
    return None if row is None else (bytes(row.data), int(row.attempts))


def finish_tagged(
    conn: Connection, attachment_id: int, worker: str, now: datetime, result: TagResult
) -> bool:
    """Store labels, mask and provenance and mark TAGGED, if ``worker`` still holds the lease."""
    done = conn.execute(
        update(_ATTACHMENTS)
        .where(_mine(attachment_id, worker))
        .values(
            status=TAGGED,
            mask_png=result.mask_png,
            model_arch=result.arch,
            model_weights=result.weights,
            model_sha256=result.sha256,
            model_untrained=result.untrained,
            failure_reason=None,
            claimed_by=None,
            lease_until=None,
            update_time=now,
        )
        .returning(_ATTACHMENTS.c.post_id)
    ).first()
    if done is None:
        return False
    conn.execute(delete(_LABELS).where(_LABELS.c.attachment_id == attachment_id))
    if result.labels:
        conn.execute(
            insert(_LABELS),
            [
                {
                    "attachment_id": attachment_id,
                    "post_id": done.post_id,
                    "name": n,
                    "fraction": f,
                    "pixels": p,
                }
                for n, f, p in result.labels
            ],
        )
    return True


def finish_failed(conn: Connection, attachment_id: int, worker: str, now: datetime, reason: str) -> bool:
    """Mark FAILED with ``reason`` if ``worker`` still holds the lease."""
    statement = (
        update(_ATTACHMENTS)
        .where(_mine(attachment_id, worker))
        .values(status=FAILED, failure_reason=reason, claimed_by=None, lease_until=None, update_time=now)
    )
    return conn.execute(statement).rowcount == 1


def reschedule(
    conn: Connection, attachment_id: int, worker: str, next_attempt: datetime, reason: str | None
) -> bool:
    """Give the lease back and make the attachment due again at ``next_attempt`` (still PENDING)."""
    statement = (
        update(_ATTACHMENTS)
        .where(_mine(attachment_id, worker))
        .values(next_attempt_time=next_attempt, failure_reason=reason, claimed_by=None, lease_until=None)
    )
    return conn.execute(statement).rowcount == 1
