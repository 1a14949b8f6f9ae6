"""Unit tests of clients.segment that need no server: answer parsing, error bodies, tokens."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from clients.segment import (
    SegmentAuthError,
    SegmentBadAnswerError,
    SegmentRejectedError,
    SegmentServerError,
    TokenSource,
    parse_answer,
    parse_identity,
)


def test_error_body_becomes_rejected_error_with_its_status() -> None:
    body = json.dumps({"error": "too big", "code": "too_large", "status": 413}).encode()
    with pytest.raises(SegmentRejectedError) as info:
        parse_answer(body)
    assert (info.value.status, info.value.code, info.value.message) == (413, "too_large", "too big")


def test_answer_is_parsed_into_a_segmentation() -> None:
    body = {
        "width": 2,
        "height": 1,
        "classes": [{"index": 0, "name": "background", "pixels": 2, "fraction": 1.0}],
        "mask": base64.b64encode(b"\x89PNG...").decode(),
        "model": {"arch": "a", "weights": "w", "sha256": None, "untrained": True},
    }
    result = parse_answer(json.dumps(body).encode())
    assert (result.width, result.height) == (2, 1)
    assert result.classes[0].name == "background" and result.mask_png == b"\x89PNG..."


@pytest.mark.parametrize(
    "body", [b"not json", b'{"width": 1}', b"[]", b'{"width":1,"height":1,"classes":[],"mask":"%%"}']
)
def test_malformed_answers_are_bad_answer_errors(body: bytes) -> None:
    with pytest.raises(SegmentBadAnswerError):
        parse_answer(body)


def test_a_handler_failure_body_is_a_server_error_not_a_rejection() -> None:
    body = json.dumps({"error": "inference failed: boom", "code": "inference_failed", "status": 500})
    with pytest.raises(SegmentServerError) as raised:
        parse_answer(body.encode())
    assert not isinstance(raised.value, SegmentRejectedError | SegmentBadAnswerError)
    assert raised.value.status == 500


def test_describe_answer_is_the_model_identity() -> None:
    model = {"arch": "a", "weights": "w", "sha256": None, "untrained": True, "archive_sha256": "ab"}
    assert parse_identity(json.dumps({"model": model}).encode()) == model
    for body in (b"{}", b'{"model": 3}', b"nope"):
        with pytest.raises(SegmentBadAnswerError):
            parse_identity(body)


def test_token_source_rereads_the_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "key_file.json"
    keys.write_text(json.dumps({"inference": {"key": "a"}, "management": {"key": "m"}}))
    tokens = TokenSource.from_key_file(keys)
    assert tokens.key("inference") == "a" and tokens.key("management") == "m"
    keys.write_text(json.dumps({"inference": {"key": "b"}, "management": {"key": "m"}}))
    assert tokens.key("inference") == "b"
    assert TokenSource(inference_key="x").key("inference") == "x"
    assert TokenSource().key("inference") is None


def test_unreadable_key_file_is_an_auth_error(tmp_path: Path) -> None:
    with pytest.raises(SegmentAuthError, match="cannot read"):
        TokenSource.from_key_file(tmp_path / "missing.json").key("inference")


def test_a_plain_key_file_holds_the_inference_key_only(tmp_path: Path) -> None:
    key_file = tmp_path / "inference.key"
    key_file.write_text("AbC123xy\n")
    tokens = TokenSource.from_key_file(key_file)
    assert tokens.key("inference") == "AbC123xy"
    with pytest.raises(SegmentAuthError, match="only the inference key"):
        tokens.key("management")
    key_file.write_text("")
    with pytest.raises(SegmentAuthError, match="cannot read"):
        tokens.key("inference")
