"""Unit tests of clients.segment that need no server: answer parsing, error bodies, tokens."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from clients.segment import (
    SegmentAuthError,
    SegmentRejectedError,
    SegmentServerError,
    TokenSource,
    parse_answer,
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


@pytest.mark.parametrize("body", [b"not json", b'{"width": 1}'])
def test_unexpected_answers_are_server_errors(body: bytes) -> None:
    with pytest.raises(SegmentServerError):
        parse_answer(body)


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
