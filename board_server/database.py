"""Engine and sessions for the board: SQLite tuned for a server, PostgreSQL via psycopg 3, migrations.

Two session factories share one engine: ``reads`` opens ordinary transactions, ``writes`` opens SQLite
transactions with ``BEGIN IMMEDIATE`` so that a writer takes the write lock up front and waits in SQLite's
busy handler; a deferred transaction that upgrades to a writer later gets SQLITE_BUSY at once instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from board_server.config import Settings

logger = logging.getLogger(__name__)

_WRITE_OPTION = "board_write"


@dataclass(frozen=True)
class Database:
    """The engine and the two session factories built on it."""

    engine: Engine
    reads: sessionmaker[Session]
    writes: sessionmaker[Session]

    def dispose(self) -> None:
        self.engine.dispose()


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite's own BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # FULL: an acknowledged commit is fsynced, so it survives kill -9 and power loss.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def open_database(settings: Settings) -> Database:
    """Create the engine for ``settings.database_url`` (creating an SQLite file's folder if needed)."""
    url = make_url(settings.database_url)
    kwargs: dict[str, Any] = {"pool_pre_ping": False}
    is_sqlite = url.get_backend_name() == "sqlite"
    if is_sqlite:
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {
            "check_same_thread": False,
            "timeout": settings.sqlite_busy_timeout_ms / 1000,
        }
    # One connection per worker thread, so a request never waits for a pooled connection.
    kwargs["pool_size"] = settings.worker_threads
    kwargs["max_overflow"] = 4
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
    return Database(
        engine=engine,
        reads=sessionmaker(engine, expire_on_commit=False),
        writes=sessionmaker(engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False),
    )


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent; safe for concurrent servers)."""
    package = Path(__file__).resolve().parent
    config = Config(str(package / "alembic.ini"))
    config.set_main_option("script_location", str(package / "migrations"))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two servers starting at once on one database must not both create the tables.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(4242001)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    logger.info("database schema at head (%s)", engine.url.render_as_string(hide_password=True))
