"""Fixtures shared by every test room; the helpers themselves live in tests/support.py, and how the suite is
split (integration tests, `--unit`, the work groups of parallel runs) in tests/splitting.py."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procfs import idle_seconds
from tests.support import Processes

# How the suite is split; the session TorchServe and the boards tagging through it (tests/e2e, clients, node).
pytest_plugins = ["tests.splitting", "tests.torchserve_fixtures"]


# --- what a run costs (docs/testing.md) --------------------------------------------------------------------

_STARTED = pytest.StashKey[tuple[float, float, float]]()


def _reference_loop_s() -> float:
    """CPU seconds of one fixed pure-Python workload: how fast this machine is right now (its speed drifts,
    docs/testing.md), so that runs on different days compare by CPU spent per unit of speed."""
    started = time.process_time()
    total = 0
    for i in range(3_000_000):
        total += i % 7
    return time.process_time() - started


def _cpu_so_far() -> float:
    """CPU seconds of this process and of every process it has waited for (theirs, and so on down)."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the run's controller (or the only process)
        config.stash[_STARTED] = (time.monotonic(), _cpu_so_far(), idle_seconds())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """What the run cost: the CPU of this process and of every process it waited for (the xdist workers and
    what they started: boards, TorchServe, the OIP server, chromium; not PostgreSQL's servers, which run
    detached, nor what a killed process had started), and how long the machine's cores sat idle meanwhile."""
    if _STARTED not in config.stash:
        return
    started, cpu_before, idle_before = config.stash[_STARTED]
    wall, cpu = time.monotonic() - started, _cpu_so_far() - cpu_before
    cores = os.cpu_count() or 1
    terminalreporter.write_line(
        f"CPU: {cpu:,.1f} s in this run's processes over {wall:,.1f} s; the machine's {cores} cores idle "
        f"{idle_seconds() - idle_before:,.1f} s of {cores * wall:,.1f}; a reference loop took "
        f"{_reference_loop_s():.3f} s of CPU at the end (the machine's speed)"
    )


def _guarded(log_dir: Path) -> Iterator[Processes]:
    guard = Processes(log_dir)
    try:
        yield guard
    finally:
        guard.stop_all()


@pytest.fixture(scope="session", autouse=True)
def _board_fork_server() -> Iterator[None]:
    """The board's fork server (tests/board/conftest.py board_forks) ends with the session."""
    yield
    from tests.board.conftest import close_board_forks

    close_board_forks()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Per-test process guard."""
    yield from _guarded(tmp_path / "logs")


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Process guard for servers shared by the tests of one module."""
    yield from _guarded(tmp_path_factory.mktemp("module-logs"))


@pytest.fixture(scope="session")
def session_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Process guard for servers shared by a whole session (one per xdist worker)."""
    yield from _guarded(tmp_path_factory.mktemp("session-logs"))


@pytest.fixture(scope="session")
def photo_near_the_limit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PNG just under the default 20 MiB attachment limit (tests/board/conftest.photo_near_the_limit),
    made once per session: the Python, CLI, Node and grpcurl uploads all send it."""
    from tests.board.conftest import photo_near_the_limit

    path = tmp_path_factory.mktemp("photo") / "near-the-limit.png"
    path.write_bytes(photo_near_the_limit())
    return path
