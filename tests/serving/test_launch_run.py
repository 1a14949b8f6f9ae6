"""`python -m seg_handler.launch run` (`make run`): both servers up, endpoints printed, SIGTERM stops both."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import zipfile
from pathlib import Path

import pytest

from seg_handler import launch
from tests.support import REPO_ROOT, Processes, free_port, wait_for

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_run_starts_torchserve_and_board_and_sigterm_stops_both(
    model_store: Path, tmp_path: Path, processes: Processes
) -> None:
    runtime = tmp_path / "torchserve"
    ports = {
        name: free_port()
        for name in ("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INFERENCE", "GRPC_MANAGEMENT")
    }
    board_port, metrics_port = free_port(), free_port()
    env = {f"SEG_{name}_PORT": str(port) for name, port in ports.items()}
    env |= {
        "BOARD_ADDRESS": f"127.0.0.1:{board_port}",
        "BOARD_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "BOARD_DATABASE_URL": f"sqlite:///{tmp_path / 'board.db'}",
        "BOARD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    command = [sys.executable, "-m", "seg_handler.launch", "run", "--model-store", str(model_store)]
    proc = processes.start([*command, "--runtime-dir", str(runtime)], name="run", env=env, cwd=REPO_ROOT)
    try:
        wait_for(
            "endpoints printed", lambda: "Ctrl-C stops everything" in processes.log_text("run"), timeout=240
        )
        printed = processes.log_text("run")
        assert f"Inference key file          {runtime / 'inference.key'}" in printed
        assert f"127.0.0.1:{ports['GRPC_INFERENCE']}" in printed and f"127.0.0.1:{board_port}" in printed
        assert "grpcurl" in printed and "curl" in printed and "segment photo.jpg" in printed
        # Where the board's metrics are, and how to get an account and sign in.
        assert f"http://127.0.0.1:{metrics_port}/metrics" in printed
        assert "users create" in printed and " login " in printed and "SignIn" in printed
        # The test archive has random weights: the banner says so and names the ways to real weights.
        assert "(deeplabv3_mobilenet_v3_large) is UNTRAINED: weights 'random'" in printed
        assert "TORCH_HOME" in printed and "make model MODEL_WEIGHTS=" in printed
        wait_for("board server listening", lambda: _listening(board_port), timeout=60)
        assert _listening(ports["INFERENCE"]) and _listening(ports["GRPC_INFERENCE"])
        wait_for("board metrics served", lambda: _listening(metrics_port), timeout=60)
        java_pid = int((runtime / "torchserve.pid").read_text())
        # The board is handed the inference key alone (a plain file, owner-only), never key_file.json.
        board_args = _board_arguments(board_port)
        token_file = Path(board_args[board_args.index("--segmentation-token-file") + 1])
        assert token_file == runtime / "inference.key"
        assert not any("key_file.json" in arg for arg in board_args)
        inference = json.loads((runtime / "key_file.json").read_text())["inference"]["key"]
        assert token_file.read_text().strip() == inference
        assert token_file.stat().st_mode & 0o077 == 0

        os.kill(proc.pid, signal.SIGTERM)  # the launcher itself, as Ctrl-C/systemd would
        assert proc.wait(timeout=90) == 0
        wait_for("TorchServe gone", lambda: not _alive(java_pid), timeout=30)
        assert not _listening(board_port) and not _listening(ports["INFERENCE"])
        assert not (runtime / "torchserve.pid").exists()
    finally:
        # Whatever happened above, never leave a TorchServe behind (it runs in its own process group).
        with contextlib.suppress(OSError, ValueError):
            launch.stop_process(int((runtime / "torchserve.pid").read_text()))


def _board_arguments(port: int) -> list[str]:
    """The command line of the board-server process listening on ``port`` (found in /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            if any(a.endswith("board-server") for a in args[:2]) and f"127.0.0.1:{port}" in args:
                return args
    raise AssertionError(f"no board-server process on port {port}")


def test_weights_banner_names_trained_weights_without_alarm(tmp_path: Path) -> None:
    meta = {"arch": "deeplabv3_resnet50", "weights": "state_dict", "sha256": "ab" * 32, "untrained": False}
    with zipfile.ZipFile(tmp_path / "deeplabv3.mar", "w") as mar:
        mar.writestr("model-meta.json", json.dumps(meta))
    banner = launch.weights_banner(launch.ServeSettings(model_store=tmp_path))
    assert banner == f"Model deeplabv3: deeplabv3_resnet50, weights state_dict (sha256 {'ab' * 32})"
