"""Fixtures shared by every test room; the helpers themselves live in tests/support.py, and how the suite is
split (integration tests, `--unit`, the work groups of parallel runs) in tests/splitting.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Processes

# How the suite is split; the session TorchServe and the boards tagging through it (tests/e2e, clients, node).
pytest_plugins = ["tests.splitting", "tests.torchserve_fixtures"]


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
