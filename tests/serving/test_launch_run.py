"""`python -m seg_handler.launcher run` (`make run`): both servers up, endpoints printed only once every
server answers, SIGTERM stops both."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import urllib.request
import zipfile
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seg_handler import launcher
from tests.support import REPO_ROOT, Processes, run_port, wait_for

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


def _health(target: str) -> int:
    """The board's health on a connection of its own, asked once: no waiting for it to come up."""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        request = health_pb2.HealthCheckRequest(service="board.v1.BoardService")
        status: int = (
            health_pb2_grpc.HealthStub(channel).Check(request, timeout=5, wait_for_ready=False).status
        )
        return status


def test_run_announces_both_servers_once_every_one_answers_and_sigterm_stops_both(
    model_store: Path, tmp_path: Path, processes: Processes
) -> None:
    runtime = tmp_path / "torchserve"
    ports = {
        name: run_port()
        for name in ("INFERENCE", "MANAGEMENT", "METRICS", "GRPC_INFERENCE", "GRPC_MANAGEMENT")
    }
    board_port, metrics_port, http_port = run_port(), run_port(), run_port()
    env = {f"SEG_{name}_PORT": str(port) for name, port in ports.items()}
    env |= {
        "BOARD_ADDRESS": f"127.0.0.1:{board_port}",
        "BOARD_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "BOARD_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
        "BOARD_DATABASE_URL": f"sqlite:///{tmp_path / 'board.db'}",
        "BOARD_AUDIT_LOG": str(tmp_path / "audit.log"),
        "BOARD_PROCESSES": "2",  # the supervisor's path: every process must answer before the banner
    }
    command = [sys.executable, "-m", "seg_handler.launcher", "run", "--model-store", str(model_store)]
    proc = processes.start([*command, "--runtime-dir", str(runtime)], name="run", env=env, cwd=REPO_ROOT)
    board = f"127.0.0.1:{board_port}"
    try:
        wait_for(
            "endpoints printed",
            lambda: "Ctrl-C stops everything" in processes.log_text("run"),
            timeout=240,
            interval=0.02,
        )
        # The moment the banner is there, the board answers SERVING at once, on fresh connections (which the
        # kernel spreads over its two processes), and so does TorchServe: what a reader pastes now works.
        at_banner = [_health(board) for _ in range(6)]
        assert at_banner == [health_pb2.HealthCheckResponse.SERVING] * 6
        assert _listening(ports["INFERENCE"]) and _listening(ports["GRPC_INFERENCE"])
        printed = processes.log_text("run")
        assert f"Inference key file          {runtime / 'inference.key'}" in printed
        assert f"127.0.0.1:{ports['GRPC_INFERENCE']}" in printed and f"127.0.0.1:{board_port}" in printed
        assert "grpcurl" in printed and "curl" in printed and "segment photo.jpg" in printed
        # Where the board's metrics are, and how to get an account and sign in.
        assert f"http://127.0.0.1:{metrics_port}/metrics" in printed
        assert "users create" in printed and " login " in printed and "SignIn" in printed
        # The web app's address, which answers from the moment it is printed (`make web` built the app).
        web_url = f"http://127.0.0.1:{http_port}"
        assert f"Board web app (browser)     {web_url}/" in printed
        assert f"Open {web_url}/ in a browser" in printed
        for _ in range(4):  # fresh connections, which the kernel spreads over both processes
            with urllib.request.urlopen(f"{web_url}/healthz", timeout=5) as answer:
                assert answer.read() == b"SERVING\n"
        with urllib.request.urlopen(f"{web_url}/", timeout=5) as answer:
            assert b"<title>Board</title>" in answer.read()
        # The test archive has random weights: the banner says so and names the ways to real weights.
        assert "(deeplabv3_mobilenet_v3_large) is UNTRAINED: weights 'random'" in printed
        assert "TORCH_HOME" in printed and "make model MODEL_WEIGHTS=" in printed
        assert f"Logs                        {runtime / 'torchserve.out'}, {runtime / 'board.log'}" in printed
        # The board logs to its file, not over the banner: the supervisor's line is there.
        assert f"listening on 127.0.0.1:{board_port} (2 processes" in (runtime / "board.log").read_text()
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
            launcher.stop_process(int((runtime / "torchserve.pid").read_text()))


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
    banner = launcher.weights_banner(launcher.ServeSettings(model_store=tmp_path))
    assert banner == f"Model deeplabv3: deeplabv3_resnet50, weights state_dict (sha256 {'ab' * 32})"
