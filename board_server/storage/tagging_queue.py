"""The tagging queue: attachment rows claimed with a lease, and the outcomes stored under that claim only.

The queue needs no extra table. Work comes in this order: PENDING uploads, then re-tags (``retag_pending``;
they keep their status and old labels until the new ones land). A row is claimed by a conditional UPDATE
(``claim``) that is atomic on SQLite (one writer) and on PostgreSQL (the second updater re-checks the WHERE
after the first commits), so exactly one worker of one process of one replica wins it.

Fencing is per claim: every claim writes a fresh random ``claim_token``, and results and reschedules are
stored only ``WHERE claim_token = :token``. A worker whose lease expired and was taken over (a paused process,
a slow call) can no longer write, even from the same process as the new owner.

Every change a watcher can see (a claim, an outcome, a reschedule, a retry, a queued re-tag) notifies the
replicas' listeners in the same transaction (storage/notifications.py).

Like every row module (storage/users.py): each function takes a Connection inside the caller's transaction
and never commits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    case,
    delete,
    false,
    insert,
    or_,
    select,
    true,
    update,
)

from board_server.core.records import AttachmentStatus, TagResult
from board_server.storage.notifications import notify_attachments_changed
from board_server.storage.tables import Attachment, AttachmentLabel, AttachmentPreview

_ATTACHMENTS, _LABELS, _PREVIEWS = (
    cast(Table, m.__table__) for m in (Attachment, AttachmentLabel, AttachmentPreview)
)
_A = _ATTACHMENTS.c


@dataclass(frozen=True)
class Claim:
    """A claimed attachment: the token that fences every write of this claim, and what the worker needs."""

    attachment_id: int
    token: str
    attempts: int  # counting this one
    retag: bool  # a re-tag of an attachment that keeps its status and labels until the new ones land
    took_over: bool  # the previous claim's lease had expired without an outcome (its worker died or hung)
    create_time: datetime
    traceparent: str | None = None  # the upload's trace, which the tagging joins


def _free(now: Any) -> Any:
    return or_(_A.lease_until.is_(None), _A.lease_until < now)


_NOW: Any = bindparam("now")
_SCAN_COLUMNS = (_A.id, _A.attempts, _A.lease_until, _A.create_time, _A.traceparent)
_DUE = (
    select(*_SCAN_COLUMNS)
    .where(_A.status == AttachmentStatus.PENDING, _A.next_attempt_time <= _NOW, _free(_NOW))
    .order_by(_A.next_attempt_time, _A.id)
    .limit(bindparam("n"))
)
_RETAG_DUE = (
    select(*_SCAN_COLUMNS)
    .where(
        _A.retag_pending == true(),
        _A.status != AttachmentStatus.PENDING,
        _A.next_attempt_time <= _NOW,
        _free(_NOW),
    )
    .order_by(_A.next_attempt_time, _A.id)
    .limit(bindparam("n"))
)
# PostgreSQL: skip rows another replica is claiming right now instead of queueing behind its lock.
_SCANS = (
    (_DUE.with_for_update(skip_locked=True), False),
    (_RETAG_DUE.with_for_update(skip_locked=True), True),
)
_CLAIM = (
    update(_ATTACHMENTS)
    .where(
        _A.id == bindparam("attachment_id"),
        or_(
            _A.status == AttachmentStatus.PENDING,
            and_(_A.retag_pending == true(), _A.status != AttachmentStatus.PENDING),
        ),
        _free(_NOW),
    )
    .values(
        claimed_by=bindparam("worker"),
        claim_token=bindparam("token"),
        lease_until=bindparam("lease_until"),
        attempts=_A.attempts + 1,
    )
)
_IMAGE = select(_A.data).where(_A.id == bindparam("id"))
_RELEASED = {"claimed_by": None, "claim_token": None, "lease_until": None}


def _held(attachment_id: int, token: str) -> Any:
    return and_(_A.id == attachment_id, _A.claim_token == token)


def claim_next(
    conn: Connection, worker: str, now: datetime, lease_until: datetime, scan: int
) -> Claim | None:
    """Claim the oldest due PENDING attachment, else the oldest due re-tag; None when there is none.

    The scan reads up to ``scan`` candidates; the conditional UPDATE in ``claim`` stays the arbiter.
    """
    for statement, retag in _SCANS:
        for row in conn.execute(statement, {"now": now, "n": scan}):
            token = claim(conn, int(row.id), worker, now, lease_until)
            if token is not None:
                return Claim(
                    attachment_id=int(row.id),
                    token=token,
                    attempts=int(row.attempts) + 1,
                    retag=retag,
                    took_over=row.lease_until is not None,
                    create_time=row.create_time,
                    traceparent=row.traceparent,
                )
    return None


def claim(
    conn: Connection, attachment_id: int, worker: str, now: datetime, lease_until: datetime
) -> str | None:
    """Take the lease on a due attachment; its fresh claim token, or None when another worker holds it or
    there is nothing to do. ``worker`` is recorded for people reading the table; only the token fences."""
    token = secrets.token_hex(16)
    params = {
        "attachment_id": attachment_id,
        "worker": worker,
        "token": token,
        "now": now,
        "lease_until": lease_until,
    }
    if conn.execute(_CLAIM, params).rowcount != 1:
        return None
    notify_attachments_changed(conn, (attachment_id,))
    return token


def read_image(conn: Connection, attachment_id: int) -> bytes | None:
    """The bytes of an attachment (None when it was deleted meanwhile)."""
    row = conn.execute(_IMAGE, {"id": attachment_id}).first()
    return None if row is None else bytes(row.data)


def finish_tagged(conn: Connection, attachment_id: int, token: str, now: datetime, result: TagResult) -> bool:
    """Under the claim ``token``: replace the labels, store mask and provenance, mark TAGGED, clear a pending
    re-tag and drop the cached previews, all in the caller's transaction. False when the claim was lost."""
    done = conn.execute(
        update(_ATTACHMENTS)
        .where(_held(attachment_id, token))
        .values(
            status=AttachmentStatus.TAGGED,
            mask_png=result.mask_png,
            model_arch=result.model.arch,
            model_weights=result.model.weights,
            model_sha256=result.model.sha256,
            model_untrained=result.model.untrained,
            model_archive_sha256=result.model.archive_sha256,
            retag_pending=False,
            failure_reason=None,
            update_time=now,
            **_RELEASED,
        )
        .returning(_A.post_id)
    ).first()
    if done is None:
        return False
    notify_attachments_changed(conn, (attachment_id,))
    conn.execute(delete(_LABELS).where(_LABELS.c.attachment_id == attachment_id))
    conn.execute(delete(_PREVIEWS).where(_PREVIEWS.c.attachment_id == attachment_id))
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


def finish_failed(conn: Connection, attachment_id: int, token: str, now: datetime, reason: str) -> bool:
    """Under the claim ``token``: mark FAILED with ``reason``. A failed re-tag keeps its status and old labels
    and only records the reason. False when the claim was lost."""
    statement = (
        update(_ATTACHMENTS)
        .where(_held(attachment_id, token))
        .values(
            status=case((_A.retag_pending == true(), _A.status), else_=AttachmentStatus.FAILED),
            failure_reason=reason,
            retag_pending=False,
            update_time=now,
            **_RELEASED,
        )
    )
    return _changed(conn, attachment_id, conn.execute(statement).rowcount == 1)


def reschedule(
    conn: Connection,
    attachment_id: int,
    token: str,
    next_attempt: datetime,
    reason: str | None,
    *,
    count_attempt: bool = True,
) -> bool:
    """Under the claim ``token``: give the lease back and make the work due again at ``next_attempt``.

    ``count_attempt`` False gives the claim's attempt back (the model server was down or refused our key:
    nothing was learned about this image, so it must not bring the attachment nearer to FAILED).
    False when the claim was lost.
    """
    values: dict[str, Any] = {"next_attempt_time": next_attempt, "failure_reason": reason, **_RELEASED}
    if not count_attempt:
        values["attempts"] = case((_A.attempts > 0, _A.attempts - 1), else_=0)
    statement = update(_ATTACHMENTS).where(_held(attachment_id, token)).values(**values)
    return _changed(conn, attachment_id, conn.execute(statement).rowcount == 1)


def requeue_failed(conn: Connection, attachment_id: int, now: datetime) -> bool:
    """FAILED → PENDING with the attempts reset, due now (the RetryAttachment RPC). False when the attachment
    does not exist or is not FAILED."""
    statement = (
        update(_ATTACHMENTS)
        .where(_A.id == attachment_id, _A.status == AttachmentStatus.FAILED)
        .values(
            status=AttachmentStatus.PENDING,
            attempts=0,
            next_attempt_time=now,
            failure_reason=None,
            retag_pending=False,
            update_time=now,
            **_RELEASED,
        )
    )
    return _changed(conn, attachment_id, conn.execute(statement).rowcount == 1)


def request_retag(
    conn: Connection,
    now: datetime,
    *,
    attachment_id: int | None = None,
    post_id: int | None = None,
    unless_archive_sha256: str | None = None,
    where: ColumnElement[bool] | None = None,
) -> int:
    """Queue re-tags of TAGGED attachments (one, or all), skipping those already labelled by the model whose
    archive SHA-256 is ``unless_archive_sha256``; their status and labels stay until the new labels land.
    ``where`` (a condition on the attachments table, e.g. RetagAttachments' filter) chooses among the TAGGED
    and FAILED ones instead. Returns how many were queued."""
    tagged, failed = AttachmentStatus.TAGGED, AttachmentStatus.FAILED
    status = _A.status == tagged if where is None else _A.status.in_((tagged, failed))
    conditions = [status, _A.retag_pending == false()]
    if where is not None:
        conditions.append(where)
    if attachment_id is not None:
        conditions.append(_A.id == attachment_id)
    if post_id is not None:
        conditions.append(_A.post_id == post_id)
    if unless_archive_sha256 is not None:
        conditions.append(
            or_(_A.model_archive_sha256.is_(None), _A.model_archive_sha256 != unless_archive_sha256)
        )
    statement = (
        update(_ATTACHMENTS)
        .where(*conditions)
        .values(
            retag_pending=True,
            attempts=0,
            next_attempt_time=now,
            # A FAILED one keeps saying why it failed until the re-tag lands.
            failure_reason=case((_A.status == AttachmentStatus.FAILED, _A.failure_reason), else_=None),
        )
    )
    queued = int(conn.execute(statement).rowcount)
    if queued:
        notify_attachments_changed(conn, None if attachment_id is None else (attachment_id,))
    return queued


def _changed(conn: Connection, attachment_id: int, changed: bool) -> bool:
    """``changed``, the replicas' listeners told when it is True."""
    if changed:
        notify_attachments_changed(conn, (attachment_id,))
    return changed
