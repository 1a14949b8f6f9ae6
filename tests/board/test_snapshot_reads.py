"""Reads of several statements that must agree (an attachment's row and its labels, which tagging replaces
together) run on one snapshot (``Database.run_snapshot``), on SQLite and on PostgreSQL's event-loop
connections: a write that commits between two of its statements is not half seen. ``run_read`` gives each
statement its own snapshot (autocommit), which is what let a search page show one model's identity with
another model's labels (tests/e2e/test_retag.py, once in a CI run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, text

from board_server.storage import users as user_rows
from board_server.storage.engine import Database, migrate, open_database
from tests.board.conftest import Backend

pytestmark = pytest.mark.integration  # real databases (a PostgreSQL cluster for that leg)

COUNT = text("SELECT count(*) FROM users")


def add_user(db: Database, name: str) -> None:
    email = f"{name}-{datetime.now(UTC).timestamp()}@example.org"
    db.write(
        lambda conn: user_rows.add_user(
            conn, name=name, email=email, email_canonical=email, now=datetime.now(UTC), password_hash=None
        )
    )


def counts_around_a_commit(url: str, run: Callable[[Database], Callable[..., object]]) -> tuple[int, int]:
    """The user count read twice by one ``run`` of the database, with another user committed between."""
    database, other = open_database(url), open_database(url)
    try:
        migrate(database.engine)

        def read(conn: Connection) -> tuple[int, int]:
            first = int(conn.execute(COUNT).scalar_one())
            add_user(other, "between")  # commits on a connection of its own
            return first, int(conn.execute(COUNT).scalar_one())

        async def main() -> tuple[int, int]:
            try:
                found = await run(database)(read)  # type: ignore[misc]
                assert isinstance(found, tuple)
                return found
            finally:
                await database.close()

        return asyncio.run(main())
    finally:
        database.dispose()
        other.dispose()


def test_a_snapshot_read_does_not_see_a_commit_between_its_statements(backend: Backend) -> None:
    first, second = counts_around_a_commit(backend.new_database_url(), lambda db: db.run_snapshot)
    assert second == first


def test_an_autocommit_read_does(backend: Backend) -> None:
    """What the snapshot is for: without it, the second statement sees the commit."""
    first, second = counts_around_a_commit(backend.new_database_url(), lambda db: db.run_read)
    assert second == first + 1
