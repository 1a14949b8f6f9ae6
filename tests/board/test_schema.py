"""The Alembic migrations and the ORM tables describe the same schema, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from board_server.storage.engine import migrate, open_database
from board_server.storage.tables import Base
from tests.board.conftest import Backend


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
