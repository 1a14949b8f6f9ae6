"""Database failures in the domain's words: a busy or unreachable database is retryable (UNAVAILABLE for the
caller), a statement ended at its time limit is DatabaseTimeout (DEADLINE_EXCEEDED); never INTERNAL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, OperationalError

from board_server.core.errors import DatabaseBusy, DatabaseTimeout, DatabaseUnavailable

_QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a statement ended by statement_timeout or a cancel


@contextmanager
def busy_is_unavailable() -> Iterator[None]:
    """Lock contention beyond the busy timeout becomes DatabaseBusy, a database that cannot be reached (or
    dropped the connection) DatabaseUnavailable: both UNAVAILABLE, retryable, never INTERNAL; a statement
    PostgreSQL ended at its time limit DatabaseTimeout."""
    try:
        yield
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == _QUERY_CANCELED:  # statement_timeout, a cancel request
            raise DatabaseTimeout("the database ended the statement at its time limit") from exc
        text = str(exc.orig).lower()
        if isinstance(exc, OperationalError) and ("locked" in text or "busy" in text):
            raise DatabaseBusy("the database is busy; retry the call") from exc
        # PostgreSQL's operational errors are the transient kind (connection refused or lost, shutdown,
        # too many connections); SQLite's are not (a missing table is a bug, and stays INTERNAL).
        unreachable = isinstance(exc, OperationalError) and not isinstance(exc.orig, sqlite3.Error)
        if unreachable or exc.connection_invalidated:
            raise DatabaseUnavailable("the database cannot be reached; retry the call") from exc
        raise
    except sqlite3.OperationalError as exc:  # the lean path (LeanQuery) raises the driver's own errors
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            raise DatabaseBusy("the database is busy; retry the call") from exc
        raise


class MigrationRefusedError(RuntimeError):
    """A migration found data it must not change on its own (two accounts whose emails become one); nothing
    was changed, and the message says what the operator has to decide."""
