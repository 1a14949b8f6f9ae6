"""Engine, transactions and migrations of the board: SQLite tuned for a server, or PostgreSQL via psycopg 3.

Reads run on a Connection from ``Database.read()``; on SQLite they skip the explicit BEGIN, since each
SELECT is atomic on its own and the extra round trip costs more than the query.

Writes run through ``Database.write(work)``. On PostgreSQL each is its own transaction. On SQLite a single
writer thread per process applies queued writes in one ``BEGIN IMMEDIATE`` transaction, each write inside
its own SAVEPOINT (a failing write rolls back alone), and acknowledges them only after the one COMMIT that
makes them durable (synchronous=FULL): group commit, so concurrent writers share one fsync instead of
queueing for one each. BEGIN IMMEDIATE takes the write lock up front, so that another process holding it
makes us wait in SQLite's busy handler; a deferred transaction that upgrades later gets SQLITE_BUSY at once.
Several server processes on one file take turns through an exclusive ``flock`` on ``<file>-writer.lock``
around each batch: a waiting writer wakes the moment the lock is released, where SQLite's busy handler
would sleep in growing steps (up to 100 ms) and retry.

The event loop of the gRPC server uses ``run_read`` / ``run_write``: SQLite reads run inline (a point read is
tens of microseconds, cheaper than any hand-off to a thread), SQLite writes wait for the group commit without
blocking the loop, and PostgreSQL work runs on a small thread pool (a network round trip must not stall the
loop).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Boolean, Connection, Engine, Select, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.sql.dml import ReturningInsert

from board_server.config import Settings
from board_server.errors import DatabaseBusy, DatabaseUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

_WRITE_OPTION = "board_write"
_MAX_BATCH = 64


@contextmanager
def _busy_is_unavailable() -> Iterator[None]:
    """Lock contention beyond the busy timeout becomes DatabaseBusy, a database that cannot be reached (or
    dropped the connection) DatabaseUnavailable: both UNAVAILABLE, retryable, never INTERNAL."""
    try:
        yield
    except DBAPIError as exc:
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


@dataclass
class _Job:
    """A queued write and who waits for it: a thread (``future``) or a coroutine (``waiter``, of its loop)."""

    work: Callable[[Connection], Any]
    future: Future[Any] | None = None
    waiter: asyncio.Future[Any] | None = None

    def start(self) -> bool:
        """Whether the write is still wanted; a thread's future can no longer be cancelled afterwards.

        A coroutine's waiter is read from the writer thread: a cancellation racing this check lets the write
        commit while the caller has already gone, as a cancellation after the check does in any case."""
        if self.future is not None:
            return self.future.set_running_or_notify_cancel()
        return self.waiter is not None and not self.waiter.cancelled()


def _deliver(future: Future[Any] | asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _settle_waiters(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
    """On the event loop: hand every coroutine its write's outcome (unless it stopped waiting)."""
    for job, result, error in outcomes:
        if job.waiter is not None and not job.waiter.done():
            _deliver(job.waiter, result, error)


class GroupCommitWriter:
    """One writer thread that commits queued writes in batches (see the module docstring)."""

    def __init__(self, engine: Engine, lock_path: Path | None = None) -> None:
        self._engine = engine
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600) if lock_path is not None else None
        # Told the size of every committed batch (metrics).
        self.on_batch: Callable[[int], None] | None = None
        self._conn: Connection | None = None  # the writer thread's, see _connection
        self._thread = threading.Thread(target=self._run, name="board-writer", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[Connection], T]) -> Future[T]:
        """Queue ``work`` for the next batch; the future resolves once that batch is committed."""
        future: Future[T] = Future()
        self._jobs.put(_Job(work, future=future))
        return future

    def submit_from_loop(self, work: Callable[[Connection], T]) -> asyncio.Future[T]:
        """``submit`` for a coroutine: an asyncio future of the running loop, settled together with the rest
        of its batch by one wake-up of the loop (a thread future per write, chained to an asyncio one, cost
        a wake-up and two futures per write)."""
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put(_Job(work, waiter=waiter))
        return waiter

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in the next batch; return its result once that batch is committed, or raise."""
        return self.submit(work).result()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _run(self) -> None:
        while (first := self._jobs.get()) is not None:
            # The turn first, the batch after: writes that arrive while another process commits join this
            # batch instead of waiting for the next one (fewer, fuller fsyncs).
            with self._turn():
                batch, stop = self._drain(first)
                outcomes = self._commit(batch) if batch else []
            self._settle(outcomes)
            if stop:
                return

    def _drain(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and whatever else is queued (up to the batch limit); and whether close() was asked."""
        batch, stop = [first], False
        while len(batch) < _MAX_BATCH:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            batch.append(job)
        # A caller that gave up before its write started (server-side deadline, cancelled call) has cancelled
        # its future: that write is skipped. The rest are marked running, so they can no longer be cancelled
        # and setting their outcome cannot raise (which killed this thread: every later write then hung).
        return [job for job in batch if job.start()], stop

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn to write: an exclusive flock shared by every server process on the file."""
        if self._lock_fd is None:
            yield
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _commit(self, batch: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        """Run the batch in one transaction, a SAVEPOINT per write; every job's outcome (nothing is settled
        here, so the turn is handed on before the callers are woken)."""
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn = self._connection()
            with _busy_is_unavailable(), conn.begin():
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
            return [(job, None, exc) for job in batch]
        if self.on_batch is not None:
            self.on_batch(len(batch))
        return outcomes

    def _connection(self) -> Connection:
        """The writer thread's own connection, kept between batches (a pool checkout, its reset and its
        return cost more than a small batch's statements); replaced when it broke."""
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                with contextlib.suppress(SQLAlchemyError):
                    conn.close()
            conn = self._conn = self._engine.connect()
        return conn

    @staticmethod
    def _settle(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
        for outcome in outcomes:
            job, result, error = outcome
            if job.waiter is not None:
                by_loop.setdefault(job.waiter.get_loop(), []).append(outcome)
            elif job.future is not None:
                _deliver(job.future, result, error)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a loop closed while its writes committed: no one waits
                loop.call_soon_threadsafe(_settle_waiters, settled)


@dataclass
class Database:
    """The engine and how reads and writes are run on it."""

    engine: Engine
    writer: GroupCommitWriter | None = None
    # PostgreSQL: blocking database work of the event loop runs here (one thread per pooled connection).
    executor: ThreadPoolExecutor | None = None
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

    def query(self, work: Callable[[Connection], T]) -> T:
        """Run the read-only ``work(conn)`` on a read connection; return its result."""
        with self.read() as conn:
            return work(conn)

    async def run_read(self, work: Callable[[Connection], T]) -> T:
        """``query(work)`` from the event loop: inline on SQLite, on the database threads on PostgreSQL."""
        if self.executor is None:
            return self.query(work)
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.query, work)

    async def run_write(self, work: Callable[[Connection], T]) -> T:
        """``write(work)`` from the event loop, which keeps serving while the write commits."""
        if self.writer is not None:
            return await self.writer.submit_from_loop(work)
        if self.executor is None:
            raise RuntimeError("PostgreSQL work needs the database executor")
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.write, work)

    def ping(self) -> None:
        """One round trip to the database (SELECT 1); raises when it cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.rollback()

    def dispose(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()
        if self.writer is not None:
            self.writer.close()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        self.engine.dispose()


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite's own BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching a fresh file to WAL takes a lock that a second server, starting at
        # the same moment, must wait for rather than fail on.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
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
    lock_path: Path | None = None
    if is_sqlite:
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            lock_path = Path(f"{url.database}-writer.lock")
        kwargs["connect_args"] = {
            "check_same_thread": False,
            "timeout": settings.sqlite_busy_timeout_ms / 1000,
        }
    else:
        # A database that cannot be reached must fail a call (and the health check) in seconds, not hang.
        kwargs["connect_args"] = {"connect_timeout": max(1, round(settings.database_connect_timeout_s))}
    # One connection per worker thread, so a request never waits for a pooled connection.
    kwargs["pool_size"] = settings.worker_threads
    # SQLite: every thread that reads keeps its connection (gRPC workers, tagging threads), so the number of
    # threads bounds the connections, not the pool; PostgreSQL: a few beyond one per worker.
    kwargs["max_overflow"] = -1 if is_sqlite else 4
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
    if is_sqlite:
        writer = GroupCommitWriter(engine.execution_options(**{_WRITE_OPTION: True}), lock_path)
        return Database(engine=engine, writer=writer)
    executor = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="board-db")
    return Database(engine=engine, executor=executor)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision in ONE transaction (idempotent, atomic, serialized).

    Every step commits together or not at all, so a crash at any point of the first start leaves the previous
    schema, and a restart simply runs again. Servers starting together take turns: PostgreSQL through an
    advisory lock, SQLite through BEGIN IMMEDIATE (its write lock, with DDL being transactional there too);
    the second one then finds the schema at head and does nothing.
    """
    package = Path(__file__).resolve().parent
    config = Config(str(package / "alembic.ini"))
    config.set_main_option("script_location", str(package / "migrations"))
    with _busy_is_unavailable(), engine.execution_options(**{_WRITE_OPTION: True}).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(4242001)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    logger.info("database schema at head (%s)", engine.url.render_as_string(hide_password=True))


class LeanQuery:
    """A Core statement that, on SQLite, runs on the bare sqlite3 connection: compiled once, rows as tuples.

    SQLAlchemy's execution and row processing cost three to four times the query itself on a point read
    (108 vs 24 µs per GetPost's read, measured); the hottest statements (a post, a page of posts, a token's
    identity, inserting a post) take this path. Rows keep attribute access (named tuples) and the types the
    Core path gives: UTC datetimes, booleans; datetime parameters are stored as the Core path stores them.
    On PostgreSQL it is the ordinary Core execution. Simple statements only: SELECTs or INSERT ... RETURNING
    with named bind parameters, no expanding IN lists. Errors are the driver's own on SQLite
    (sqlite3.IntegrityError), SQLAlchemy's on PostgreSQL.
    """

    def __init__(self, statement: Select[Any] | ReturningInsert[Any]) -> None:
        from sqlalchemy.dialects import sqlite as sqlite_dialect

        from board_server.models import UTCDateTime

        self.statement = statement
        compiled = statement.compile(dialect=sqlite_dialect.dialect())
        self._sql = str(compiled)
        self._names = tuple(compiled.positiontup or ())
        # Parameters the compiler added itself (SQLite's OFFSET after a bound LIMIT) with their values.
        self._defaults = {name: value for name, value in compiled.params.items() if value is not None}
        self._stamps = frozenset(
            name for name, bind in compiled.binds.items() if isinstance(bind.type, UTCDateTime)
        )
        columns = list(statement.exported_columns)
        self._row: Any = collections.namedtuple("Row", [c.name for c in columns])  # type: ignore[misc]
        self._convert: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (i, _utc_from_sqlite if isinstance(c.type, UTCDateTime) else bool)
            for i, c in enumerate(columns)
            if isinstance(c.type, UTCDateTime | Boolean)
        )

    def _rows(self, conn: Connection, params: dict[str, Any]) -> Any:
        raw = conn.connection.driver_connection
        assert raw is not None
        defaults, stamps = self._defaults, self._stamps
        values = tuple(
            _utc_to_sqlite(params[name]) if name in stamps else params.get(name, defaults.get(name))
            for name in self._names
        )
        return raw.execute(self._sql, values)

    def _make(self, values: tuple[Any, ...]) -> Any:
        if self._convert:
            items = list(values)
            for index, convert in self._convert:
                if items[index] is not None:
                    items[index] = convert(items[index])
            values = tuple(items)
        return self._row._make(values)

    def first(self, conn: Connection, params: dict[str, Any]) -> Any:
        """The first row (or None), like ``conn.execute(statement, params).first()``."""
        if conn.dialect.name != "sqlite":
            return conn.execute(self.statement, params).first()
        values = self._rows(conn, params).fetchone()
        return None if values is None else self._make(values)

    def all(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        """Every row, like ``conn.execute(statement, params).all()``."""
        if conn.dialect.name != "sqlite":
            return list(conn.execute(self.statement, params).all())
        return [self._make(values) for values in self._rows(conn, params).fetchall()]


def _utc_from_sqlite(text: str) -> datetime:
    # What UTCDateTime stores on SQLite: naive ISO text in UTC.
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _utc_to_sqlite(value: datetime) -> str:
    # The text SQLAlchemy's SQLite DATETIME stores (always six fractional digits), so that rows written
    # either way compare and sort alike.
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
