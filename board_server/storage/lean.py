"""The lean path: a Core statement that runs on the bare driver connection (sqlite3, or psycopg's async
connection of the event loop), compiled once."""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Connection, Select
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.sql.dml import ReturningInsert

from board_server.storage.loop_connections import cursor_call
from board_server.storage.tables import UTCDateTime


class LeanQuery:
    """A Core statement that, on SQLite, runs on the bare sqlite3 connection: compiled once, rows as tuples.

    SQLAlchemy's execution and row processing cost several times the query itself on a point read, so the
    hottest statements (a post, a page of posts, a token's identity, inserting a post) take this path. Rows
    keep attribute access (named tuples) and the types the Core path gives: UTC datetimes, booleans;
    datetime parameters are stored as the Core path stores them.
    On PostgreSQL from the event loop (storage/loop_connections.py) it runs on psycopg's async connection
    (a prepared statement after a few runs: psycopg's ``prepare_threshold``); from a thread, it is the
    ordinary Core execution. Simple statements only: SELECTs or INSERT ... RETURNING with named bind
    parameters, no expanding IN lists. Errors are the driver's own on SQLite (sqlite3.IntegrityError),
    SQLAlchemy's on PostgreSQL.
    """

    def __init__(self, statement: Select[Any] | ReturningInsert[Any]) -> None:
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

    @functools.cached_property
    def _postgres(self) -> tuple[str, dict[str, Any]]:
        """The statement as psycopg runs it, and the parameters the compiler added; compiled at first use,
        since a statement in SQLite's own spelling (an upsert) never runs on PostgreSQL."""
        from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

        compiled = self.statement.compile(dialect=psycopg_dialect.dialect())  # type: ignore[no-untyped-call]
        return str(compiled), {name: value for name, value in compiled.params.items() if value is not None}

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
        dialect = conn.dialect
        if dialect.name == "sqlite":
            values = self._rows(conn, params).fetchone()
            return None if values is None else self._make(values)
        if not dialect.is_async:
            return conn.execute(self.statement, params).first()

        # The event loop's connections run with TimeZone=UTC: psycopg's datetimes are already what the Core
        # path gives (UTC, timezone.utc), and its booleans are bool.
        return cursor_call(conn, lambda cursor: self.first_on(cursor, params))

    def all(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        """Every row, like ``conn.execute(statement, params).all()``."""
        dialect = conn.dialect
        if dialect.name == "sqlite":
            return [self._make(values) for values in self._rows(conn, params).fetchall()]
        if not dialect.is_async:
            return list(conn.execute(self.statement, params).all())

        return cursor_call(conn, lambda cursor: self.all_on(cursor, params))

    async def first_on(self, cursor: Any, params: dict[str, Any]) -> Any:
        """``first`` on a psycopg AsyncCursor of the loop's connections (``LoopConnections.on_cursor``)."""
        await cursor.execute(self._postgres[0], self._pg_params(params))
        values = await cursor.fetchone()
        return None if values is None else self._row._make(values)

    async def all_on(self, cursor: Any, params: dict[str, Any]) -> list[Any]:
        """``all`` on a psycopg AsyncCursor of the loop's connections (``LoopConnections.on_cursor``)."""
        await cursor.execute(self._postgres[0], self._pg_params(params))
        make = self._row._make
        return [make(values) for values in await cursor.fetchall()]

    def _pg_params(self, params: dict[str, Any]) -> dict[str, Any]:
        defaults = self._postgres[1]
        return {**defaults, **params} if defaults else params


def _utc_from_sqlite(text: str) -> datetime:
    # What UTCDateTime stores on SQLite: naive ISO text in UTC.
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _utc_to_sqlite(value: datetime) -> str:
    # The text SQLAlchemy's SQLite DATETIME stores (always six fractional digits), so that rows written
    # either way compare and sort alike.
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
