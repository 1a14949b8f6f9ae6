"""The filter language (board_server/query/filter.py) of ListPosts (posts) and RetagAttachments
(attachments), and ListPosts' order_by: trees, precedence, quoting, caps and the errors a caller reads. Pure
functions: no database, no server."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from board_server.core.errors import InvalidArgument
from board_server.query.filter import (
    ATTACHMENTS,
    DEFAULT_MIN_LABEL_FRACTION,
    MAX_COMPARISONS,
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    And,
    FieldCompare,
    LabelCompare,
    Node,
    Not,
    Or,
    OrderBy,
    canonical_filter,
    parse_filter,
    parse_order_by,
)
from board_server.query.post_search import all_of, legacy_filter
from seg_handler.image_policy import VOC_CLASSES

VOC = VOC_CLASSES
PRESENT = DEFAULT_MIN_LABEL_FRACTION


def label(name: str, op: str = ">=", fraction: float = PRESENT) -> LabelCompare:
    return LabelCompare(name, op, fraction)  # type: ignore[arg-type]


def parse(text: str) -> Node | None:
    return parse_filter(text, VOC)


def error_of(text: str, *, order: bool = False) -> str:
    """The one field violation's description; asserts the field it names."""
    with pytest.raises(InvalidArgument) as caught:
        parse_order_by(text, VOC) if order else parse_filter(text, VOC)
    [violation] = caught.value.violations
    assert violation.field == ("order_by" if order else "filter")
    return violation.description


# --- what each form means -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ('label = "dog"', label("dog")),
        ("label = dog", label("dog")),
        ("label:dog", label("dog")),
        ("label.dog", label("dog")),
        ("label.dog >= 0.2", label("dog", ">=", 0.2)),
        ("label.dog > .5", label("dog", ">", 0.5)),
        ("label.dog < 1", label("dog", "<", 1.0)),
        ("label.dog <= 0", label("dog", "<=", 0.0)),
        ("label.dog = 2.5e-1", label("dog", "=", 0.25)),
        ("label.dog != 0.25", label("dog", "!=", 0.25)),
        ('label."dog" > 0.1', label("dog", ">", 0.1)),
        ("id = 7", FieldCompare("id", "=", 7)),
        ("user_id != 3", FieldCompare("user_id", "!=", 3)),
        ("id <= 9223372036854775807", FieldCompare("id", "<=", 2**63 - 1)),
        (
            'create_time > "2026-01-01T00:00:00Z"',
            FieldCompare("create_time", ">", datetime(2026, 1, 1, tzinfo=UTC)),
        ),
        (
            "create_time <= '2026-01-01t10:30:00.25+02:00'",
            FieldCompare("create_time", "<=", datetime(2026, 1, 1, 8, 30, 0, 250000, tzinfo=UTC)),
        ),
        (
            'create_time < "2025-12-31 23:00:00-01:30"',
            FieldCompare("create_time", "<", datetime(2026, 1, 1, 0, 30, tzinfo=UTC)),
        ),
        ("label.person > 0.3 AND NOT label.car", And((label("person", ">", 0.3), Not(label("car"))))),
        ("-label.car", Not(label("car"))),
        (
            "(label.cat OR label.dog) AND user_id = 3",
            And((Or((label("cat"), label("dog"))), FieldCompare("user_id", "=", 3))),
        ),
    ],
)
def test_each_form_parses_to_its_tree(text: str, tree: Node) -> None:
    assert parse(text) == tree


def test_blank_filter_is_no_filter() -> None:
    assert parse("") is None
    assert parse("  \t\n ") is None


# --- precedence: AIP-160 binds OR tighter than AND ----------------------------------------------------------


def test_or_binds_tighter_than_and() -> None:
    assert parse("label.cat AND label.dog OR label.cow") == And(
        (label("cat"), Or((label("dog"), label("cow"))))
    )
    assert parse("label.cat OR label.dog AND label.cow") == And(
        (Or((label("cat"), label("dog"))), label("cow"))
    )


def test_whitespace_is_an_implicit_and_weaker_than_or() -> None:
    assert parse("label.cat label.dog OR label.cow") == And((label("cat"), Or((label("dog"), label("cow")))))
    assert parse("label.cat label.dog") == parse("label.cat AND label.dog")


def test_not_binds_tightest() -> None:
    assert parse("NOT label.cat OR label.dog") == Or((Not(label("cat")), label("dog")))
    assert parse("NOT (label.cat OR label.dog)") == Not(Or((label("cat"), label("dog"))))


def test_parentheses_override_precedence_and_chains_flatten() -> None:
    assert parse("(label.cat AND label.dog) OR label.cow") == Or(
        (And((label("cat"), label("dog"))), label("cow"))
    )
    assert parse("label.cat AND (label.dog AND label.cow)") == And((label("cat"), label("dog"), label("cow")))
    assert parse("((((label.cat))))") == label("cat")


def test_keywords_are_case_sensitive_and_reserved() -> None:
    # Lower-case "and" is a field name (unknown), not the operator.
    assert "unknown field 'and'" in error_of("label.cat and label.dog")
    assert "column 15" in error_of("label.cat AND AND label.dog")


# --- quoting ------------------------------------------------------------------------------------------------


def test_strings_take_either_quote_and_escapes() -> None:
    assert parse("label = 'dog'") == label("dog")
    assert parse('label = "d\\u006fg"') == label("dog")
    names = ('potted "plant"', "back\\slash", "tab\there")
    for name in names:
        escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
        assert parse_filter(f'label = "{escaped}"', names) == label(name)


def test_unknown_escape_is_an_error_at_its_column() -> None:
    assert error_of('label = "d\\og"').startswith("column 11: unknown escape '\\o'")


def test_unterminated_string_names_where_it_starts() -> None:
    assert error_of('label = "dog').startswith("column 9: unterminated string")


# --- errors: position and what was expected -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("label.dog AND", "column 14: expected a field name, NOT, '-' or '(', found the end of the text"),
        ("label.dog AND )", "column 15: expected a field name, NOT, '-' or '(', found ')'"),
        ("(label.dog", "column 11: expected ')', found the end of the text"),
        ("label.dog )", "column 11: ')' without a matching '('"),
        ("label.dog >=", "column 13: expected a value (a number or a quoted string), found the end"),
        ("label.dog # 3", "column 11: unexpected character '#'; expected"),
        ('"dog"', "column 1: expected a field name, NOT, '-' or '(', found '\"dog\"'"),
        ("--label.dog", "column 2: expected a field name or '(', found '-'"),
        ("NOT NOT label.dog", "column 5: expected a field name or '(', found 'NOT'"),
    ],
)
def test_syntax_errors_name_the_column_and_what_was_expected(text: str, message: str) -> None:
    assert error_of(text).startswith(message)


def test_unknown_label_lists_the_model_classes() -> None:
    description = error_of("label.dgo > 0.2")
    assert description.startswith("column 7: unknown label 'dgo' (did you mean 'dog'?)")
    assert "the model's classes are: background, aeroplane, bicycle" in description
    assert description.endswith("tvmonitor")
    assert "unknown label 'unicorn'" in error_of('label = "unicorn"')


def test_the_class_list_is_the_one_passed_in() -> None:
    assert parse_filter("label.class_3", ("class_0", "class_3")) == label("class_3")
    with pytest.raises(InvalidArgument, match="the model's classes are: class_0, class_3"):
        parse_filter("label.dog", ("class_0", "class_3"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("label.dog > 1.5", "column 13: label.dog compares with a fraction between 0 and 1, not 1.5"),
        ("label.dog >= -0.1", "column 14: label.dog compares with a fraction between 0 and 1, not -0.1"),
        ("label.dog > 1e999", "column 13: label.dog compares with a fraction between 0 and 1"),
        ('label.dog > "0.2"', "column 13: label.dog compares with a fraction"),
        ("id > 0", "column 6: id must be between 1 and 9223372036854775807, not 0"),
        ("user_id = -3", "column 11: user_id must be between 1 and 9223372036854775807, not -3"),
        ("id < 9223372036854775808", "column 6: id must be between 1 and 9223372036854775807"),
        ("id = 1.5", "column 6: id compares with an integer id, not 1.5"),
        ("create_time > 2026", "column 15: create_time compares with an RFC 3339 timestamp in quotes"),
        ('create_time > "2026-01-01"', "column 15: create_time compares with an RFC 3339 timestamp"),
        (
            'create_time > "2026-02-30T00:00:00Z"',
            "column 15: create_time: '2026-02-30T00:00:00Z' is not a valid",
        ),
        (
            'create_time > "2026-01-01T24:00:00Z"',
            "column 15: create_time: '2026-01-01T24:00:00Z' is not a valid",
        ),
        ('create_time > "2026-01-01T00:00:00+24:00"', "column 15: create_time: "),
        ('create_time > "0001-01-01T00:00:00+01:00"', "column 15: create_time: "),
        ("label.dog : 0.2", "column 1: label.dog takes =, !=, <, <=, > or >=, not ':'"),
        ("label > 0.2", 'column 1: label takes a class name: label = "dog"'),
        ("label", 'column 1: label takes a class name: label = "dog"'),
        ("id", "column 1: id needs a comparison, e.g. id > 100"),
        ("title = x", "column 1: unknown field 'title'; filterable fields: label"),
        ("label.dog.tail", "column 1: unknown field 'label.dog.tail'"),
    ],
)
def test_values_and_fields_are_checked(text: str, message: str) -> None:
    assert error_of(text).startswith(message)


# --- caps against hostile input -----------------------------------------------------------------------------


def test_text_longer_than_the_cap_is_refused_before_parsing() -> None:
    text = "label.dog OR " * 100 + "label.cat"
    assert len(text) > MAX_FILTER_LENGTH
    assert error_of(text) == f"column {MAX_FILTER_LENGTH + 1}: longer than {MAX_FILTER_LENGTH} characters"


def test_too_many_comparisons_are_refused() -> None:
    fits = " OR ".join(["label.dog"] * MAX_COMPARISONS)
    assert isinstance(parse(fits), Or)
    assert f"more than {MAX_COMPARISONS} comparisons" in error_of(fits + " OR label.cat")


def test_deep_nesting_is_refused_without_recursing() -> None:
    def nested(levels: int) -> str:
        return "NOT (" * levels + "label.dog" + ")" * levels

    assert parse(nested(MAX_DEPTH)) is not None
    assert f"nested deeper than {MAX_DEPTH} levels" in error_of(nested(MAX_DEPTH + 1))
    # 165 levels of parentheses and NOT fit in the length cap; refused, not a RecursionError.
    deepest = nested((MAX_FILTER_LENGTH - len("label.dog")) // len("NOT ()"))
    assert len(deepest) <= MAX_FILTER_LENGTH
    assert "nested deeper" in error_of(deepest)


def test_redundant_parentheses_do_not_count_as_depth() -> None:
    assert parse("(" * 400 + "label.dog" + ")" * 400) == label("dog")


# --- canonical text -----------------------------------------------------------------------------------------


def test_canonical_text_is_explicit_and_parses_back() -> None:
    tree = parse('label.cat label = "dog" OR -id > 5 AND create_time >= "2026-01-01T01:00:00+01:00"')
    text = canonical_filter(tree)
    assert text == (
        'label.cat >= 0.01 AND (label.dog >= 0.01 OR NOT id > 5) AND create_time >= "2026-01-01T00:00:00Z"'
    )
    assert parse(text) == tree
    assert canonical_filter(None) == ""


def test_equivalent_spellings_share_one_canonical_text() -> None:
    spellings = ['label = "dog"', "label:dog", "label.dog", "label.dog >= 0.01", "(label.dog)", "label.'dog'"]
    assert {canonical_filter(parse(text)) for text in spellings} == {"label.dog >= 0.01"}


def test_canonical_text_quotes_class_names_that_are_not_names() -> None:
    classes = ("potted plant", "AND")
    tree = parse_filter('label = "potted plant" OR label = "AND"', classes)
    assert canonical_filter(tree) == 'label."potted plant" >= 0.01 OR label."AND" >= 0.01'
    assert parse_filter(canonical_filter(tree), classes) == tree


_leaves = st.one_of(
    st.builds(
        LabelCompare,
        st.sampled_from(VOC),
        st.sampled_from(["=", "!=", "<", "<=", ">", ">="]),
        st.floats(0, 1, allow_nan=False),
    ),
    st.builds(
        FieldCompare,
        st.sampled_from(["id", "user_id"]),
        st.sampled_from(["=", "!=", "<", "<=", ">", ">="]),
        st.integers(1, 2**63 - 1),
    ),
    st.builds(
        FieldCompare,
        st.just("create_time"),
        st.sampled_from(["<", ">="]),
        st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    ),
)
_trees = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.builds(And, st.lists(inner, min_size=2, max_size=3).map(tuple)),
        st.builds(Or, st.lists(inner, min_size=2, max_size=3).map(tuple)),
    ),
    max_leaves=8,
)


def _flat(tree: Node) -> Node:
    """The tree as the parser builds it: nested ANDs (ORs) merged into their parent."""
    if isinstance(tree, Not):
        return Not(_flat(tree.operand))
    if isinstance(tree, And | Or):
        operands: list[Node] = []
        for operand in map(_flat, tree.operands):
            same = type(operand) is type(tree)
            operands.extend(operand.operands if same else [operand])  # type: ignore[union-attr]
        return type(tree)(tuple(operands))
    return tree


@settings(max_examples=200, deadline=None)
@given(_trees)
def test_any_tree_round_trips_through_its_canonical_text(tree: Node) -> None:
    text = canonical_filter(tree)
    if len(text) <= MAX_FILTER_LENGTH:
        assert parse(text) == _flat(tree)


# --- the attachments' schema (RetagAttachments) -------------------------------------------------------------

STALE = FieldCompare("stale", "=", True)


def parse_attachments(text: str) -> Node | None:
    return parse_filter(text, VOC, ATTACHMENTS)


def attachment_error_of(text: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse_attachments(text)
    [violation] = caught.value.violations
    assert violation.field == "filter"
    return violation.description


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("stale", STALE),
        ("NOT stale", Not(STALE)),
        ("stale = true", STALE),
        ("stale = false", Not(STALE)),
        ("stale != TRUE", Not(STALE)),
        ('status = "FAILED"', FieldCompare("status", "=", "FAILED")),
        ("status != tagged", FieldCompare("status", "!=", "TAGGED")),
        ("post_id = 3", FieldCompare("post_id", "=", 3)),
        ("id >= 10", FieldCompare("id", ">=", 10)),
        (
            'create_time < "2026-01-01T00:00:00Z"',
            FieldCompare("create_time", "<", datetime(2026, 1, 1, tzinfo=UTC)),
        ),
        ('model.arch = "deeplabv3_resnet101"', FieldCompare("model.arch", "=", "deeplabv3_resnet101")),
        ("model.arch != deeplabv3_resnet101", FieldCompare("model.arch", "!=", "deeplabv3_resnet101")),
        ('model.archive_sha256 = ""', FieldCompare("model.archive_sha256", "=", "")),
        ("label.dog > 0.2", label("dog", ">", 0.2)),
        (
            'stale AND post_id = 3 OR status = "FAILED"',
            And((STALE, Or((FieldCompare("post_id", "=", 3), FieldCompare("status", "=", "FAILED"))))),
        ),
        (
            '(stale OR status = "FAILED") AND NOT label.person',
            And((Or((STALE, FieldCompare("status", "=", "FAILED"))), Not(label("person")))),
        ),
    ],
)
def test_each_attachment_form_parses_to_its_tree(text: str, tree: Node) -> None:
    assert parse_attachments(text) == tree


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user_id = 3", "column 1: unknown field 'user_id'; filterable fields: label (label = \"dog\"), "),
        ("stale > 1", "column 1: stale stands alone (stale, NOT stale) or = true / false"),
        ("stale = yes", "column 1: stale stands alone"),
        ('status = "DONE"', 'column 10: status is one of "PENDING", "TAGGED", "FAILED", not "DONE"'),
        ('status > "FAILED"', "column 1: status takes = or !=, not '>'"),
        ("status", 'column 1: status needs a comparison, e.g. status = "FAILED"'),
        ("post_id", "column 1: post_id needs a comparison, e.g. post_id = 3"),
        ("post_id = 0", "column 11: post_id must be between 1 and 9223372036854775807, not 0"),
        ("model.arch = 3", "column 14: model.arch compares with a string in quotes, not 3"),
        ('model.arch < "a"', "column 1: model.arch takes = or !=, not '<'"),
        ("model.weights = x", "column 1: unknown field 'model.weights'"),
        (f'model.arch = "{"x" * 101}"', "column 14: model.arch compares with at most 100 characters"),
        ("create_time > 2026", "column 15: create_time compares with an RFC 3339 timestamp in quotes"),
        ("label.dgo", "column 7: unknown label 'dgo' (did you mean 'dog'?); the model's classes are:"),
    ],
)
def test_attachment_fields_and_values_are_checked(text: str, message: str) -> None:
    assert attachment_error_of(text).startswith(message)


def test_the_schemas_keep_their_fields_apart() -> None:
    assert "unknown field 'stale'" in error_of("stale")
    assert "unknown field 'status'" in error_of('status = "FAILED"')
    fields = attachment_error_of("title = x").split("filterable fields: ")[1]
    assert fields == (
        'label (label = "dog"), label.<class>, stale, status, id, post_id, create_time, model.arch, '
        "model.archive_sha256"
    )


def test_attachment_filters_round_trip_through_their_canonical_text() -> None:
    text = (
        '(stale OR status = "failed") AND NOT stale = false AND model.arch != \'a "quoted" arch\' '
        'AND model.archive_sha256 = "" AND post_id = 3 AND label.dog >= 0.2'
    )
    tree = parse_attachments(text)
    canonical = canonical_filter(tree)
    assert canonical == (
        '(stale OR status = "FAILED") AND NOT (NOT stale) AND model.arch != "a \\"quoted\\" arch" AND '
        'model.archive_sha256 = "" AND post_id = 3 AND label.dog >= 0.2'
    )
    assert parse_attachments(canonical) == tree


# --- order_by -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "order"),
    [
        ("", OrderBy("id")),
        ("id", OrderBy("id")),
        ("id desc", OrderBy("id", True)),
        ("create_time", OrderBy("create_time")),
        ("create_time asc", OrderBy("create_time")),
        ("  create_time   DESC ", OrderBy("create_time", True)),
        ("label.dog desc", OrderBy("label", True, "dog")),
        ("label.dog", OrderBy("label", False, "dog")),
    ],
)
def test_order_by_forms(text: str, order: OrderBy) -> None:
    assert parse_order_by(text, VOC) == order


def test_order_by_canonical_text() -> None:
    assert [
        parse_order_by(t, VOC).canonical() for t in ("", "id DESC", "create_time asc", "label.dog desc")
    ] == [
        "id",
        "id desc",
        "create_time",
        "label.dog desc",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("create_time down", "column 13: expected asc or desc, found 'down'"),
        ("id, create_time", "column 5: one sort field only"),
        ("title", "column 1: cannot sort by 'title'; use id, create_time or label.<class>"),
        ("label.dgo desc", "column 7: unknown label 'dgo' (did you mean 'dog'?); the model's classes are:"),
        ("id desc desc", "column 9: expected ',' or the end, found 'desc'"),
        ("id desc,", "column 9: expected a field name, found the end of the text"),
        ("create_time >", "column 13: expected asc or desc, ',' or the end, found '>'"),
        ("desc", "column 1: cannot sort by 'desc'"),
    ],
)
def test_order_by_errors_name_the_column(text: str, message: str) -> None:
    assert error_of(text, order=True).startswith(message)


# --- the older request fields -------------------------------------------------------------------------------


def test_legacy_fields_become_a_tree_combined_by_and() -> None:
    assert legacy_filter("", 0.0, 0) is None
    assert legacy_filter("", 0.5, 0) is None  # min_label_fraction only counts with a label, as before
    assert legacy_filter("dog", 0.0, 0) == label("dog")
    assert legacy_filter("dog", 0.3, 7) == And((label("dog", ">=", 0.3), FieldCompare("user_id", "=", 7)))
    combined = all_of(parse("label.cat OR label.cow"), legacy_filter("dog", 0.0, 7))
    assert combined == And((Or((label("cat"), label("cow"))), label("dog"), FieldCompare("user_id", "=", 7)))
    assert all_of(None, None) is None


def test_the_legacy_label_is_any_text_and_keeps_its_old_checks() -> None:
    # Not checked against the model's classes: labels of an earlier model stay searchable, and a name no
    # model uses finds nothing (as ListPosts(label=...) always did).
    assert legacy_filter("no-such-class", 0.0, 0) == label("no-such-class")
    assert canonical_filter(label("no-such-class")) == 'label."no-such-class" >= 0.01'
    with pytest.raises(InvalidArgument) as caught:
        legacy_filter("x" * 101, 1.5, -1)
    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("label", "must be at most 100 characters (got 101)"),
        ("min_label_fraction", "must be between 0 and 1 (0 means 0.01)"),
        ("user_id", "must be a positive id, or 0 for every user"),
    ]
    for blank in ("  ", "\t"):
        with pytest.raises(InvalidArgument, match=re.escape("label: must not be blank")):
            legacy_filter(blank, 0.0, 0)
    with pytest.raises(InvalidArgument, match="min_label_fraction"):
        legacy_filter("dog", float("nan"), 0)
