"""The launcher's choice of model server (`make run SERVING=oip`): where each listens and how the board it
starts is wired to it. No server is started here; tests/docs/test_tour.py runs both for real."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from seg_handler.launcher import LaunchError, build_settings
from seg_handler.launcher.board import board_command
from seg_handler.launcher.settings import DEFAULT_OIP_RUNTIME_DIR, DEFAULT_RUNTIME_DIR


def test_torchserve_stays_the_default_with_its_grpc_port_and_key_file() -> None:
    settings = build_settings(argparse.Namespace(model_store="store"), {})
    command = board_command(settings)

    assert settings.serving == "torchserve" and settings.runtime_dir == DEFAULT_RUNTIME_DIR
    assert settings.grpc_inference_target == "127.0.0.1:7070"
    assert command is not None
    assert command[command.index("--segmentation-protocol") + 1] == "torchserve"
    assert command[command.index("--segmentation-target") + 1] == "127.0.0.1:7070"
    assert command[command.index("--segmentation-token-file") + 1] == str(settings.inference_key_file)


def test_oip_serving_wires_the_board_to_the_oip_port_without_a_key() -> None:
    settings = build_settings(
        argparse.Namespace(model_store="store"), {"SEG_SERVING": "oip", "SEG_OIP_PORT": "9100"}
    )
    command = board_command(settings)

    assert settings.serving == "oip" and settings.runtime_dir == DEFAULT_OIP_RUNTIME_DIR
    assert settings.oip_model_dir == Path("store").resolve() / "oip" / "deeplabv3"
    assert command is not None
    assert command[command.index("--segmentation-protocol") + 1] == "oip"
    assert command[command.index("--segmentation-target") + 1] == "127.0.0.1:9100"
    assert "--segmentation-token-file" not in command


def test_the_flag_wins_over_the_environment() -> None:
    settings = build_settings(
        argparse.Namespace(model_store="store", serving="torchserve"), {"SEG_SERVING": "oip"}
    )
    assert settings.serving == "torchserve"


def test_an_unknown_model_server_is_refused() -> None:
    with pytest.raises(LaunchError, match="serving must be torchserve or oip"):
        build_settings(argparse.Namespace(model_store="store"), {"SEG_SERVING": "triton"})
