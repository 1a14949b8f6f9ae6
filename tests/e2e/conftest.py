"""End-to-end fixtures. The session TorchServe (stoppable and restartable on fixed ports) and the boards wired
to it live in tests/torchserve_fixtures.py, shared with tests/clients and tests/node; the names the e2e tests
import are re-exported here."""

from __future__ import annotations

from tests.board.conftest import postgres_cluster
from tests.torchserve_fixtures import (
    TorchServe,
    private_serve_settings,
    start_tagging_board,
    tagging_flags,
)

# postgres_cluster: the throw-away PostgreSQL of the board tests, for the two-replica tests.
__all__ = [
    "TorchServe",
    "postgres_cluster",
    "private_serve_settings",
    "start_tagging_board",
    "tagging_flags",
]
