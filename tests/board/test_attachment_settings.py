"""Settings of attachments and the tagging worker: flags over environment over defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from board_server.runtime.config import Settings, add_arguments, load_settings


def parse(argv: list[str], env: dict[str, str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_settings(parser.parse_args(argv), env=env, cwd=Path("/srv/board"))


def test_defaults_leave_tagging_off_with_a_20_mib_limit() -> None:
    settings = parse([], {})
    assert settings.segmentation_target == ""
    assert settings.segmentation_token_files == ()
    assert settings.max_attachment_bytes == 20 * 1024 * 1024
    # The gRPC limit follows the attachment limit (plus headroom), above the 4 MiB message default.
    assert settings.grpc_message_limit == 21 * 1024 * 1024
    assert (settings.tagging_workers, settings.tagging_poll_s, settings.tagging_lease_s) == (2, 2.0, 0.0)


def test_environment_configures_the_segmentation_target_and_token() -> None:
    env = {
        "BOARD_SEGMENTATION_TARGET": "10.0.0.5:7070",
        "BOARD_SEGMENTATION_TOKEN_FILE": "/run/secrets/key_file.json",
        "BOARD_SEGMENTATION_MODEL": "seg",
        "BOARD_SEGMENTATION_TIMEOUT": "15",
        "BOARD_MAX_ATTACHMENT_BYTES": "1048576",
        "BOARD_TAGGING_WORKERS": "4",
        "BOARD_TAGGING_MAX_ATTEMPTS": "9",
        "BOARD_TAGGING_LEASE_SECONDS": "45",
    }
    settings = parse([], env)
    assert settings.segmentation_target == "10.0.0.5:7070"
    assert settings.segmentation_token_files == (Path("/run/secrets/key_file.json"),)
    assert (settings.segmentation_model, settings.segmentation_timeout_s) == ("seg", 15.0)
    assert settings.max_attachment_bytes == 1048576
    assert settings.grpc_message_limit == 4 * 1024 * 1024  # the larger of the two
    assert (settings.tagging_workers, settings.tagging_max_attempts, settings.tagging_lease_s) == (4, 9, 45.0)


def test_flags_win_over_the_environment() -> None:
    settings = parse(
        ["--segmentation-target", "127.0.0.1:7070", "--tagging-workers", "8", "--tagging-backoff-max", "3"],
        {"BOARD_SEGMENTATION_TARGET": "elsewhere:1", "BOARD_TAGGING_WORKERS": "2"},
    )
    assert settings.segmentation_target == "127.0.0.1:7070"
    assert (settings.tagging_workers, settings.tagging_backoff_max_s) == (8, 3.0)


@pytest.mark.parametrize(
    "argv",
    [["--tagging-workers", "0"], ["--segmentation-timeout", "0"], ["--max-attachment-bytes", "0"],
     ["--tagging-poll", "-1"], ["--tagging-max-attempts", "0"],
     # a lease that a call in flight could outlive
     ["--segmentation-timeout", "30", "--tagging-lease", "20"]],
)  # fmt: skip
def test_nonsense_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        parse(argv, {})


def test_the_protocol_defaults_to_torchserve_and_oip_is_chosen_by_flag_or_environment() -> None:
    assert parse([], {}).segmentation_protocol == "torchserve"
    assert parse([], {"BOARD_SEGMENTATION_PROTOCOL": "OIP"}).segmentation_protocol == "oip"
    flagged = parse(["--segmentation-protocol", "torchserve"], {"BOARD_SEGMENTATION_PROTOCOL": "oip"})
    assert flagged.segmentation_protocol == "torchserve"


def test_an_unknown_protocol_is_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="--segmentation-protocol: protocol must be torchserve or oip"):
        parse(["--segmentation-protocol", "triton"], {})


def test_several_targets_take_one_key_file_each_in_order() -> None:
    settings = parse(
        [
            "--segmentation-target",
            "10.0.0.5:7070,10.0.0.6:7070",
            "--segmentation-token-file",
            "/k/a.key,/k/b.key",
        ],
        {},
    )
    assert settings.segmentation_target == "10.0.0.5:7070,10.0.0.6:7070"
    assert settings.segmentation_token_files == (Path("/k/a.key"), Path("/k/b.key"))


@pytest.mark.parametrize(
    ("target", "keys", "message"),
    [
        ("10.0.0.5:7070,10.0.0.6:7070", "/k/a,/k/b,/k/c", "3 key files for 2 targets"),
        ("dns:///ts.svc:7070", "/k/a,/k/b", "a dns:/// target takes at most one key file"),
        ("dns:///ts.svc:7070,10.0.0.5:7070", "", "a dns:/// target stands alone"),
        ("dns://8.8.8.8/ts.svc:7070", "", "no DNS authority"),
        ("10.0.0.5", "", "expected HOST:PORT"),
        ("10.0.0.5:7070,", "", "empty address"),
        ("10.0.0.5:7070,10.0.0.5:7070", "", "listed twice"),
    ],
)
def test_targets_and_key_files_that_do_not_fit_are_refused(target: str, keys: str, message: str) -> None:
    argv = ["--segmentation-target", target] + (["--segmentation-token-file", keys] if keys else [])
    with pytest.raises(ValueError, match=f"--segmentation-target: .*{message}"):
        parse(argv, {})
