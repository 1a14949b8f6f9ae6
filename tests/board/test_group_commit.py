"""The SQLite group-commit writer as coroutines use it: one outcome per write, a failing write fails alone,
a write whose caller gave up before its batch started is never applied."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection

from board_server.config import Settings
from board_server.database import Database, open_database


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = open_database(Settings(database_url=f"sqlite:///{tmp_path / 'board.db'}"))
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)")
    try:
        yield db
    finally:
        db.dispose()


def _raw(conn: Connection) -> sqlite3.Connection:
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw


def insert(value: str) -> Callable[[Connection], int]:
    def work(conn: Connection) -> int:
        row_id = _raw(conn).execute("INSERT INTO t (v) VALUES (?)", (value,)).lastrowid
        assert row_id is not None
        return row_id

    return work


def values(db: Database) -> list[str]:
    return db.query(lambda conn: [row[0] for row in _raw(conn).execute("SELECT v FROM t ORDER BY id")])


def test_concurrent_writes_each_get_their_own_outcome_and_all_are_committed(database: Database) -> None:
    async def main() -> list[int]:
        return await asyncio.gather(*(database.run_write(insert(f"v{i}")) for i in range(200)))

    ids = asyncio.run(main())
    assert len(set(ids)) == 200
    assert sorted(values(database)) == sorted(f"v{i}" for i in range(200))


def test_a_failing_write_fails_alone(database: Database) -> None:
    async def main() -> list[object]:
        writes = [insert("a"), insert("dup"), insert("dup"), insert("b")]
        return await asyncio.gather(*(database.run_write(w) for w in writes), return_exceptions=True)

    outcomes = asyncio.run(main())
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and "UNIQUE" in str(failed[0])
    assert sorted(values(database)) == ["a", "b", "dup"]


def test_a_write_whose_caller_gave_up_before_its_batch_is_never_applied(database: Database) -> None:
    started, release = threading.Event(), threading.Event()

    def blocking(conn: Connection) -> None:
        started.set()
        release.wait(timeout=30)
        _raw(conn).execute("INSERT INTO t (v) VALUES ('first')")

    async def main() -> None:
        first = asyncio.create_task(database.run_write(blocking))
        await asyncio.to_thread(started.wait, 30)  # the writer thread is inside the first batch now
        abandoned = asyncio.create_task(database.run_write(insert("abandoned")))
        await asyncio.sleep(0)  # queued behind the first batch
        abandoned.cancel()
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        # The next write goes through, so the abandoned one had its turn and was skipped.
        await database.run_write(insert("after"))

    asyncio.run(main())
    assert values(database) == ["first", "after"]
