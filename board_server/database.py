"""Engine, transactions and migrations of the board: SQLite tuned for a server, or PostgreSQL via psycopg 3.

Reads run on a Connection from ``Database.read()``; on SQLite they skip the explicit BEGIN, since each
SELECT is atomic on its own and the extra round trip costs more than the query.

Writes run through ``Database.write(work)``. On PostgreSQL each is its own transaction. On SQLite a single
writer thread per process applies queued writes in one ``BEGIN IMMEDIATE`` transaction, each write inside
its own SAVEPOINT (a failing write rolls back alone), and acknowledges them only after the one COMMIT that
makes them durable (synchronous=FULL): group commit, so concurrent writers share one fsync instead of
queueing for one each. BEGIN IMMEDIATE takes the write lock up front, so that another process holding it
makes us wait in SQLite's busy handler; a deferred transaction that upgrades later gets SQLITE_BUSY at once.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from board_server.config import Settings
from board_server.errors import DatabaseBusy

logger = logging.getLogger(__name__)

T = TypeVar("T")

_WRITE_OPTION = "board_write"
_MAX_BATCH = 64


@contextmanager
def _busy_is_unavailable() -> Iterator[None]:
    """Lock contention beyond the busy timeout becomes DatabaseBusy (UNAVAILABLE, retryable)."""
    try:
        yield
    except OperationalError as exc:
        text = str(exc.orig).lower()
        if "locked" in text or "busy" in text:
            raise DatabaseBusy("the database is busy; retry the call") from exc
        raise


@dataclass
class _Job:
    work: Callable[[Connection], Any]
    future: Future[Any] = field(default_factory=Future)


class GroupCommitWriter:
    """One writer thread that commits queued writes in batches (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="board-writer", daemon=True)
        self._thread.start()

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in the next batch; return its result once that batch is committed, or raise."""
        job = _Job(work)
        self._jobs.put(job)
        result: T = job.future.result()
        return result

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (first := self._jobs.get()) is not None:
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            with _busy_is_unavailable(), self._engine.begin() as conn:
                # SAVEPOINTs straight on the sqlite3 connection, inside SQLAlchemy's transaction: its nested
                # transactions cost more CPU than the write they protect.
                sqlite = conn.connection.driver_connection
                assert sqlite is not None
                for job in batch:
                    sqlite.execute("SAVEPOINT board_write")
                    try:
                        outcomes.append((job, job.work(conn), None))
                    except Exception as exc:  # this write's own failure; only its savepoint is rolled back
                        sqlite.execute("ROLLBACK TO SAVEPOINT board_write")
                        outcomes.append((job, None, exc))
                    sqlite.execute("RELEASE SAVEPOINT board_write")
        except Exception as exc:  # BEGIN or COMMIT failed: nothing in the batch is durable
            if not isinstance(exc, DatabaseBusy):
                logger.exception("commit of %d writes failed", len(batch))
            for job in batch:
                job.future.set_exception(exc)
            return
        for job, result, error in outcomes:
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)


@dataclass
class Database:
    """The engine and how reads and writes are run on it."""

    engine: Engine
    writer: GroupCommitWriter | None = None
    # SQLite reads keep one connection per thread: a pool checkout and checkin per call was a third of an
    # in-process GetPost (250 → 167 µs measured). Reads run in autocommit mode, so a kept connection holds
    # no snapshot between calls.
    _reader: threading.local = field(default_factory=threading.local, repr=False)
    _readers: list[Connection] = field(default_factory=list, repr=False)
    _readers_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for queries only; nothing is committed."""
        if self.writer is None:  # PostgreSQL: a pooled connection per call
            with _busy_is_unavailable(), self.engine.connect() as pooled:
                yield pooled
            return
        conn: Connection | None = getattr(self._reader, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            self._reader.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        try:
            with _busy_is_unavailable():
                yield conn
        finally:
            try:
                conn.rollback()  # ends SQLAlchemy's autobegun transaction; SQLite has none open on reads
            except SQLAlchemyError:
                logger.warning("dropping a broken read connection", exc_info=True)
                self._reader.conn = None
                with contextlib.suppress(SQLAlchemyError):
                    conn.close()

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(conn)`` atomically and durably; return its result or raise its error."""
        if self.writer is not None:
            return self.writer.write(work)
        with _busy_is_unavailable(), self.engine.execution_options(**{_WRITE_OPTION: True}).begin() as conn:
            return work(conn)

    def dispose(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()
        if self.writer is not None:
            self.writer.close()
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
        # Reads stay in autocommit mode: one SELECT is atomic by itself (see the module docstring).
        if conn.get_execution_options().get(_WRITE_OPTION, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


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
    # SQLite: every thread that reads keeps its connection (gRPC workers, tagging threads), so the number of
    # threads bounds the connections, not the pool; PostgreSQL: a few beyond one per worker.
    kwargs["max_overflow"] = -1 if is_sqlite else 4
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
    writer = GroupCommitWriter(engine.execution_options(**{_WRITE_OPTION: True})) if is_sqlite else None
    return Database(engine=engine, writer=writer)


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
