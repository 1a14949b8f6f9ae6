"""The Node.js client (clients/node) against a real board server: `node --test` and the flow script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.board.conftest import start_board_server
from tests.support import REPO_ROOT, Processes

NODE_DIR = REPO_ROOT / "clients" / "node"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def _node(args: list[str], target: str) -> subprocess.CompletedProcess[str]:
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node/node_modules missing: run `make node` (make test does)")
    return subprocess.run(
        ["node", *args],
        cwd=NODE_DIR,
        env={**os.environ, "BOARD_TARGET": target},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_node_test_suite_passes_against_real_server(processes: Processes, tmp_path: Path) -> None:
    server = start_board_server(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path)
    result = _node(["--test", "test/"], server.target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^# pass 2$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^# skipped 0$", result.stdout, re.MULTILINE), result.stdout


def test_node_flow_script_prints_the_created_post(processes: Processes, tmp_path: Path) -> None:
    server = start_board_server(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path)
    result = _node(["flow.js", "--target", server.target], server.target)
    assert result.returncode == 0, result.stderr
    expected = r'^post   #1 "Hello from Node.js" by user #1$'
    assert re.search(expected, result.stdout, re.MULTILINE), result.stdout
    assert "listed 1 post(s) of user #1" in result.stdout
    # Tagging is off on this server, so the attachment stays PENDING.
    assert "attach #1 tiny.png 4x3 PENDING" in result.stdout, result.stdout
    # The server saw the same data: read it back with the Python client.
    with server.client() as client:
        assert client.get_post(1).title == "Hello from Node.js"
