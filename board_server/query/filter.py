"""AIP-160 filters (ListPosts over posts, RetagAttachments over attachments) and ListPosts' AIP-132
``order_by``: grammar, syntax tree, validation, errors.

lark (LALR) parses the text; the tree it builds is checked against a ``Schema`` (the fields a filter may name
and their kinds) and turned into a small immutable tree (``Node``) that query/sql.py translates into SQL for
posts and for attachments. Nothing here touches the database. The forms:
``label = "dog"``, ``label.dog``, ``label.dog >= 0.2`` (also > < <= = !=), comparisons of the schema's
fields, AND, OR, NOT, ``-``, parentheses, whitespace as an implicit AND; precedence as AIP-160 has it: NOT
binds tightest, then OR, then AND, so ``a AND b OR c`` means ``a AND (b OR c)``. ``order_by``: ``id``
(default), ``create_time``, ``label.<class>``, each ``asc``/``desc``.

The schemas: ``POSTS`` (``id``, ``user_id``, ``create_time``) and ``ATTACHMENTS`` (``id``, ``post_id``,
``create_time``, ``status = "FAILED"`` (= or != one of PENDING, TAGGED, FAILED), ``model.arch`` and
``model.archive_sha256`` (= or != a string; "" for none), and the flag ``stale``: labelled by another model
than the served one). Both take ``label``; over attachments it is about the attachment's own fraction.

A label comparison is about the post's *largest* fraction of that class over its photos, a class absent
from every photo counting as 0: ``label.dog >= 0.2`` holds when some photo is at least 20 % dog,
``label.dog < 0.1`` when none is 10 % dog or more (posts without photos included). ``label.dog`` and
``label = "dog"`` mean ``label.dog >= 0.01``, the board's default minimum.

Every mistake is an InvalidArgument whose FieldViolation (field ``filter`` or ``order_by``) names the
1-based column and what was expected there. Hostile input is bounded before any SQL exists: the text length,
the nesting depth and the number of comparisons are capped.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

from lark import Lark, Token, Tree, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from board_server.core.errors import FieldViolation, InvalidArgument, excerpt
from board_server.core.limits import MAX_ID
from board_server.core.records import AttachmentStatus

DEFAULT_MIN_LABEL_FRACTION = 0.01
MAX_FILTER_LENGTH = 1000
MAX_ORDER_BY_LENGTH = 200
MAX_DEPTH = 12  # nested AND / OR / NOT levels
MAX_COMPARISONS = 24

Op = Literal["=", "!=", "<", "<=", ">", ">="]
_OPS: tuple[Op, ...] = ("=", "!=", "<", "<=", ">", ">=")
FieldKind = Literal["id", "time", "status", "text", "flag"]
STATUSES = tuple(status.value for status in AttachmentStatus)
MAX_TEXT_VALUE = 100


@dataclass(frozen=True)
class Schema:
    """What a filter may name besides labels: each field (dotted, e.g. ``model.arch``) and its kind.

    ``id``: an integer id (= != < <= > >=); ``time``: an RFC 3339 timestamp in quotes; ``status``: = or != one
    of ``STATUSES``; ``text``: = or != a string; ``flag``: a condition alone (``stale``, ``NOT stale``).
    """

    name: str
    fields: tuple[tuple[str, FieldKind], ...]

    def kind(self, field: str) -> FieldKind | None:
        return dict(self.fields).get(field)

    def describe(self) -> str:
        names = [name for name, _ in self.fields]
        return ", ".join(['label (label = "dog")', "label.<class>", *names])


POSTS = Schema("posts", (("id", "id"), ("user_id", "id"), ("create_time", "time")))
ATTACHMENTS = Schema(
    "attachments",
    (
        ("stale", "flag"),
        ("status", "status"),
        ("id", "id"),
        ("post_id", "id"),
        ("create_time", "time"),
        ("model.arch", "text"),
        ("model.archive_sha256", "text"),
    ),
)
FIELDS = tuple(name for name, _ in POSTS.fields)


# --- the syntax tree ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelCompare:
    """The post's largest ``label`` fraction over its photos (0 when absent) ``op`` ``fraction``."""

    label: str
    op: Op
    fraction: float


@dataclass(frozen=True)
class FieldCompare:
    """A field of the schema compared with a constant: a post's ``id``, ``user_id``, ``create_time``; an
    attachment's ``status``, ``model.arch`` ... A flag is ``FieldCompare(name, "=", True)``."""

    field: str
    op: Op
    value: int | datetime | str


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


Node = LabelCompare | FieldCompare | Not | And | Or


@dataclass(frozen=True)
class OrderBy:
    """One sort key; the post id always breaks ties in the same direction. ``label`` only for key label."""

    key: Literal["id", "create_time", "label"] = "id"
    descending: bool = False
    label: str | None = None

    def canonical(self) -> str:
        name = f"label.{_quote_field(self.label or '')}" if self.key == "label" else self.key
        return f"{name} desc" if self.descending else name


ORDER_BY_ID = OrderBy()


# --- the grammar --------------------------------------------------------------------------------------------

# AIP-160's EBNF and precedence: expression (AND) > sequence (whitespace) > factor (OR) > term (NOT, -); plus
# AIP-132's order_by. Keywords are reserved (NAME never matches AND/OR/NOT): `a AND AND b` is an error.
_GRAMMAR = r"""
?filter: expression
?expression: sequence (_AND sequence)*
?sequence: factor+
?factor: term (_OR term)*
?term: simple | _NOT simple -> negation | _MINUS simple -> negation
?simple: restriction | _LPAR expression _RPAR
restriction: member (COMPARATOR arg)?
member: NAME (_DOT (NAME | STRING))*
?arg: STRING | NUMBER | NAME
order_by: order_item (_COMMA order_item)*
order_item: member NAME?
_AND: "AND"
_OR: "OR"
_NOT: "NOT"
COMPARATOR: "<=" | ">=" | "!=" | "<" | ">" | "=" | ":"
NAME: /(?!(?:AND|OR|NOT)(?![A-Za-z0-9_]))[A-Za-z_][A-Za-z0-9_]*/
STRING: /"(?:[^"\\\n]|\\.)*"/ | /'(?:[^'\\\n]|\\.)*'/
NUMBER: /[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?/
_MINUS: "-"
_LPAR: "("
_RPAR: ")"
_DOT: "."
_COMMA: ","
%ignore /[ \t\r\n]+/
"""

# Terminal names in plain words, in the order an "expected" list reads best.
_WORDS = {
    "value": "a value (a number or a quoted string)", "NAME": "a field name", "_NOT": "NOT", "_MINUS": "'-'",
    "_LPAR": "'('", "COMPARATOR": "a comparison (=, !=, <, <=, >, >=, :)", "STRING": "a quoted string",
    "NUMBER": "a number", "_DOT": "'.'", "_AND": "AND", "_OR": "OR", "_RPAR": "')'",
    "DIRECTION": "asc or desc", "_COMMA": "','", "$END": "the end",
}  # fmt: skip
_NAME_SHAPED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KEYWORDS = frozenset({"AND", "OR", "NOT"})
_INTEGER = re.compile(r"[+-]?\d+\Z")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}


@functools.cache
def _parser() -> Lark:
    return Lark(_GRAMMAR, start=["filter", "order_by"], parser="lalr", maybe_placeholders=False)


def _invalid(field: str, column: int, what: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, f"column {column}: {what}")])


def _cut(token: Token) -> str:
    """A token of the request as written, cut to 40 characters: input is never echoed whole."""
    text = str(token)
    return text if len(text) <= 40 else text[:40] + "…"


def _plain(terminals: set[str] | frozenset[str]) -> str:
    if {"STRING", "NUMBER"} <= terminals:  # after a comparison: a value (NAME there is unquoted text)
        terminals = (terminals - {"STRING", "NUMBER", "NAME"}) | {"value"}
    words = [_WORDS.get(name, name) for name in _WORDS if name in terminals]
    words += sorted(name for name in terminals if name not in _WORDS)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _syntax_error(field: str, text: str, exc: UnexpectedInput) -> InvalidArgument:
    """Lark's error in plain words: the 1-based column, what was found, what was expected there."""
    if isinstance(exc, UnexpectedCharacters):
        position = exc.pos_in_stream or 0
        char = text[position] if position < len(text) else ""
        if char and char in "\"'":
            return _invalid(field, exc.column, "unterminated string (a quote without its closing quote)")
        allowed = f"; expected {_plain(exc.allowed)}" if exc.allowed else ""
        return _invalid(field, exc.column, f"unexpected character {char!r}{allowed}")
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        expected: set[str] = set(exc.accepts or exc.expected)
        if field == "order_by" and "_COMMA" in expected and "NAME" in expected:
            expected = (expected - {"NAME"}) | {"DIRECTION"}
        at_end = token.type == "$END"
        column = len(text) + 1 if at_end else int(token.column or 1)
        found = "the end of the text" if at_end else excerpt(str(token))
        if token.type == "_RPAR" and expected == {"$END"}:
            return _invalid(field, column, "')' without a matching '('")
        return _invalid(field, column, f"expected {_plain(expected)}, found {found}")
    return _invalid(field, int(getattr(exc, "column", 1) or 1), str(exc))


def _unquote(field: str, token: Token) -> str:
    """The text of a quoted STRING token; escapes: \\\\ \\" \\' \\n \\t \\r \\uXXXX."""
    body, out, i = str(token)[1:-1], [], 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        column = int(token.column or 1) + 1 + i
        escape = body[i + 1] if i + 1 < len(body) else ""
        if escape in _ESCAPES:
            out.append(_ESCAPES[escape])
            i += 2
        elif escape == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 2 : i + 6]):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        else:
            raise _invalid(
                field, column, f"unknown escape '\\{escape}' (use \\\\ \\\" \\' \\n \\t \\r \\uXXXX)"
            )
    return "".join(out)


def _quote_field(name: str) -> str:
    if _NAME_SHAPED.match(name) and name not in _KEYWORDS:
        return name
    return _quote_string(name)


def _quote_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


def _path(field: str, member: Tree[Token]) -> list[str]:
    return [_unquote(field, t) if t.type == "STRING" else str(t) for t in _tokens(member)]


def _tokens(tree: Tree[Token]) -> Iterator[Token]:
    return (child for child in tree.children if isinstance(child, Token))


def _check_label(field: str, column: int, name: str, class_names: Sequence[str]) -> str:
    if name in class_names:
        return name
    close = difflib.get_close_matches(name, list(class_names), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    classes = ", ".join(class_names)
    raise _invalid(field, column, f"unknown label {excerpt(name)}{hint}; the model's classes are: {classes}")


# --- filter -------------------------------------------------------------------------------------------------


def parse_filter(text: str, class_names: Sequence[str], schema: Schema = POSTS) -> Node | None:
    """Parse an AIP-160 filter over the ``schema``'s resource (posts by default); None for an empty (or
    blank) filter.

    ``class_names`` are the labels a filter may name (the served model's classes).
    Raises InvalidArgument (field ``filter``) naming the column and what was expected.
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise _invalid("filter", MAX_FILTER_LENGTH + 1, f"longer than {MAX_FILTER_LENGTH} characters")
    if not text.strip():
        return None
    try:
        tree = _parser().parse(text, start="filter")
    except UnexpectedInput as exc:
        raise _syntax_error("filter", text, exc) from None
    _check_size(tree)
    return _build(tree, class_names, schema)


def _check_size(tree: Tree[Token]) -> None:
    """Depth and comparison caps, walked without recursion (a tree of 500 NOTs must not recurse)."""
    comparisons = 0
    stack: list[tuple[Tree[Token], int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data == "restriction":
            comparisons += 1
            if comparisons > MAX_COMPARISONS:
                column = _first_column(node)
                raise _invalid("filter", column, f"more than {MAX_COMPARISONS} comparisons in one filter")
            continue
        depth += 1
        if depth > MAX_DEPTH:
            raise _invalid("filter", _first_column(node), f"nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth) for child in node.children if isinstance(child, Tree))


def _first_column(tree: Tree[Token]) -> int:
    node: Tree[Token] | Token = tree
    while isinstance(node, Tree):
        node = node.children[0]
    return int(node.column or 1)


def _build(tree: Tree[Token], class_names: Sequence[str], schema: Schema) -> Node:
    if tree.data == "restriction":
        return _restriction(tree, class_names, schema)
    operands = [_build(child, class_names, schema) for child in tree.children if isinstance(child, Tree)]
    if tree.data == "negation":
        return Not(operands[0])
    if tree.data == "factor":
        return Or(tuple(_flatten(Or, operands)))
    return And(tuple(_flatten(And, operands)))  # expression (AND) and sequence (implicit AND)


def _flatten(kind: type[And] | type[Or], operands: list[Node]) -> Iterator[Node]:
    for operand in operands:
        if isinstance(operand, kind):
            yield from operand.operands
        else:
            yield operand


def _restriction(tree: Tree[Token], class_names: Sequence[str], schema: Schema) -> Node:
    member = tree.children[0]
    assert isinstance(member, Tree)
    path = _path("filter", member)
    column = _first_column(member)
    comparator = str(tree.children[1]) if len(tree.children) > 1 else None
    arg = tree.children[2] if len(tree.children) > 2 else None
    assert arg is None or isinstance(arg, Token)
    if path[0] == "label" and len(path) <= 2:
        return _label_restriction(path, column, comparator, arg, class_names)
    return _field_restriction(".".join(path), column, comparator, arg, schema)


def _label_restriction(
    path: list[str], column: int, comparator: str | None, arg: Token | None, class_names: Sequence[str]
) -> LabelCompare:
    if len(path) == 1:
        if comparator not in ("=", ":") or arg is None or arg.type == "NUMBER":
            raise _invalid("filter", column, 'label takes a class name: label = "dog" (or label.dog)')
        name = _unquote("filter", arg) if arg.type == "STRING" else str(arg)
        label = _check_label("filter", int(arg.column or column), name, class_names)
        return LabelCompare(label, ">=", DEFAULT_MIN_LABEL_FRACTION)
    label = _check_label("filter", column + len("label."), path[1], class_names)
    if comparator is None:
        return LabelCompare(label, ">=", DEFAULT_MIN_LABEL_FRACTION)
    assert arg is not None
    dotted = ".".join(path)
    return LabelCompare(label, _op(comparator, column, dotted), _fraction(arg, dotted))


def _field_restriction(
    field: str, column: int, comparator: str | None, arg: Token | None, schema: Schema
) -> Node:
    kind = schema.kind(field)
    if kind is None:
        known = schema.describe()
        raise _invalid("filter", column, f"unknown field {excerpt(field)}; filterable fields: {known}")
    if kind == "flag":
        return _flag(field, column, comparator, arg)
    if comparator is None or arg is None:
        raise _invalid("filter", column, f"{field} needs a comparison, e.g. {_EXAMPLES[kind](field)}")
    op = _op(comparator, column, field)
    if kind == "time":
        return FieldCompare(field, op, _timestamp(arg, field))
    if kind == "id":
        return FieldCompare(field, op, _id(arg, field))
    if op not in ("=", "!="):
        raise _invalid("filter", column, f"{field} takes = or !=, not {op!r}")
    return FieldCompare(field, op, _status(arg, field) if kind == "status" else _text(arg, field))


_EXAMPLES: dict[FieldKind, Callable[[str], str]] = {
    "id": lambda field: f"{field} > 100" if field == "id" else f"{field} = 3",
    "time": lambda field: f'{field} > "2026-01-01T00:00:00Z"',
    "status": lambda field: f'{field} = "FAILED"',
    "text": lambda field: f'{field} = "deeplabv3_resnet101"',
    "flag": lambda field: field,
}


def _flag(field: str, column: int, comparator: str | None, arg: Token | None) -> Node:
    """A flag alone (``stale``), or compared with true/false (``stale = false`` means ``NOT stale``)."""
    flag = FieldCompare(field, "=", True)
    if comparator is None:
        return flag
    wanted = None if arg is None else str(arg).lower()
    if comparator not in ("=", "!=") or arg is None or arg.type != "NAME" or wanted not in ("true", "false"):
        raise _invalid("filter", column, f"{field} stands alone ({field}, NOT {field}) or = true / false")
    return flag if (comparator == "=") == (wanted == "true") else Not(flag)


def _op(comparator: str, column: int, field: str) -> Op:
    for op in _OPS:
        if op == comparator:
            return op
    raise _invalid("filter", column, f"{field} takes =, !=, <, <=, > or >=, not {comparator!r}")


def _fraction(arg: Token, field: str) -> float:
    value = float(arg) if arg.type == "NUMBER" else math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise _invalid(
            "filter",
            int(arg.column or 1),
            f"{field} compares with a fraction between 0 and 1, not {_cut(arg)}",
        )
    return value


def _id(arg: Token, field: str) -> int:
    if arg.type != "NUMBER" or not _INTEGER.match(str(arg)):
        raise _invalid(
            "filter", int(arg.column or 1), f"{field} compares with an integer id, not {_cut(arg)}"
        )
    value = int(str(arg))
    if not 1 <= value <= MAX_ID:
        raise _invalid(
            "filter", int(arg.column or 1), f"{field} must be between 1 and {MAX_ID}, not {_cut(arg)}"
        )
    return value


def _status(arg: Token, field: str) -> str:
    value = (_unquote("filter", arg) if arg.type == "STRING" else str(arg)).upper()
    if value not in STATUSES:
        wanted = ", ".join(f'"{s}"' for s in STATUSES)
        raise _invalid("filter", int(arg.column or 1), f"{field} is one of {wanted}, not {_cut(arg)}")
    return value


def _text(arg: Token, field: str) -> str:
    """A quoted string or a bare name (AIP-160's unquoted text); "" stands for "none"."""
    if arg.type == "NUMBER":
        raise _invalid(
            "filter", int(arg.column or 1), f"{field} compares with a string in quotes, not {_cut(arg)}"
        )
    value = _unquote("filter", arg) if arg.type == "STRING" else str(arg)
    if len(value) > MAX_TEXT_VALUE:
        limit = f"at most {MAX_TEXT_VALUE} characters"
        raise _invalid("filter", int(arg.column or 1), f"{field} compares with {limit}")
    return value


def _timestamp(arg: Token, field: str) -> datetime:
    column = int(arg.column or 1)
    text = _unquote("filter", arg) if arg.type == "STRING" else ""
    match = _RFC3339.match(text)
    wanted = 'an RFC 3339 timestamp in quotes, e.g. "2026-01-01T00:00:00Z"'
    if match is None:
        raise _invalid("filter", column, f"{field} compares with {wanted}, not {_cut(arg)}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        offset = timedelta(0) if zulu else timedelta(hours=int(off_h), minutes=int(off_m))
        if offset >= timedelta(hours=24):
            raise ValueError("offset out of range")
        zone = timezone(-offset if sign == "-" else offset)
        micros = int((fraction or "0")[:6].ljust(6, "0"))
        parts = (int(year), int(month), int(day), int(hour), int(minute), int(second), micros)
        return datetime(*parts, tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        shown = excerpt(text)
        raise _invalid("filter", column, f"{field}: {shown} is not a valid timestamp ({exc})") from None


# --- order_by -----------------------------------------------------------------------------------------------


def parse_order_by(text: str, class_names: Sequence[str]) -> OrderBy:
    """Parse an AIP-132 order: ``id`` (the default, also for ""), ``create_time``, ``label.<class>``, each
    optionally followed by ``asc`` or ``desc``. Raises InvalidArgument (field ``order_by``)."""
    if len(text) > MAX_ORDER_BY_LENGTH:
        raise _invalid("order_by", MAX_ORDER_BY_LENGTH + 1, f"longer than {MAX_ORDER_BY_LENGTH} characters")
    if not text.strip():
        return ORDER_BY_ID
    try:
        tree = _parser().parse(text, start="order_by")
    except UnexpectedInput as exc:
        raise _syntax_error("order_by", text, exc) from None
    items = [child for child in tree.children if isinstance(child, Tree)]
    if len(items) > 1:
        column = _first_column(items[1])
        raise _invalid("order_by", column, "one sort field only (the post id always breaks ties)")
    member, *direction = items[0].children
    assert isinstance(member, Tree)
    if direction and str(direction[0]).lower() not in ("asc", "desc"):
        found = direction[0]
        assert isinstance(found, Token)
        shown = excerpt(str(found))
        raise _invalid("order_by", int(found.column or 1), f"expected asc or desc, found {shown}")
    descending = bool(direction) and str(direction[0]).lower() == "desc"
    path = _path("order_by", member)
    column = _first_column(member)
    if path in (["id"], ["create_time"]):
        return OrderBy("id" if path == ["id"] else "create_time", descending)
    if len(path) == 2 and path[0] == "label":
        label = _check_label("order_by", column + len("label."), path[1], class_names)
        return OrderBy("label", descending, label)
    raise _invalid(
        "order_by", column, f"cannot sort by {excerpt('.'.join(path))}; use id, create_time or label.<class>"
    )


# --- the canonical text -------------------------------------------------------------------------------------


def canonical_filter(node: Node | None) -> str:
    """A filter text that parses back to ``node`` ("" for None): what page tokens are bound to."""
    if node is None:
        return ""
    if isinstance(node, LabelCompare):
        return f"label.{_quote_field(node.label)} {node.op} {node.fraction!r}"
    if isinstance(node, FieldCompare):
        return _field_text(node)
    if isinstance(node, Not):  # AIP-160 has no NOT NOT: a negated negation goes in parentheses
        inner = canonical_filter(node.operand)
        return f"NOT ({inner})" if isinstance(node.operand, And | Or | Not) else f"NOT {inner}"
    joiner = " AND " if isinstance(node, And) else " OR "
    return joiner.join(_grouped(operand) for operand in node.operands)


def _field_text(node: FieldCompare) -> str:
    if node.value is True:
        return node.field  # a flag
    if isinstance(node.value, datetime):
        stamp = node.value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return f'{node.field} {node.op} "{stamp}"'
    if isinstance(node.value, str):
        return f"{node.field} {node.op} {_quote_string(node.value)}"
    return f"{node.field} {node.op} {node.value}"


def _grouped(node: Node) -> str:
    text = canonical_filter(node)
    return f"({text})" if isinstance(node, And | Or) else text
