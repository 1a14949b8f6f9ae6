"""The ONE translator from a filter tree (query/filter.py) to a SQL condition with bound parameters, for the
two things a filter selects: posts (ListPosts) and attachments (RetagAttachments).

A label comparison is an (NOT) EXISTS on attachment_labels correlated with the row: over posts it is about
the post's largest fraction of the class over its photos, over attachments about the attachment's own
(one label row per class), a class absent counting as 0 in both. The rest is the same for both targets:
AND, OR (labels that must be present folded into one EXISTS, which PostgreSQL runs as a semi-join), NOT,
and field comparisons on the target's columns.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, exists, false, func, not_, or_, true

from board_server.core.records import AttachmentStatus
from board_server.query.filter import And, LabelCompare, Node, Not, Op, Or
from board_server.storage.tables import Attachment, AttachmentLabel, Post

# Each comparison as a function of two operands: a column and a bound value.
COMPARE: dict[Op, Callable[[Any, Any], ColumnElement[bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

_POSTS, _ATTACHMENTS, _LABELS = (cast(Table, m.__table__) for m in (Post, Attachment, AttachmentLabel))


@dataclass(frozen=True)
class Target:
    """What a filter selects: the table, the column of each field it may name, the label rows' column that
    points at a row of the table, and the conditions its flags stand for."""

    table: Table
    columns: Mapping[str, ColumnElement[Any]]
    label_owner: ColumnElement[Any]
    flags: Mapping[str, ColumnElement[bool]] = field(default_factory=dict)


POSTS = Target(
    _POSTS,
    {name: _POSTS.c[name] for name in ("id", "user_id", "create_time")},
    _LABELS.c.post_id,
)


def attachments(served_archive_sha256: str | None) -> Target:
    """Attachments, with ``stale`` meaning TAGGED by another model than the one whose archive SHA-256 is
    ``served_archive_sha256`` (by any model at all when that is unknown). Text fields compare NULL as ""."""
    a = _ATTACHMENTS.c
    sha = a.model_archive_sha256
    other = true() if served_archive_sha256 is None else or_(sha.is_(None), sha != served_archive_sha256)
    return Target(
        _ATTACHMENTS,
        {
            "id": a.id,
            "post_id": a.post_id,
            "create_time": a.create_time,
            "status": a.status,
            # NULL ("none") compares as "", and NOT stays two-valued.
            "model.arch": func.coalesce(a.model_arch, ""),
            "model.archive_sha256": func.coalesce(a.model_archive_sha256, ""),
        },
        _LABELS.c.attachment_id,
        {"stale": and_(a.status == AttachmentStatus.TAGGED, other)},
    )


def where_clause(node: Node, target: Target, after: tuple[Op, int] | None = None) -> ColumnElement[bool]:
    """The SQL condition on ``target.table`` for a filter tree; every constant is a bound parameter.

    ``after`` (e.g. ``(">", 1200)``) repeats an id order's keyset bound inside every label subquery:
    redundant for the result, but PostgreSQL's merge joins then start at the cursor instead of scanning the
    labels of every earlier row on each page.
    """
    if isinstance(node, And):
        return and_(*(where_clause(operand, target, after) for operand in node.operands))
    if isinstance(node, Or):
        return _any_of(node, target, after)
    if isinstance(node, Not):
        return not_(where_clause(node.operand, target, after))
    if isinstance(node, LabelCompare):
        return _label_clause(node, target, after)
    if node.field in target.flags:
        return target.flags[node.field]
    return COMPARE[node.op](target.columns[node.field], node.value)


def _label_exists(
    condition: ColumnElement[bool], target: Target, after: tuple[Op, int] | None
) -> ColumnElement[bool]:
    """Some label row of the target's row satisfies ``condition``."""
    owner = target.label_owner
    bound = [] if after is None else [COMPARE[after[0]](owner, after[1])]
    return exists().where(owner == target.table.c.id, condition, *bound).correlate(target.table)


def _has(label: str, op: Op, fraction: float) -> ColumnElement[bool]:
    return and_(_LABELS.c.name == label, COMPARE[op](_LABELS.c.fraction, fraction))


def _label_clause(node: LabelCompare, target: Target, after: tuple[Op, int] | None) -> ColumnElement[bool]:
    """``max(fraction of label over the row's label rows, 0 when absent) op value`` as (NOT) EXISTS."""
    label, value = node.label, node.fraction

    def some(op: Op, fraction: float) -> ColumnElement[bool]:
        return _label_exists(_has(label, op, fraction), target, after)

    if node.op in (">=", ">"):
        return true() if node.op == ">=" and value <= 0 else some(node.op, value)
    if node.op == "<":
        return false() if value <= 0 else not_(some(">=", value))
    if node.op == "<=":
        return not_(some(">", value))
    equal = not_(some(">", 0.0)) if value <= 0 else and_(some("=", value), not_(some(">", value)))
    return equal if node.op == "=" else not_(equal)


def _any_of(node: Or, target: Target, after: tuple[Op, int] | None) -> ColumnElement[bool]:
    """OR; the labels that must be present (``label.a OR label.b >= 0.2``) become one EXISTS (a semi-join
    on PostgreSQL, where an OR of EXISTS runs as hashed subplans over every row)."""
    present = [
        operand
        for operand in node.operands
        if isinstance(operand, LabelCompare) and operand.op in (">", ">=") and operand.fraction > 0
    ]
    if len(present) < 2:
        return or_(*(where_clause(operand, target, after) for operand in node.operands))
    merged = _label_exists(or_(*(_has(p.label, p.op, p.fraction) for p in present)), target, after)
    rest = [where_clause(operand, target, after) for operand in node.operands if operand not in present]
    return or_(merged, *rest)
