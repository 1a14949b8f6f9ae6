"""The ListPosts query: a filter tree as SQL (query/sql.py), an order and keyset paging. Like the row
modules of storage, it takes a Connection, never commits and returns rows.

Labels are tested with correlated EXISTS subqueries on attachment_labels (post_id is copied there), so a
post is never repeated however many of its photos match. Each page is one SELECT, which sees one snapshot on
SQLite and on PostgreSQL; a re-tag replaces an attachment's labels in one transaction.

Paging is by keyset: the cursor is the (sort key, post id) of a page's last row and the next page holds the
rows strictly after it in the order. What that guarantees while other writers change labels:

* ``id`` and ``create_time`` orders: a post's sort key never changes, so no post is returned twice, and a
  post that matches the filter both before and after a re-tag is never skipped (its page sees one or the
  other state, and both match).
* ``label.X`` order: the key is the post's largest fraction of X (only posts with X in some photo are
  listed). A post whose key did not change between two pages is returned exactly once; a post re-tagged to a
  new key may move across the cursor, and is then returned twice or not at all — a ranking by a changing
  value cannot be paged without a snapshot held across calls, which a stateless page token does not have.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    Table,
    and_,
    exists,
    or_,
    select,
)

from board_server.core.errors import FieldViolation, InvalidArgument
from board_server.core.limits import LABEL_MAX, MAX_ID
from board_server.query.filter import (
    DEFAULT_MIN_LABEL_FRACTION,
    And,
    FieldCompare,
    LabelCompare,
    Node,
    Op,
    OrderBy,
    canonical_filter,
)
from board_server.query.sql import COMPARE, POSTS, where_clause
from board_server.storage.tables import AttachmentLabel, Post

_POSTS, _LABELS = (cast(Table, model.__table__) for model in (Post, AttachmentLabel))


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last post's id and its sort key (None for the id order)."""

    post_id: int
    key: float | datetime | None = None


@dataclass(frozen=True)
class SearchPage:
    """The rows of one page (the posts' columns; with a label order also ``sort_fraction``) and the cursor
    of the next page, None on the last one."""

    rows: Sequence[Row[Any]]
    next_cursor: Cursor | None


# --- order and keyset ---------------------------------------------------------------------------------------


def search_posts(
    conn: Connection, where: Node | None, order: OrderBy, cursor: Cursor | None, limit: int
) -> SearchPage:
    """Up to ``limit`` posts matching ``where`` in ``order``, strictly after ``cursor`` (None: from the
    start), and the cursor of the next page. Raises ValueError for a limit below 1 or a cursor whose key
    does not fit the order (``cursor_from_dict`` checks tokens before that)."""
    rows = conn.execute(search_statement(where, order, cursor, limit)).all()
    if len(rows) <= limit:
        return SearchPage(rows, None)
    last = rows[limit - 1]
    if order.key == "id":
        return SearchPage(rows[:limit], Cursor(int(last.id)))
    key = last.create_time if order.key == "create_time" else float(last.sort_fraction)
    return SearchPage(rows[:limit], Cursor(int(last.id), key))


def search_statement(where: Node | None, order: OrderBy, cursor: Cursor | None, limit: int) -> Select[Any]:
    """The SELECT behind ``search_posts`` (``limit`` + 1 rows: the extra one says a next page exists), for
    EXPLAIN. Raises ValueError like ``search_posts``."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if cursor is not None:
        _check_cursor(cursor, order)
    post_id, created = _POSTS.c.id, _POSTS.c.create_time
    after: tuple[Op, int] | None = None
    if order.key == "label":
        statement = _by_label(order, cursor)
    elif order.key == "id":
        statement = select(_POSTS).order_by(post_id.desc() if order.descending else post_id)
        if cursor is not None:
            beyond: Op = "<" if order.descending else ">"
            after = (beyond, cursor.post_id)
            statement = statement.where(COMPARE[beyond](post_id, cursor.post_id))
    else:
        ordering = [created.desc(), post_id.desc()] if order.descending else [created, post_id]
        statement = select(_POSTS).order_by(*ordering)
        if cursor is not None:
            statement = statement.where(_after_key(created, post_id, cursor, order.descending))
    if where is not None:
        statement = statement.where(where_clause(where, POSTS, after))
    return statement.limit(limit + 1)


def _after_key(
    key: ColumnElement[Any], post_id: ColumnElement[Any], cursor: Cursor, descending: bool
) -> ColumnElement[bool]:
    """(key, post_id) strictly after the cursor, written so that an index on ``key`` bounds the scan."""
    value = cursor.key
    if descending:
        return and_(key <= value, or_(key < value, post_id < cursor.post_id))
    return and_(key >= value, or_(key > value, post_id > cursor.post_id))


def _by_label(order: OrderBy, cursor: Cursor | None) -> Select[Any]:
    """Posts with ``order.label`` in some photo, by their largest fraction of it.

    Walks the label's rows in fraction order (the index on (name, fraction, post_id)) and keeps each
    post's best row only (no better row of the same post: a larger fraction, or an equal one on a lower
    attachment id), so the LIMIT stops the walk after one page instead of aggregating every post first.
    """
    ranked, better = _LABELS.alias("ranked"), _LABELS.alias("better")
    is_best = ~(
        exists()
        .where(
            better.c.post_id == ranked.c.post_id,
            better.c.name == ranked.c.name,
            or_(
                better.c.fraction > ranked.c.fraction,
                and_(better.c.fraction == ranked.c.fraction, better.c.attachment_id < ranked.c.attachment_id),
            ),
        )
        .correlate(ranked)
    )
    statement = (
        select(*_POSTS.c, ranked.c.fraction.label("sort_fraction"))
        .select_from(ranked.join(_POSTS, _POSTS.c.id == ranked.c.post_id))
        .where(ranked.c.name == order.label, is_best)
    )
    if cursor is not None:
        statement = statement.where(_after_key(ranked.c.fraction, ranked.c.post_id, cursor, order.descending))
    fraction, post_id = ranked.c.fraction, ranked.c.post_id
    ordering = [fraction.desc(), post_id.desc()] if order.descending else [fraction, post_id]
    return statement.order_by(*ordering)


# --- the older request fields, cursors, what a page token is bound to ---------------------------------------


def _check_cursor(cursor: Cursor, order: OrderBy) -> None:
    wanted: type | None = {"id": None, "create_time": datetime, "label": float}[order.key]
    fits = cursor.key is None if wanted is None else isinstance(cursor.key, wanted)
    if not fits or not 1 <= cursor.post_id <= MAX_ID:
        raise ValueError(f"cursor {cursor} does not fit the order {order.canonical()!r}")


def cursor_to_dict(cursor: Cursor) -> dict[str, int | float | str]:
    """JSON-ready form of a cursor, for a page token: ``{"id": 7}`` plus ``create_time`` (ISO 8601 text) or
    ``fraction`` depending on the order."""
    data: dict[str, int | float | str] = {"id": cursor.post_id}
    if isinstance(cursor.key, datetime):
        data["create_time"] = cursor.key.isoformat()
    elif isinstance(cursor.key, float):
        data["fraction"] = cursor.key
    return data


def cursor_from_dict(data: Mapping[str, object], order: OrderBy) -> Cursor:
    """The cursor of ``cursor_to_dict``, checked against ``order``; InvalidArgument on ``page_token``."""
    post_id = data.get("id")
    try:
        if not isinstance(post_id, int) or isinstance(post_id, bool):
            raise ValueError("no post id")
        if order.key == "create_time":
            stamp = data.get("create_time")
            if not isinstance(stamp, str):
                raise ValueError("no create_time")
            parsed = datetime.fromisoformat(stamp)
            if parsed.tzinfo is None:
                raise ValueError("create_time without a time zone")
            # In UTC here, where a time that has no UTC equivalent (year 1 at +14:00) is refused, instead of
            # an OverflowError when the query binds it.
            cursor = Cursor(post_id, parsed.astimezone(UTC))
        elif order.key == "label":
            fraction = data.get("fraction")
            if not isinstance(fraction, int | float) or isinstance(fraction, bool):
                raise ValueError("no fraction")
            cursor = Cursor(post_id, float(fraction))
        else:
            cursor = Cursor(post_id)
        _check_cursor(cursor, order)
    except (ValueError, OverflowError):
        description = "is not a page token of this list; pass the next_page_token received"
        raise InvalidArgument([FieldViolation("page_token", description)]) from None
    return cursor


def legacy_filter(label: str, min_label_fraction: float, user_id: int) -> Node | None:
    """The tree of ListPosts' older fields, to be combined with the parsed filter by ``all_of``: ``label``
    (any text up to 100 characters, as before: a name no model uses finds nothing, and labels of an earlier
    model stay searchable), ``min_label_fraction`` (with ``label``; 0 → 0.01), ``user_id`` (0 → any user).
    Raises InvalidArgument naming those fields, with the messages they always had.
    """
    violations: list[FieldViolation] = []
    nodes: list[Node] = []
    if label and not label.strip():
        violations.append(FieldViolation("label", "must not be blank"))
    elif len(label) > LABEL_MAX:
        violations.append(
            FieldViolation("label", f"must be at most {LABEL_MAX} characters (got {len(label)})")
        )
    elif "\x00" in label:
        violations.append(FieldViolation("label", "must not contain NUL characters"))
    if math.isnan(min_label_fraction) or not 0 <= min_label_fraction <= 1:
        violations.append(FieldViolation("min_label_fraction", "must be between 0 and 1 (0 means 0.01)"))
    elif label:
        nodes.append(LabelCompare(label, ">=", min_label_fraction or DEFAULT_MIN_LABEL_FRACTION))
    if not 0 <= user_id <= MAX_ID:
        violations.append(FieldViolation("user_id", "must be a positive id, or 0 for every user"))
    elif user_id:
        nodes.append(FieldCompare("user_id", "=", user_id))
    if violations:
        raise InvalidArgument(violations)
    return all_of(*nodes)


def all_of(*nodes: Node | None) -> Node | None:
    """The AND of the given trees (None ones skipped); None when there are none."""
    present: list[Node] = []
    for node in nodes:
        present.extend(node.operands if isinstance(node, And) else [] if node is None else [node])
    if not present:
        return None
    return present[0] if len(present) == 1 else And(tuple(present))


def canonical_query(where: Node | None, order: OrderBy) -> str:
    """The filter and the order as one canonical text: a page token is valid only for the same query."""
    return f"filter={canonical_filter(where)}\norder_by={order.canonical()}"
