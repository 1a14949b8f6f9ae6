"""The SQLite group-commit writer as coroutines and threads use it: one outcome per write, a failing write
fails alone, a write whose caller gave up before its batch started is never applied, writers of two
databases on one file (as two processes) and of threads and a loop interleave without losing or doubling a
write, and a writer that does not take turns makes the loop's writes wait without stalling the loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection

from board_server.storage.engine import Database, open_database


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = open_database(f"sqlite:///{tmp_path / 'board.db'}")
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
        # A thread's write: the writer thread holds the turn inside it until released.
        first = asyncio.create_task(asyncio.to_thread(database.write, blocking))
        await asyncio.to_thread(started.wait, 30)
        abandoned = asyncio.create_task(database.run_write(insert("abandoned")))
        await asyncio.sleep(0)  # submitted; its batch waits for the turn
        abandoned.cancel()
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        # The next write goes through, so the abandoned one had its turn and was skipped.
        await database.run_write(insert("after"))

    asyncio.run(main())
    assert values(database) == ["first", "after"]


def test_loop_thread_and_other_writer_interleave_each_write_acknowledged_once(
    database: Database, tmp_path: Path
) -> None:
    # A second Database on the same file takes turns with the first through the lock file, as a second
    # server process does.
    other = open_database(f"sqlite:///{tmp_path / 'board.db'}")
    try:

        async def main() -> list[int]:
            def from_threads(prefix: str, db: Database) -> list[int]:
                return [db.write(insert(f"{prefix}{i}")) for i in range(100)]

            threads = asyncio.gather(
                asyncio.to_thread(from_threads, "thread-a", database),
                asyncio.to_thread(from_threads, "thread-b", other),
            )
            loop_writes = asyncio.gather(
                *(database.run_write(insert(f"loop{i}")) for i in range(300)),
                *(other.run_write(insert(f"other-loop{i}")) for i in range(300)),
            )
            from_a, from_b = await threads
            return [*from_a, *from_b, *await loop_writes]

        ids = asyncio.run(main())
    finally:
        other.dispose()
    expected = [f"{p}{i}" for p in ("thread-a", "thread-b") for i in range(100)]
    expected += [f"{p}{i}" for p in ("loop", "other-loop") for i in range(300)]
    assert len(ids) == len(set(ids)) == len(expected)
    assert sorted(values(database)) == sorted(expected)


def test_a_writer_that_takes_no_turn_makes_loop_writes_wait_while_the_loop_serves(
    database: Database, tmp_path: Path
) -> None:
    # An sqlite3 shell, say: it holds SQLite's write lock without the board's turn.
    outsider = sqlite3.connect(tmp_path / "board.db", isolation_level=None, check_same_thread=False)
    outsider.execute("BEGIN IMMEDIATE")
    try:

        async def main() -> list[int]:
            writes = [asyncio.create_task(database.run_write(insert(f"w{i}"))) for i in range(20)]
            await asyncio.sleep(0.3)
            assert not any(w.done() for w in writes)  # waiting for the lock, not failed
            # The loop is not stalled: a read runs and a timer fires while the writes wait.
            assert await database.run_read(lambda conn: _raw(conn).execute("SELECT 1").fetchone()) == (1,)
            await asyncio.to_thread(outsider.execute, "ROLLBACK")
            return await asyncio.gather(*writes)

        ids = asyncio.run(main())
    finally:
        outsider.close()
    assert len(set(ids)) == 20
    assert sorted(values(database)) == sorted(f"w{i}" for i in range(20))
