"""The board's database: an engine, how reads and writes run on it, and migrations.

SQLite is tuned for a server (WAL, synchronous=FULL, foreign keys): reads run in autocommit on a connection
kept per thread, writes through group commit (storage/group_commit.py). PostgreSQL runs each write in its
own transaction: the event loop's calls on psycopg's async connections (storage/loop_connections.py, no
thread hop), other threads' (tagging, the command line) on a small synchronous pool. A read is each statement
on its own snapshot (autocommit) unless it asks for one snapshot for all of them (``run_snapshot``: an
attachment's row and its labels).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, NullPool, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from board_server.storage.errors import busy_is_unavailable
from board_server.storage.group_commit import GroupCommitWriter
from board_server.storage.lean import LeanQuery
from board_server.storage.loop_connections import LoopConnections
from board_server.storage.migrations import head_revision

logger = logging.getLogger(__name__)

T = TypeVar("T")

_WRITE_OPTION = "board_write"
# What a process on PostgreSQL imports besides what every process does (its event loop's async engine, psycopg
# and its dialect), imported where used: a fork server preloads them when its processes serve PostgreSQL.
POSTGRES_MODULES = ("psycopg", "sqlalchemy.ext.asyncio", "sqlalchemy.dialects.postgresql.psycopg")
# Reads whose cost the caller chooses (``run_search``) running at once per process; more wait their turn.
SEARCHES_AT_ONCE = 2


@dataclass
class Database:
    """The engine and how reads and writes are run on it."""

    engine: Engine
    writer: GroupCommitWriter | None = None
    # PostgreSQL: the event loop's connections (threads use ``engine``'s pool).
    loop_connections: LoopConnections | None = None
    # SQLite reads keep one connection per thread (a pool checkout per call costs more than a point read);
    # reads run in autocommit mode, so a kept connection holds no snapshot between calls.
    _reader: threading.local = field(default_factory=threading.local, repr=False)
    _readers: list[Connection] = field(default_factory=list, repr=False)
    _readers_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _search_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(SEARCHES_AT_ONCE), repr=False
    )
    _search_threads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(SEARCHES_AT_ONCE, thread_name_prefix="board-search"),
        repr=False,
    )

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for queries only; nothing is committed."""
        if self.writer is None:  # PostgreSQL: a pooled connection per call
            with busy_is_unavailable(), self.engine.connect() as pooled:
                yield pooled
            return
        conn: Connection | None = getattr(self._reader, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            self._reader.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        try:
            with busy_is_unavailable():
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
        with busy_is_unavailable(), self.engine.execution_options(**{_WRITE_OPTION: True}).begin() as conn:
            return work(conn)

    def query(self, work: Callable[[Connection], T]) -> T:
        """Run the read-only ``work(conn)`` on a read connection; return its result."""
        with self.read() as conn:
            return work(conn)

    async def run_read(self, work: Callable[[Connection], T]) -> T:
        """``query(work)`` from the event loop: inline on SQLite, on a loop connection on PostgreSQL."""
        if self.loop_connections is None:
            return self.query(work)
        return await self.loop_connections.autocommit(work)

    async def read_first(self, query: LeanQuery, params: dict[str, Any]) -> Any:
        """``run_read(lambda conn: query.first(conn, params))``, on PostgreSQL straight on a loop connection's
        cursor (``LoopConnections.on_cursor``: no greenlet, no SQLAlchemy execution)."""
        if self.loop_connections is None:
            return self.query(lambda conn: query.first(conn, params))
        return await self.loop_connections.on_cursor(lambda cursor: query.first_on(cursor, params))

    async def read_all(self, query: LeanQuery, params: dict[str, Any]) -> list[Any]:
        """``run_read(lambda conn: query.all(conn, params))``, as ``read_first`` does it."""
        if self.loop_connections is None:
            return self.query(lambda conn: query.all(conn, params))
        return await self.loop_connections.on_cursor(lambda cursor: query.all_on(cursor, params))

    async def run_snapshot(self, work: Callable[[Connection], T]) -> T:
        """``run_read`` for a read of several statements that must agree (an attachment's row and its labels,
        which tagging replaces together): all of them see one snapshot of the database, where ``run_read``
        gives each statement its own (autocommit)."""
        if self.loop_connections is None:
            return self.query(lambda conn: _sqlite_snapshot(conn, work))
        return await self.loop_connections.snapshot(work)

    async def run_write(self, work: Callable[[Connection], T]) -> T:
        """``write(work)`` from the event loop, which keeps serving while the write commits."""
        if self.writer is not None:
            return await self.writer.submit_from_loop(work)
        if self.loop_connections is None:
            raise RuntimeError("PostgreSQL work needs the event loop's connections")
        return await self.loop_connections.write(work)

    async def write_first(self, query: LeanQuery, params: dict[str, Any]) -> Any:
        """A write of one statement (an INSERT ... RETURNING) and its first row. On PostgreSQL it runs alone
        in autocommit, atomic and durable by itself, without BEGIN and COMMIT round trips, straight on a
        loop connection's cursor (``LoopConnections.on_cursor``); on SQLite it commits in a group as every
        write does."""
        if self.loop_connections is None:
            return await self.run_write(lambda conn: query.first(conn, params))
        return await self.loop_connections.on_cursor(lambda cursor: query.first_on(cursor, params))

    async def run_search(self, work: Callable[[Connection], T]) -> T:
        """``run_read`` for a read whose cost the caller chooses (a filter, an order, a page of up to 1,000
        rows): at most SEARCHES_AT_ONCE per process at a time, and ended when its call ends (its deadline
        passed, the client went away: the awaiting task is cancelled). On SQLite it runs on a search thread,
        so the event loop keeps serving, and is interrupted (``sqlite3.Connection.interrupt``); on
        PostgreSQL psycopg cancels it in the server."""
        async with self._search_slots:
            if self.loop_connections is not None:
                return await self.loop_connections.autocommit(work)
            return await self._search_on_thread(work)

    async def _search_on_thread(self, work: Callable[[Connection], T]) -> T:
        connection: list[Any] = []  # the search thread's sqlite3 connection, once it has one
        abandoned = threading.Event()

        def search() -> T:
            with self.read() as conn:
                connection.append(conn.connection.driver_connection)
                if abandoned.is_set():  # given up while the thread was starting
                    raise TimeoutError("the call ended before its search started")
                return work(conn)

        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._search_threads, search)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            abandoned.set()
            # An interrupt reaches only a statement already running: repeat it until the thread lets go.
            _interrupt_until_done(loop, done, connection)
            done.add_done_callback(_log_interrupted)
            raise

    def connections_in_use(self) -> int:
        """Connections lent to calls or threads right now (metrics)."""
        in_use = int(self.engine.pool.checkedout())  # type: ignore[attr-defined]
        if self.loop_connections is not None:
            in_use += self.loop_connections.in_use
        return in_use

    async def probe(self) -> None:
        """One round trip (SELECT 1) the way the event loop runs its reads; raises when it fails."""
        await self.run_read(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())

    def ping(self) -> None:
        """One round trip to the database (SELECT 1); raises when it cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.rollback()

    async def close(self) -> None:
        """``dispose()``, the event loop's connections closed first (from that loop)."""
        if self.loop_connections is not None:
            await self.loop_connections.close()
        self.dispose()

    def dispose(self) -> None:
        self._search_threads.shutdown(wait=False, cancel_futures=True)
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()
        if self.writer is not None:
            self.writer.close()
        self.engine.dispose()


def _log_interrupted(done: asyncio.Future[Any]) -> None:
    error = None if done.cancelled() else done.exception()
    error = getattr(error, "orig", error)  # SQLAlchemy's wrapper of the driver's error
    if isinstance(error, sqlite3.OperationalError) and "interrupt" in str(error):
        logger.info("a search was interrupted: its call ended first")


def _interrupt_until_done(
    loop: asyncio.AbstractEventLoop, done: asyncio.Future[Any], connection: list[Any], every_s: float = 0.05
) -> None:
    if done.done():
        return
    if connection:
        connection[0].interrupt()
    loop.call_later(every_s, _interrupt_until_done, loop, done, connection, every_s)


def _check_for_lost_client(dbapi_connection: Any, _record: Any) -> None:
    # A statement whose cancel request never arrived (the call was cancelled while psycopg was cancelling)
    # leaves a closed connection behind: PostgreSQL 14+ then ends the statement within a second.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET client_connection_check_interval = 1000")
    except Exception:  # an older server: it finds out when it sends the result
        logger.info("PostgreSQL has no client_connection_check_interval (before 14)", exc_info=True)
    finally:
        cursor.close()


def _switch_to_wal(cursor: sqlite3.Cursor, timeout_s: float) -> None:
    """``PRAGMA journal_mode=WAL``, tried again for up to ``timeout_s`` while the file is locked: where the
    switch would wait on a connection that itself waits (two servers starting on one fresh file), SQLite
    answers "database is locked" at once instead of calling the busy handler (seen in a suite run: one of
    three servers started together on a fresh file stopped at start-up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite's own BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching a fresh file to WAL takes a lock that a second server, starting at
        # the same moment, must wait for rather than fail on.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        _switch_to_wal(cursor, busy_timeout_ms / 1000)
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: an acknowledged commit is fsynced, so it survives kill -9 and power loss.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        # Reads stay in autocommit mode: one SELECT is atomic by itself (see the module docstring).
        if conn.get_execution_options().get(_WRITE_OPTION, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_snapshot(conn: Connection, work: Callable[[Connection], T]) -> T:
    """``work(conn)`` inside one read transaction of a read connection (autocommit otherwise): in WAL mode
    its statements share the snapshot its first one takes."""
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute("BEGIN")
    try:
        return work(conn)
    finally:
        raw.execute("ROLLBACK")


def open_database(
    url: str,
    *,
    connections: int = 8,
    busy_timeout_ms: int = 30_000,
    connect_timeout_s: float = 5.0,
    statement_timeout_s: float | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Database:
    """Create the engine for ``url`` (creating an SQLite file's folder if needed).

    ``connections``: PostgreSQL connections of the event loop; ``busy_timeout_ms``: how long an SQLite
    writer waits for a writer that does not take turns; ``connect_timeout_s``: how long a PostgreSQL
    connection attempt may take; ``statement_timeout_s``: PostgreSQL's statement_timeout on the event loop's
    connections (an upper bound: a call's own deadline cancels its statement sooner); ``on_batch``: told the
    size of every committed SQLite batch (metrics).
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": False}
    is_sqlite = parsed.get_backend_name() == "sqlite"
    lock_path: Path | None = None
    if is_sqlite:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            lock_path = Path(f"{parsed.database}-writer.lock")
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
        # SQLite: every thread that reads keeps its connection (the event loop, tagging threads), so the
        # number of threads bounds the connections, not the pool.
        engine = create_engine(parsed, pool_size=connections, max_overflow=-1, **kwargs)
        _configure_sqlite(engine, busy_timeout_ms)
        writer = GroupCommitWriter(engine.execution_options(**{_WRITE_OPTION: True}), lock_path, on_batch)
        return Database(engine=engine, writer=writer)
    # A database that cannot be reached must fail a call (and the health check) in seconds, not hang.
    # No JIT: compiling a filter of many label comparisons took seconds (the query itself a millisecond),
    # and a statement being compiled cannot be cancelled.
    connect_args: dict[str, Any] = {
        "connect_timeout": max(1, round(connect_timeout_s)),
        "options": "-c jit=off",
    }
    # Threads (tagging, the command line): a small pool, grown on demand.
    engine = create_engine(parsed, pool_size=2, max_overflow=8, connect_args=connect_args, **kwargs)
    loop_args = dict(connect_args)
    # Timestamps come back in UTC (timezone.utc), as the Core path gives them: the lean path converts nothing.
    loop_args["options"] += " -c TimeZone=UTC"
    if statement_timeout_s is not None:
        loop_args["options"] += f" -c statement_timeout={max(1, round(statement_timeout_s * 1000))}"
    # The event loop's connections are kept by LoopConnections, so SQLAlchemy pools none of them.
    from sqlalchemy.ext.asyncio import create_async_engine  # PostgreSQL's alone (POSTGRES_MODULES)

    loop_engine = create_async_engine(
        parsed, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=loop_args
    )
    event.listen(loop_engine.sync_engine, "connect", _check_for_lost_client)
    return Database(engine=engine, loop_connections=LoopConnections(loop_engine, connections))


def modules_for(url: str) -> tuple[str, ...]:
    """The modules a process serving the database at ``url`` imports besides what every process does."""
    return POSTGRES_MODULES if make_url(url).get_backend_name() == "postgresql" else ()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision in ONE transaction (idempotent, atomic, serialized).

    Every step commits together or not at all, so a crash at any point of the first start leaves the previous
    schema, and a restart simply runs again. Servers starting together take turns: PostgreSQL through an
    advisory lock, SQLite through BEGIN IMMEDIATE (its write lock, with DDL being transactional there too);
    the second one then finds the schema at head and does nothing. A database at head (every start but the
    first of a release) is read under the same lock without loading Alembic, a good part of a start's and of
    an admin command's CPU (docs/operations.md).
    """
    with busy_is_unavailable(), engine.execution_options(**{_WRITE_OPTION: True}).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(4242001)")
        if _revisions(connection) != [head_revision()]:
            from alembic import command
            from alembic.config import Config

            package = Path(__file__).resolve().parent
            config = Config(str(package / "alembic.ini"))
            config.set_main_option("script_location", str(package / "migrations"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    logger.info("database schema at head (%s)", engine.url.render_as_string(hide_password=True))


def _revisions(connection: Connection) -> list[str]:
    """The revisions Alembic recorded in the database (none before its first migration)."""
    if not inspect(connection).has_table("alembic_version"):
        return []
    return [row[0] for row in connection.exec_driver_sql("SELECT version_num FROM alembic_version")]
