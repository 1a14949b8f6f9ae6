"""Fixtures shared by every test room; the helpers themselves live in tests/support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Per-test process guard."""
    guard = Processes(tmp_path / "logs")
    try:
        yield guard
    finally:
        guard.stop_all()


@pytest.fixture(scope="session")
def session_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Process guard for servers shared by a whole session."""
    guard = Processes(tmp_path_factory.mktemp("session-logs"))
    try:
        yield guard
    finally:
        guard.stop_all()
