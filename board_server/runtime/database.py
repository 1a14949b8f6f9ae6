"""The database a board-server's Settings name, opened the one way every caller opens it: the server
processes, the supervisor's metrics and the operator's commands (migrate, admin). Apart from assemble.py so
that those commands load no transport."""

from __future__ import annotations

from typing import TYPE_CHECKING

from board_server.runtime.config import Settings
from board_server.storage.engine import Database, open_database

if TYPE_CHECKING:
    from board_server.runtime.metrics import BoardMetrics


def database_for(settings: Settings, metrics: BoardMetrics | None = None) -> Database:
    """The database of ``settings`` (not migrated: the supervisor or ``board-server migrate`` does that)."""
    return open_database(
        settings.database_url,
        connections=settings.worker_threads,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        connect_timeout_s=settings.database_connect_timeout_s,
        # A second past the call's own deadline, which cancels the statement first; this catches the rest.
        statement_timeout_s=settings.call_timeout_s + 1.0,
        on_batch=metrics.committed if metrics is not None else None,
    )
