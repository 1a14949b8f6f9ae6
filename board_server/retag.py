"""Re-tagging when the served model changes: ask TorchServe which model it serves, queue what another made.

``RetagAttachments`` (admins) and ``board-server retag --stale`` both: describe the served model (the
handler answers a ``describe`` request without running the network), record it in ``served_models`` for
every replica, then mark the attachments the filter selects ``retag_pending``. The tagging worker takes new
uploads first and re-tags after; a re-tagged attachment keeps its status and labels until the new labels
replace them in one transaction, so a search never loses or repeats a post meanwhile.

The filter of RetagAttachments is AIP-160 over attachments (board_server/post_filter.py, schema
``ATTACHMENTS``), compiled here to a condition on the attachments table with bound parameters: ``stale``
(TAGGED by another model than the served one, by archive SHA-256, or by an unknown one), ``status =
"FAILED"``, ``post_id = 3``, ``model.arch = "..."``, ``label.dog`` (this attachment's fraction), AND, OR, NOT;
empty means ``stale``. It chooses among the attachments that are TAGGED or FAILED and not queued already
(PENDING ones are queued for their first tagging).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, exists, false, func, not_, or_, true

from board_server import served_model
from board_server import tagging_queue as queue
from board_server.accounts import Caller
from board_server.attachment_repository import TAGGED
from board_server.database import Database
from board_server.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from board_server.models import Attachment, AttachmentLabel
from board_server.post_filter import (
    ATTACHMENTS,
    COMPARE,
    And,
    FieldCompare,
    LabelCompare,
    Node,
    Not,
    Op,
    Or,
    canonical_filter,
    parse_filter,
)
from board_server.served_model import ServedModel, ServedModels

logger = logging.getLogger(__name__)
audit = logging.getLogger("board.audit")

Describe = Callable[[], Mapping[str, Any]]
_ATTACHMENTS, _LABELS = (cast(Table, model.__table__) for model in (Attachment, AttachmentLabel))
_A = _ATTACHMENTS.c
_COLUMNS = {
    "id": _A.id,
    "post_id": _A.post_id,
    "create_time": _A.create_time,
    "status": _A.status,
    "model.arch": _A.model_arch,
    "model.archive_sha256": _A.model_archive_sha256,
}
_TEXT_FIELDS = ("model.arch", "model.archive_sha256")


def parse_retag_filter(text: str, class_names: Sequence[str]) -> Node:
    """The tree of a RetagAttachments filter ("" means ``stale``); InvalidArgument (field ``filter``) naming
    the column and what was expected, unknown labels listing ``class_names``."""
    return parse_filter(text, class_names, ATTACHMENTS) or FieldCompare("stale", "=", True)


def attachment_where(node: Node, served_archive_sha256: str | None) -> ColumnElement[bool]:
    """The SQL condition on ``attachments`` for a filter tree over attachments; constants are bound.

    ``stale``: TAGGED, and labelled by a model whose archive SHA-256 is not ``served_archive_sha256`` or
    is unknown (every TAGGED attachment when the served model's is unknown). Text fields compare NULL as "".
    A label compares the attachment's own fraction (0 when absent), as ListPosts compares a post's largest.
    """
    if isinstance(node, And):
        return and_(*(attachment_where(operand, served_archive_sha256) for operand in node.operands))
    if isinstance(node, Or):
        return or_(*(attachment_where(operand, served_archive_sha256) for operand in node.operands))
    if isinstance(node, Not):
        return not_(attachment_where(node.operand, served_archive_sha256))
    if isinstance(node, LabelCompare):
        return _label_clause(node)
    if node.field == "stale":
        sha = _A.model_archive_sha256
        other = true() if served_archive_sha256 is None else or_(sha.is_(None), sha != served_archive_sha256)
        return and_(_A.status == TAGGED, other)
    column: Any = _COLUMNS[node.field]
    if node.field in _TEXT_FIELDS:
        column = func.coalesce(column, "")  # NULL ("none") compares as "", and NOT stays two-valued
    return COMPARE[node.op](column, node.value)


def _label_clause(node: LabelCompare) -> ColumnElement[bool]:
    """``fraction of label in this attachment (0 when absent) op value`` as (NOT) EXISTS."""
    label, value = node.label, node.fraction

    def some(op: Op, fraction: float) -> ColumnElement[bool]:
        condition = COMPARE[op](_LABELS.c.fraction, fraction)
        found = exists().where(_LABELS.c.attachment_id == _A.id, _LABELS.c.name == label, condition)
        return found.correlate(_ATTACHMENTS)

    if node.op in (">=", ">"):
        return true() if node.op == ">=" and value <= 0 else some(node.op, value)
    if node.op == "<":
        return false() if value <= 0 else not_(some(">=", value))
    if node.op == "<=":
        return not_(some(">", value))
    equal = not_(some(">", 0.0)) if value <= 0 else some("=", value)
    return equal if node.op == "=" else not_(equal)


class Retagging:
    """Find out which model TorchServe serves and queue re-tags of attachments labelled by another."""

    def __init__(self, db: Database, models: ServedModels, describe: Describe | None) -> None:
        self._db = db
        self._models = models
        self._describe = describe

    async def refresh(self) -> ServedModel:
        """Describe the served model and record it for every replica; FailedPrecondition without it."""
        if self._describe is None:
            raise FailedPrecondition(
                "this server has no segmentation target: it cannot ask which model is served"
            )
        describe = self._describe
        try:
            answer = await asyncio.get_running_loop().run_in_executor(None, describe)
        except Exception as exc:
            logger.warning("describing the served model failed: %s", exc)
            raise FailedPrecondition(f"TorchServe did not describe its model: {type(exc).__name__}") from exc
        model = ServedModel.from_answer(answer)
        await self._db.run_write(lambda conn: served_model.store(conn, self._models.name, model))
        self._models.forget()
        return model

    async def retag(self, caller: Caller, filter_text: str) -> tuple[int, ServedModel]:
        """Queue re-tags of the TAGGED or FAILED attachments the filter selects (admins; "" means ``stale``);
        their count and the served model. Raises Unauthenticated, PermissionDenied, InvalidArgument (the
        filter), FailedPrecondition (no segmentation target, or TorchServe did not describe its model)."""
        if not (caller.admin or caller.unrestricted):
            if not caller.signed_in:
                raise Unauthenticated("re-tagging needs an admin's access token")
            raise PermissionDenied("only admins queue re-tags")
        known = await self._models.class_names()
        node = parse_retag_filter(filter_text, known)  # a mistake is reported without asking TorchServe
        model = await self.refresh()
        if model.class_names != known:
            node = parse_retag_filter(filter_text, model.class_names)
        where = attachment_where(node, model.archive_sha256)
        count = await self._db.run_write(
            lambda conn: queue.request_retag(conn, datetime.now(UTC), where=where)
        )
        audit.info(
            "Re-tag queued; count=%d; filter=%s; model=%s/%s; by=%s",
            count,
            canonical_filter(node),
            model.arch,
            (model.archive_sha256 or "unknown")[:12],
            caller.actor,
        )
        return count, model
