"""seg_handler.keys without a TorchServe: key file parsing, the inference key file, when renewals are due.

The renewal itself, against a real TorchServe whose keys expire every 30 seconds, is in
tests/e2e/test_tagging_faults.py.
"""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from seg_handler.launcher import keys


def key_file(path: Path, inference_expires: datetime, management_expires: datetime) -> Path:
    def stamp(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # TorchServe writes nanoseconds

    path.write_text(
        json.dumps(
            {
                "management": {"key": "mgmt1234", "expiration time": stamp(management_expires)},
                "inference": {"key": "infe5678", "expiration time": stamp(inference_expires)},
                "API": {"key": "apik9012"},
            }
        )
    )
    return path


def test_torchserve_expiration_times_with_nanoseconds_are_parsed_as_utc() -> None:
    parsed = keys.parse_expiration("2026-11-30T06:13:15.295082784Z")
    assert parsed == datetime(2026, 11, 30, 6, 13, 15, 295082, tzinfo=UTC)
    assert keys.parse_expiration("2026-11-30T06:13:15Z").tzinfo == UTC


def test_the_key_file_is_read_by_kind_and_the_api_key_never_expires(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    found = keys.read_key_file(key_file(tmp_path / "key_file.json", now, now + timedelta(minutes=1)))
    assert found["inference"] == keys.Key("infe5678", now)
    assert found["management"].expires == now + timedelta(minutes=1)
    assert found["API"] == keys.Key("apik9012", None)


@pytest.mark.parametrize(
    "text", ["", "{", "[]", '{"inference": {"key": "s3cr3tk3y"}}', '{"management": "s3cr3tk3y"}']
)
def test_an_unreadable_key_file_is_an_error_that_does_not_quote_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "key_file.json"
    path.write_text(text)
    with pytest.raises(keys.KeyRenewalError) as raised:
        keys.read_key_file(path)
    assert "s3cr3tk3y" not in str(raised.value)


def test_the_inference_key_file_holds_the_key_alone_owner_only_and_is_replaced_atomically(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inference.key"
    assert keys.write_inference_key(path, "first")
    assert path.read_text() == "first\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    inode = path.stat().st_ino
    assert not keys.write_inference_key(path, "first")  # unchanged: not rewritten
    assert path.stat().st_ino == inode
    assert keys.write_inference_key(path, "second")
    assert path.read_text() == "second\n" and path.stat().st_ino != inode  # a new file, renamed over
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["inference.key"]  # no temporary left behind


def test_nothing_is_renewed_before_half_the_lifetime_and_the_next_step_is_due_then(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=10)
    path = key_file(tmp_path / "key_file.json", now + timedelta(minutes=8), now + timedelta(minutes=9))
    # An unreachable management URL: a renewal attempt would raise.
    renewer = keys.KeyRenewer(path, tmp_path / "inference.key", "http://127.0.0.1:1", lifetime)
    wait = renewer.step(now)
    assert (tmp_path / "inference.key").read_text() == "infe5678\n"
    assert wait == pytest.approx(min(keys.MAX_SLEEP_S, 180.0))
    assert keys.KeyRenewer(path, tmp_path / "i.key", "http://127.0.0.1:1", timedelta(minutes=2)).step(
        now
    ) == (keys.MAX_SLEEP_S)


def test_a_key_due_for_renewal_that_cannot_be_renewed_is_an_error(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    path = key_file(tmp_path / "key_file.json", now + timedelta(minutes=4), now + timedelta(minutes=9))
    renewer = keys.KeyRenewer(path, tmp_path / "inference.key", "http://127.0.0.1:1", timedelta(minutes=10))
    with pytest.raises(keys.KeyRenewalError, match="cannot reach") as raised:
        renewer.step(now)
    assert "apik9012" not in str(raised.value)
