"""The suite's fork server of `board-server` (seg_handler/launcher/forks.py, tests/board/conftest.py
board_forks): a forked board is the executable's ``main(argv)`` with its own arguments, environment,
directory, session and streams, and its handle behaves as a started executable's (poll, wait, communicate,
signals, the launcher's stop, exit statuses, kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from seg_handler.launcher import processes as launcher
from seg_handler.launcher.forks import ForkedProcess, ForkServer
from tests.board.conftest import BOARD_MAIN, BOARD_PRELOAD, BOARD_SERVER, run_board_server
from tests.support import Processes

pytestmark = pytest.mark.integration  # each test forks board servers from a fork server


@pytest.fixture
def forks() -> Iterator[ForkServer]:
    server = ForkServer(BOARD_MAIN, BOARD_PRELOAD)
    yield server
    server.close()


def test_arguments_streams_and_exit_statuses_are_the_programs(forks: ForkServer) -> None:
    with forks.popen(
        [str(BOARD_SERVER), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as helped:
        out, _ = helped.communicate(timeout=60)
    assert isinstance(helped, ForkedProcess) and helped.returncode == 0
    assert out.startswith("usage: board-server")
    with forks.popen(
        [str(BOARD_SERVER), "--processes", "many"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as refused:
        _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "--processes" in err


def test_environment_directory_and_stdin_are_the_ones_given(forks: ForkServer, tmp_path: Path) -> None:
    """The database URL from the environment, relative to the directory given; a new password read from
    stdin for an email nobody has: exit status 1 and why, on stderr."""
    env = {**os.environ, "BOARD_DATABASE_URL": "sqlite:///relative.db"}
    with forks.popen(
        [str(BOARD_SERVER), "migrate"], env=env, cwd=tmp_path, stderr=subprocess.PIPE
    ) as migrated:
        _, err = migrated.communicate(timeout=60)
    assert migrated.returncode == 0, err
    assert (tmp_path / "relative.db").is_file() and not Path("relative.db").exists()
    assert "BOARD_DATABASE_URL" not in os.environ  # the fork's environment only
    with forks.popen(
        [str(BOARD_SERVER), "admin", "set-password", "nobody@example.org"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as unknown:
        _, err = unknown.communicate("a new password\n", timeout=60)
    assert unknown.returncode == 1 and "no user with email 'nobody@example.org'" in err


def test_a_forked_server_leads_its_own_session_and_stops_like_a_started_one(
    forks: ForkServer, tmp_path: Path
) -> None:
    guard = Processes(tmp_path / "logs")
    command = [
        str(BOARD_SERVER), "--address", "127.0.0.1:0", "--http-address", "none", "--metrics-address", "none",
        "--database-url", f"sqlite:///{tmp_path / 'board.db'}", "--processes", "1",
    ]  # fmt: skip
    try:
        calm = guard.start(command, name="calm", forks=forks, cwd=tmp_path)
        guard.wait_listening(calm, "calm")
        assert os.getsid(calm.pid) == calm.pid and os.getpgid(calm.pid) == calm.pid
        assert calm.poll() is None and launcher.is_running(calm.pid)
        guard.stop(calm)
        assert calm.returncode == 0 and not launcher.is_running(calm.pid)
        assert guard.log_text("calm").rstrip().endswith("stopped")

        killed = guard.start(command, name="killed", forks=forks, cwd=tmp_path)
        guard.wait_listening(killed, "killed")
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        with pytest.raises(subprocess.TimeoutExpired):
            guard.start(command, name="slow", forks=forks, cwd=tmp_path).wait(timeout=0.01)
    finally:
        guard.stop_all()


def test_run_board_server_runs_the_command_to_its_end(tmp_path: Path) -> None:
    done = run_board_server("migrate", "--database-url", f"sqlite:///{tmp_path / 'b.db'}", cwd=tmp_path)
    assert done.returncode == 0 and "schema" in done.stderr and done.stdout == ""
