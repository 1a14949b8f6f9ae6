"""The Alembic migrations and the ORM tables describe the same schema, on every backend; a start at head needs
no Alembic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

import board_server.storage.migrations
from board_server.storage.engine import migrate, open_database
from board_server.storage.migrations import head_revision
from board_server.storage.tables import Base
from tests.board.conftest import Backend
from tests.support import REPO_ROOT


def test_migrations_match_the_models(backend: Backend) -> None:
    database = open_database(backend.new_database_url())
    try:
        migrate(database.engine)
        migrate(database.engine)  # idempotent
        with database.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            indexes = {ix["name"]: ix for ix in inspect(conn).get_indexes("users")}
    finally:
        database.dispose()
    assert differences == []
    # Emails are unique by their canonical form, on every backend.
    canonical = indexes["ix_users_email_canonical"]
    assert canonical["unique"] and canonical["column_names"] == ["email_canonical"]


def test_the_head_revision_the_server_reads_from_file_names_is_alembics() -> None:
    # A database at head_revision() starts without Alembic: each file must be named after its revision.
    script = ScriptDirectory(str(Path(board_server.storage.migrations.__file__).parent))
    for revision in script.walk_revisions():
        assert Path(revision.path).name.startswith(f"{revision.revision}_"), revision.path
    assert script.get_heads() == [head_revision()]


def test_a_start_on_a_database_at_head_loads_no_alembic_asyncio_or_postgresql_code(
    tmp_path: Path,
) -> None:
    """What a board process imports on SQLite with its schema at head (every start but a release's first):
    Alembic, SQLAlchemy's asyncio and PostgreSQL's dialect and driver (docs/operations.md)."""
    url = f"sqlite:///{tmp_path / 'board.db'}"
    database = open_database(url)
    try:
        migrate(database.engine)  # to head, in this process
    finally:
        database.dispose()
    script = f"""
import sys
import board_server.__main__, board_server.runtime.assemble, board_server.runtime.serve
from board_server.storage.engine import migrate, open_database
database = open_database({url!r})
migrate(database.engine)
database.dispose()
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


HEAVY = ("alembic", "sqlalchemy.ext.asyncio", "sqlalchemy.dialects.postgresql", "psycopg")
