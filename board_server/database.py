"""Engine, transactions and migrations of the board: SQLite tuned for a server, or PostgreSQL via psycopg 3.

Reads run on a Connection from ``Database.read()``; on SQLite they skip the explicit BEGIN, since each
SELECT is atomic on its own and the extra round trip costs more than the query.

Writes run through ``Database.write(work)`` (a thread) or ``run_write`` (the event loop). On PostgreSQL each
is its own transaction. On SQLite writes queued together are applied in one ``BEGIN IMMEDIATE`` transaction,
each inside its own SAVEPOINT (a failing write rolls back alone), and acknowledged only after the one COMMIT
that makes them durable (synchronous=FULL): group commit, so concurrent writers share one fsync instead of
queueing for one each. BEGIN IMMEDIATE takes the write lock up front; a deferred transaction that upgrades
later gets SQLITE_BUSY at once. Every writer first takes the turn: an exclusive ``flock`` on
``<file>-writer.lock`` shared by all server processes on the file (a waiting writer wakes the moment it is
released, where SQLite's busy handler would sleep in growing steps and retry), and a lock among the threads
of the process. An event loop's writes are run by the loop itself, their COMMIT by a committer thread
(``_LoopWrites`` says why); other threads' writes by a writer thread.

The event loop of the gRPC server uses ``run_read`` / ``run_write``: SQLite reads run inline (a point read is
tens of microseconds, cheaper than any hand-off to a thread), SQLite writes wait for the group commit without
blocking the loop on the fsync, and PostgreSQL work runs on a small thread pool (a network round trip must
not stall the loop).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import functools
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
from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    RootTransaction,
    Select,
    create_engine,
    event,
    make_url,
    text,
)
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
        """Whether the write is still wanted; a thread's future can no longer be cancelled afterwards."""
        if self.future is not None:
            return self.future.set_running_or_notify_cancel()
        return self.waiter is not None and not self.waiter.cancelled()


def _deliver(future: Future[Any] | asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


Outcomes = list[tuple[_Job, Any, BaseException | None]]


class _Turn:
    """The right to write: a lock between the threads of this process and, on a file, an exclusive ``flock``
    on ``<file>-writer.lock`` shared by every server process on it. Taken by one thread and given back by
    another (a loop's batch is committed on the committer thread)."""

    def __init__(self, lock_path: Path | None) -> None:
        self._local = threading.Lock()
        self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600) if lock_path is not None else None

    def take(self) -> None:
        """Wait for the turn (a thread's, never the event loop's)."""
        self._local.acquire()
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._local.release()
                raise

    def try_take(self) -> bool:
        """Take the turn if it is free, without waiting."""
        if not self._local.acquire(blocking=False):
            return False
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._local.release()
                return False
        return True

    def give(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._local.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _KeptConnection:
    """A writer's own connection, kept between batches (a pool checkout, its reset and its return cost more
    than a small batch's statements); replaced when it broke."""

    def __init__(self, engine: Engine, busy_timeout_ms: int | None = None) -> None:
        self._engine = engine
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: Connection | None = None

    def get(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                with contextlib.suppress(SQLAlchemyError):
                    conn.close()
            conn = self._conn = self._engine.connect()
            if self._busy_timeout_ms is not None:
                sqlite = conn.connection.driver_connection
                assert sqlite is not None
                sqlite.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        return conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None


# A loop's BEGIN IMMEDIATE does not wait for SQLite's lock. The loop holds the turn, so only a writer that
# does not take turns can hold that lock (another server's migration at its start, an sqlite3 shell); the
# batch is then run on the committer thread, which waits for the lock as long as the busy timeout allows.
_LOOP_BUSY_TIMEOUT_MS = 0


class _LoopWrites:
    """The writes of one event loop: run on that loop while it holds the turn, committed on the committer
    thread, settled on the loop.

    Under load the turn is what writers queue for, so what counts is how long a batch holds it. The writer
    thread alone, sharing the GIL with a busy loop, held it seven times longer than the statements take
    (1.4 ms per batch of three posts in the server against 0.2 ms in a process by itself): every statement
    gives the GIL up and waits to get it back, and each wait is a thread switch. The loop already holds the
    GIL, so it runs its statements without those waits; the COMMIT (the fsync) goes to the committer thread
    so that the loop keeps serving, and writes that arrive meanwhile form the next batch. When another
    process has the turn, the writer thread waits for it and hands it to the loop.
    """

    def __init__(self, writer: GroupCommitWriter, loop: asyncio.AbstractEventLoop) -> None:
        self._writer = writer
        self._loop = loop
        self._pending: collections.deque[_Job] = collections.deque()
        self._busy = False  # a batch is scheduled, waits for the turn, or is being committed
        self.connection = _KeptConnection(writer.engine, _LOOP_BUSY_TIMEOUT_MS)

    def add(self, job: _Job) -> None:
        self._pending.append(job)
        if not self._busy:
            self._busy = True
            # Soon, not now: the writes that this loop iteration is still submitting join the batch.
            self._loop.call_soon(self._try)

    def _try(self) -> None:
        if self._writer.turn.try_take():
            self._run()
        else:
            self._writer.wait_turn_for(self)

    def granted(self) -> bool:
        """From the writer thread, which took the turn for this loop: run the batch there. False when the
        loop is closed (the caller keeps the turn)."""
        try:
            self._loop.call_soon_threadsafe(self._run)
        except RuntimeError:
            return False
        return True

    def _run(self) -> None:
        """On the loop, holding the turn: run the pending writes and hand the open transaction to the
        committer thread, which commits it and gives the turn back."""
        writer = self._writer
        transaction: RootTransaction | None = None
        outcomes: Outcomes = []
        try:
            batch: list[_Job] = []
            while self._pending and len(batch) < _MAX_BATCH:
                job = self._pending.popleft()
                if job.start():  # a caller that gave up (deadline, cancelled call) is skipped
                    batch.append(job)
            if batch:
                try:
                    conn, transaction = writer.begin(self.connection)
                except DatabaseBusy:  # see _LOOP_BUSY_TIMEOUT_MS
                    writer.commit_later(self, functools.partial(writer.commit, writer.patient, batch))
                    return
                except Exception as exc:
                    outcomes = writer.failed("BEGIN", batch, exc)
                else:
                    transaction, outcomes = writer.apply(conn, transaction, batch)
        except BaseException:
            writer.turn.give()
            raise
        if transaction is None:  # nothing to commit
            writer.turn.give()
            self._settle(outcomes)
        else:
            writer.commit_later(self, functools.partial(writer.finish, transaction, outcomes))

    def committed(self, outcomes: Outcomes) -> None:
        """From the committer thread, the turn given back: settle the callers on the loop."""
        with contextlib.suppress(RuntimeError):  # a loop closed while its writes committed: no one waits
            self._loop.call_soon_threadsafe(self._settle, outcomes)

    def _settle(self, outcomes: Outcomes) -> None:
        for job, result, error in outcomes:
            if job.waiter is not None and not job.waiter.done():
                _deliver(job.waiter, result, error)
        if self._pending:
            self._loop.call_soon(self._try)
        else:
            self._busy = False


class GroupCommitWriter:
    """Commits queued writes in batches (see the module docstring). An event loop's writes run on that loop
    (``_LoopWrites``); other threads' writes run on the writer thread, which also waits for the turn on a
    loop's behalf; the committer thread commits the loops' batches."""

    def __init__(self, engine: Engine, lock_path: Path | None = None) -> None:
        self.engine = engine
        self.turn = _Turn(lock_path)
        # Told the size of every committed batch (metrics).
        self.on_batch: Callable[[int], None] | None = None
        self._jobs: queue.SimpleQueue[_Job | _LoopWrites | None] = queue.SimpleQueue()
        self._commits: queue.SimpleQueue[tuple[_LoopWrites, Callable[[], Outcomes]] | None] = (
            queue.SimpleQueue()
        )
        self._connection = _KeptConnection(engine)  # the writer thread's
        # The committer thread's, for a loop's batch that must wait for SQLite's lock.
        self.patient = _KeptConnection(engine)
        self._loops: dict[asyncio.AbstractEventLoop, _LoopWrites] = {}
        self._thread = threading.Thread(target=self._run, name="board-writer", daemon=True)
        self._committer = threading.Thread(target=self._run_commits, name="board-committer", daemon=True)
        self._thread.start()
        self._committer.start()

    def submit(self, work: Callable[[Connection], T]) -> Future[T]:
        """Queue ``work`` for the next batch; the future resolves once that batch is committed."""
        future: Future[T] = Future()
        self._jobs.put(_Job(work, future=future))
        return future

    def submit_from_loop(self, work: Callable[[Connection], T]) -> asyncio.Future[T]:
        """``submit`` for a coroutine: a future of the running loop, settled once its batch is durable."""
        loop = asyncio.get_running_loop()
        writes = self._loops.get(loop)
        if writes is None:
            writes = self._loops[loop] = _LoopWrites(self, loop)
        waiter: asyncio.Future[T] = loop.create_future()
        writes.add(_Job(work, waiter=waiter))
        return waiter

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in the next batch; return its result once that batch is committed, or raise."""
        return self.submit(work).result()

    def wait_turn_for(self, writes: _LoopWrites) -> None:
        """Have the writer thread wait for the turn and hand it to ``writes``' loop."""
        self._jobs.put(writes)

    def commit_later(self, writes: _LoopWrites, commit: Callable[[], Outcomes]) -> None:
        """Have the committer thread run ``commit`` (a loop's batch, the turn held), give the turn back and
        tell the loop."""
        self._commits.put((writes, commit))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)
        self._commits.put(None)
        self._committer.join(timeout=30)
        self._connection.close()
        self.patient.close()
        for writes in list(self._loops.values()):
            writes.connection.close()
        self._loops.clear()
        self.turn.close()

    def _run(self) -> None:
        granting: list[_LoopWrites] = []
        stop = False
        while not stop and (item := self._jobs.get()) is not None:
            if isinstance(item, _LoopWrites):
                granting.append(item)
            else:
                # The turn first, the batch after: writes that arrive while another process commits join
                # this batch instead of waiting for the next one (fewer, fuller fsyncs).
                self.turn.take()
                try:
                    batch, stop = self._drain(item, granting)
                    outcomes = self.commit(self._connection, batch)
                finally:
                    self.turn.give()
                for job, result, error in outcomes:
                    assert job.future is not None
                    _deliver(job.future, result, error)
            for writes in granting:
                self.turn.take()
                if not writes.granted():
                    self.turn.give()
            granting.clear()

    def _drain(self, first: _Job, granting: list[_LoopWrites]) -> tuple[list[_Job], bool]:
        """``first`` and whatever else is queued (up to the batch limit), loops waiting for the turn put
        aside in ``granting``; and whether close() was asked."""
        batch, stop = [first], False
        while len(batch) < _MAX_BATCH:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            if isinstance(job, _LoopWrites):
                granting.append(job)
            else:
                batch.append(job)
        # A caller that gave up before its write started has cancelled its future: that write is skipped.
        # The rest are marked running, so they can no longer be cancelled and setting their outcome cannot
        # raise (which killed this thread: every later write then hung).
        return [job for job in batch if job.start()], stop

    def _run_commits(self) -> None:
        while (item := self._commits.get()) is not None:
            writes, commit = item
            try:
                outcomes = commit()
            finally:
                self.turn.give()
            writes.committed(outcomes)

    def commit(self, connection: _KeptConnection, batch: list[_Job]) -> Outcomes:
        """Holding the turn: the batch in one transaction (``begin``, ``apply``, ``finish``); every job's
        outcome (none is settled here, so the turn is handed on before the callers are woken)."""
        if not batch:
            return []
        try:
            conn, transaction = self.begin(connection)
        except Exception as exc:
            return self.failed("BEGIN", batch, exc)
        open_transaction, outcomes = self.apply(conn, transaction, batch)
        return outcomes if open_transaction is None else self.finish(open_transaction, outcomes)

    @staticmethod
    def begin(connection: _KeptConnection) -> tuple[Connection, RootTransaction]:
        """BEGIN IMMEDIATE on the kept connection; DatabaseBusy when SQLite's lock stays taken."""
        with _busy_is_unavailable():
            conn = connection.get()
            return conn, conn.begin()

    @staticmethod
    def failed(step: str, batch: list[_Job], exc: Exception) -> Outcomes:
        """Every write of the batch failed with ``exc`` (logged unless it is only a busy database)."""
        if not isinstance(exc, DatabaseBusy):
            logger.error("%s of a batch of %d writes failed", step, len(batch), exc_info=exc)
        return [(job, None, exc) for job in batch]

    def apply(
        self, conn: Connection, transaction: RootTransaction, batch: list[_Job]
    ) -> tuple[RootTransaction | None, Outcomes]:
        """The batch's writes in ``transaction``, each in a SAVEPOINT (a failing write rolls back alone):
        the transaction, still open, and every write's outcome; None when the connection itself failed
        (rolled back, every write then has that error)."""
        outcomes: Outcomes = []
        try:
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
        except Exception as exc:
            with contextlib.suppress(SQLAlchemyError):
                transaction.rollback()
            return None, self.failed("a statement", batch, exc)
        return transaction, outcomes

    def finish(self, transaction: RootTransaction, outcomes: Outcomes) -> Outcomes:
        """COMMIT what ``apply`` left open: the outcomes, or every write failed with the COMMIT's error."""
        try:
            with _busy_is_unavailable():
                transaction.commit()
        except Exception as exc:  # nothing in the batch is durable
            with contextlib.suppress(SQLAlchemyError):
                transaction.rollback()
            return self.failed("COMMIT", [job for job, _, _ in outcomes], exc)
        if self.on_batch is not None:
            self.on_batch(len(outcomes))
        return outcomes


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
