"""PostgreSQL from the event loop: a few connections kept open per process, each lent to one call at a time.

A call's work is the same synchronous function of a SQLAlchemy ``Connection`` as on SQLite (the row modules
take one and never commit); it runs on the event loop in a greenlet (``AsyncConnection.run_sync``), so every
statement is awaited on psycopg's async connection without a thread hop. The hottest statements skip
SQLAlchemy's execution and go to the driver's cursor (storage/lean.py, ``cursor_call``; ``on_cursor``
skips the greenlet too).

The connections run in autocommit mode: a read is one statement (or a few, each atomic), with no BEGIN or
ROLLBACK round trip, and so is a write of one statement; any other write sends BEGIN and COMMIT itself. Why
kept connections and not a pool checkout per call, and the figures: docs/operations.md, "How this was chosen".

A call whose task is cancelled (its deadline passed, the client went away) has its running statement
cancelled in the server by psycopg; the connection, in an unknown state afterwards, is closed rather than
lent again. Every statement also ends at ``statement_timeout``, set on each connection as an upper bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

from board_server.storage.errors import busy_is_unavailable

if TYPE_CHECKING:  # imported where used: a board on SQLite never loads psycopg nor SQLAlchemy's asyncio
    import psycopg
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger(__name__)

T = TypeVar("T")


_CURSOR = "board_cursor"


def kept_cursor(conn: Connection) -> Any:
    """The psycopg AsyncCursor kept for the driver's connection under ``conn``: made at its first statement
    and kept in its pool record's ``info`` (which lives as long as the driver's connection) instead of a
    cursor made per statement, 4.7 % of GetPost's throughput (pinned side-by-side rounds). A statement's
    rows are fetched before the next runs on it."""
    info = conn.connection.info
    cursor = info.get(_CURSOR)
    if cursor is None:
        driver = conn.connection.driver_connection
        assert driver is not None
        # Rows in binary: a page of posts' timestamps load without parsing text (ListPosts 1.9 %).
        cursor = info[_CURSOR] = driver.cursor(binary=True)
    return cursor


def cursor_call(conn: Connection, work: Callable[[Any], Awaitable[T]]) -> T:
    """``await work(cursor)`` on ``kept_cursor(conn)`` from inside ``run_sync``; the driver's errors become
    SQLAlchemy's, as the Core path raises them."""
    import psycopg

    cursor = kept_cursor(conn)
    adapted = conn.connection.dbapi_connection
    assert adapted is not None
    try:
        result: T = adapted.run_async(lambda driver: work(cursor))
    except psycopg.Error as exc:
        raise _as_sqlalchemy_error(conn, exc) from exc
    return result


def _as_sqlalchemy_error(conn: Connection, exc: psycopg.Error) -> StatementError:
    """A driver's error as SQLAlchemy raises it on its Core path (``connection_invalidated`` when lost)."""
    import psycopg

    driver = conn.connection.driver_connection
    lost = driver is None or driver.closed or driver.broken
    return DBAPIError.instance(None, None, exc, psycopg.Error, connection_invalidated=lost)


async def _begin(cursor: psycopg.AsyncCursor[Any]) -> None:
    await cursor.execute("BEGIN")


async def _commit(cursor: psycopg.AsyncCursor[Any]) -> None:
    await cursor.execute("COMMIT")


async def _rollback(cursor: psycopg.AsyncCursor[Any]) -> None:
    await cursor.execute("ROLLBACK")


async def _on_kept_cursor(work: Callable[[Any], Awaitable[T]], conn: AsyncConnection) -> T:
    """``await work(cursor)`` on ``conn``'s kept cursor; the driver's errors become SQLAlchemy's."""
    import psycopg

    sync = conn.sync_connection
    assert sync is not None
    try:
        return await work(kept_cursor(sync))
    except psycopg.Error as exc:
        raise _as_sqlalchemy_error(sync, exc) from exc


def _autocommit(conn: Connection, work: Callable[[Connection], T]) -> T:
    try:
        return work(conn)
    finally:
        if conn.in_transaction():  # SQLAlchemy's own bookkeeping; autocommit: no round trip
            conn.rollback()


async def _begin_snapshot(cursor: psycopg.AsyncCursor[Any]) -> None:
    await cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")


def _snapshot(conn: Connection, work: Callable[[Connection], T]) -> T:
    cursor_call(conn, _begin_snapshot)
    try:
        return work(conn)
    finally:
        cursor_call(conn, _rollback)  # read only: nothing to keep
        if conn.in_transaction():
            conn.rollback()


def _write(conn: Connection, work: Callable[[Connection], T]) -> T:
    cursor_call(conn, _begin)
    try:
        result = work(conn)
    except Exception:
        cursor_call(conn, _rollback)
        raise
    else:
        cursor_call(conn, _commit)
    finally:
        # SQLAlchemy's own bookkeeping, after the COMMIT: its rollback would reach an open transaction.
        if conn.in_transaction():
            conn.rollback()
    return result


class LoopConnections:
    """Up to ``size`` connections of ``engine`` (autocommit), opened when first needed and kept; a call
    waits for a free one when all are lent."""

    def __init__(self, engine: AsyncEngine, size: int) -> None:
        self.engine = engine
        self._size = size
        self._opened = 0
        self._idle: list[AsyncConnection] = []
        # A waiter gets a connection, or None: a slot came free and it opens a connection itself.
        self._waiters: collections.deque[asyncio.Future[AsyncConnection | None]] = collections.deque()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def in_use(self) -> int:
        return self._opened - len(self._idle)

    async def autocommit(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` on a lent connection, in autocommit (each statement atomic and durable by itself):
        reads, and writes of one statement."""
        return await self._run(_autocommit, work)

    async def snapshot(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` reading in one REPEATABLE READ, READ ONLY transaction: its statements agree."""
        return await self._run(_snapshot, work)

    async def write(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in one transaction, committed before this returns; rolled back if it raises."""
        return await self._run(_write, work)

    async def on_cursor(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``await work(cursor)`` on a lent connection's kept cursor, in autocommit, straight from the event
        loop: no greenlet and none of SQLAlchemy's execution (``run_sync`` cost GetPost 13 % of its
        throughput), for one statement of the lean path (``LeanQuery.first_on``)."""
        return await self._lent(partial(_on_kept_cursor, work))

    async def _run(
        self, how: Callable[[Connection, Callable[[Connection], T]], T], work: Callable[[Connection], T]
    ) -> T:
        return await self._lent(lambda conn: conn.run_sync(how, work))

    async def _lent(self, use: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``await use(conn)`` on a connection lent for it, given back afterwards (closed if the call was
        cancelled mid-statement or the connection broke)."""
        conn = await self._take()
        try:
            with busy_is_unavailable():
                result = await use(conn)
        except BaseException as exc:
            self._give_back(conn, healthy=isinstance(exc, Exception))
            raise
        self._give_back(conn, healthy=True)
        return result

    async def _take(self) -> AsyncConnection:
        while True:
            if self._idle:
                return self._idle.pop()
            if self._opened < self._size:
                self._opened += 1
                try:
                    with busy_is_unavailable():
                        return await self.engine.connect()
                except BaseException:
                    self._slot_freed()
                    raise
            waiter: asyncio.Future[AsyncConnection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed over just as the caller gave up
                    handed = waiter.result()
                    if handed is None:
                        self._slot_freed()
                    else:
                        self._give_back(handed, healthy=True)
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            if conn is not None:
                return conn

    def _give_back(self, conn: AsyncConnection, *, healthy: bool) -> None:
        """Lend ``conn`` again, or close it when it broke or was left mid-statement (a cancelled call)."""
        if healthy and _usable(conn):
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            self._idle.append(conn)
            return
        task = asyncio.get_running_loop().create_task(_close_quietly(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self._slot_freed()

    def _slot_freed(self) -> None:
        self._opened -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close_quietly(conn)
        self._opened -= len(idle)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self.engine.dispose()


def _usable(conn: AsyncConnection) -> bool:
    """Open, not invalidated, and outside any transaction (a write commits or rolls back before it ends)."""
    import psycopg

    sync = conn.sync_connection
    if sync is None or sync.closed or sync.invalidated:
        return False
    driver = sync.connection.driver_connection
    return (
        driver is not None
        and not driver.closed
        and driver.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    )


async def _close_quietly(conn: AsyncConnection) -> None:
    import psycopg

    try:
        await conn.close()
    except (SQLAlchemyError, psycopg.Error, OSError):
        logger.debug("closing a PostgreSQL connection of the event loop failed", exc_info=True)
