"""The tagging queue: PENDING attachment rows claimed with a lease, and the outcomes stored under that lease.

The queue needs no extra table: PENDING attachment rows are claimed with a lease by a conditional UPDATE
(``claim``), which is atomic on SQLite (one writer) and on PostgreSQL (the second updater re-checks the WHERE
after the first commits), so exactly one replica wins. Results are written only ``WHERE claimed_by = :me``,
so a worker whose lease expired and was taken over cannot overwrite the new owner's work.

Like board_server/repository.py: each function takes a Connection inside the caller's transaction and never
commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, bindparam, delete, insert, or_, select, update

from board_server.attachment_repository import FAILED, PENDING, TAGGED
from board_server.models import Attachment, AttachmentLabel

_ATTACHMENTS, _LABELS = (cast(Table, m.__table__) for m in (Attachment, AttachmentLabel))


@dataclass(frozen=True)
class TagResult:
    """What the model said about one image."""

    labels: Sequence[tuple[str, float, int]]  # (name, fraction, pixels)
    mask_png: bytes
    arch: str
    weights: str
    sha256: str | None
    untrained: bool


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
