"""Group commit on SQLite: concurrent writes share one BEGIN IMMEDIATE … COMMIT (and one fsync), each in its
own SAVEPOINT so that a failing write rolls back alone, and each acknowledged only once its batch is durable.

Writers of every server process on one file take turns (``_Turn``: a thread lock plus an exclusive ``flock``
on ``<file>-writer.lock``, which wakes a waiter the moment it is released where SQLite's busy handler would
sleep and retry). An event loop runs its own calls' batch while it holds the turn and a committer thread
COMMITs it, so the loop never waits on an fsync; other threads' writes run on the writer thread, which also
waits for the turn on a loop's behalf. Why it is shaped so: docs/operations.md, "How this was chosen".
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
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.exc import SQLAlchemyError

from board_server.core.errors import DatabaseBusy
from board_server.storage.errors import busy_is_unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BATCH = 64


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

    The loop already holds the GIL, so its statements run without the thread switches that made the turn
    last several times longer on the writer thread; writes that arrive during the COMMIT form the next
    batch. When another process has the turn, the writer thread waits for it and hands it to the loop.
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

    def __init__(
        self,
        engine: Engine,
        lock_path: Path | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.turn = _Turn(lock_path)
        self._on_batch = on_batch  # told the size of every committed batch (metrics)
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
        with busy_is_unavailable():
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
            with busy_is_unavailable():
                transaction.commit()
        except Exception as exc:  # nothing in the batch is durable
            with contextlib.suppress(SQLAlchemyError):
                transaction.rollback()
            return self.failed("COMMIT", [job for job, _, _ in outcomes], exc)
        if self._on_batch is not None:
            self._on_batch(len(outcomes))
        return outcomes
