"""Migrations are atomic and serialized, on SQLite as on PostgreSQL, with real `board-server` processes.

- kill -9 at many points of the first start on a fresh database (from before the migration to after the
  server listens): the database is then either untouched or at head, never half-built, and a normal restart
  gives a working server every time;
- several servers started at the same moment on one fresh database all come up, agree on one schema and one
  deployment key (a page token of one is valid on the others), and serve.
"""

from __future__ import annotations

import functools
import re
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.board import BoardClient
from tests.board.conftest import BOARD_SERVER, PostgresCluster, RunningServer, sign_up, start_board_server
from tests.support import Processes, wait_for

SCHEMA_AT_HEAD = re.compile(r"database schema at head")
FLAGS = ("--auth", "on", "--metrics-address", "none")


def serve(processes: Processes, database_url: str, workdir: Path, server_processes: int = 1) -> RunningServer:
    extra = (*FLAGS, "--processes", str(server_processes))
    return start_board_server(processes, database_url, workdir, extra=extra)


def assert_works(server: RunningServer) -> None:
    """Sign up, sign in, write, read and list; health SERVING."""
    import grpc

    member = sign_up(server.target, "Migrated", timeout=60.0)
    with member.client as client:
        post = client.create_post(member.id, "after the start", "works")
        assert client.get_post(post.id) == post
        assert post.id in [p.id for p in client.list_posts(user_id=member.id).posts]
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=60)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def first_start(processes: Processes, database_url: str, workdir: Path, name: str) -> subprocess.Popen[bytes]:
    """Start a server on a fresh database without waiting for it (its log: ``processes.log_text(name)``)."""
    args = [
        str(BOARD_SERVER), "--address", "127.0.0.1:0", "--http-address", "none", "--database-url",
        database_url, "--audit-log", str(workdir / f"{name}-audit.log"), "--processes", "1", *FLAGS,
    ]  # fmt: skip
    return processes.start(args, name=name, cwd=workdir)


# --- SQLite: what a kill -9 leaves ---------------------------------------------------------------------


def sqlite_state(path: Path) -> tuple[frozenset[str], tuple[str, ...]]:
    """The tables and the alembic version(s) of an SQLite file (opening it rolls back an unfinished WAL)."""
    if not path.exists():
        return frozenset(), ()
    with sqlite3.connect(path) as conn:
        tables = frozenset(
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not row[0].startswith("sqlite_")
        )
        versions: tuple[str, ...] = ()
        if "alembic_version" in tables:
            versions = tuple(row[0] for row in conn.execute("SELECT version_num FROM alembic_version"))
    return tables, versions


def logged_at_head(processes: Processes, name: str) -> bool:
    """Whether the server ``name`` has logged its schema at head."""
    return SCHEMA_AT_HEAD.search(processes.log_text(name)) is not None


def time_to_migrate_and_listen(processes: Processes, workdir: Path) -> tuple[float, float, Path]:
    """A reference first start: seconds until the schema is at head and until the server listens."""
    path = workdir / "reference.db"
    started = time.monotonic()
    proc = first_start(processes, f"sqlite:///{path}", workdir, "reference")
    migrated = listening = 0.0
    deadline = started + 120
    while not listening and time.monotonic() < deadline:
        text = processes.log_text("reference")
        now = time.monotonic() - started
        if not migrated and SCHEMA_AT_HEAD.search(text):
            migrated = now
        if "listening on" in text:
            listening = now
        time.sleep(0.01)
    assert listening, processes.log_text("reference")
    Processes.stop(proc)
    return migrated, listening, path


@pytest.mark.slow
def test_kill_9_at_any_point_of_the_first_start_then_a_restart_works(
    processes: Processes, tmp_path: Path
) -> None:
    migrated, listening, reference = time_to_migrate_and_listen(processes, tmp_path)
    head = sqlite_state(reference)
    assert head[1], "the reference start left no alembic version"
    # Dense around the migration (it ends at `migrated`), then spread to just past listening; and, as starts
    # under load take longer than the reference, once at the start and once as soon as its schema is at head.
    delays: list[float | None] = [0.0, *(max(0.0, migrated - 0.6 + 0.15 * i) for i in range(6))]
    delays += [listening * f for f in (0.1, 0.4, 0.8, 1.2)] + [None]
    outcomes: list[str] = []
    for i, delay in enumerate(delays):
        path = tmp_path / f"killed-{i}.db"
        name = f"killed-{i}"
        proc = first_start(processes, f"sqlite:///{path}", tmp_path, name)
        if delay is None:
            wait_for("the schema at head", functools.partial(logged_at_head, processes, name), timeout=120)
        else:
            time.sleep(delay)
        Processes.stop(proc, sig=signal.SIGKILL)
        tables, versions = sqlite_state(path)
        # Atomic: nothing of the schema, or all of it at head; never a part.
        assert (tables, versions) == head or not (tables - {"alembic_version"}), (delay, tables, versions)
        outcomes.append("head" if versions else "untouched")
        server = serve(processes, f"sqlite:///{path}", tmp_path)
        assert_works(server)
        Processes.stop(server.proc)
        assert sqlite_state(path) == head
    # The kills landed on both sides of the migration.
    assert {"head", "untouched"} <= set(outcomes), outcomes


def start_together(
    processes: Processes, database_url: str, workdir: Path, count: int, server_processes: int
) -> list[RunningServer]:
    """Start ``count`` servers at the same moment on one database; wait until each listens."""
    barrier = threading.Barrier(count)

    def start(_: int) -> RunningServer:
        barrier.wait()
        return serve(processes, database_url, workdir, server_processes)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


def assert_come_up_together(
    processes: Processes, database_url: str, workdir: Path, server_processes: int = 1
) -> None:
    """Three servers started at once on ``database_url`` each work, and a page token issued by one is valid
    on every other (one shared deployment key); then they are stopped."""
    servers = start_together(processes, database_url, workdir, 3, server_processes)
    for server in servers:
        assert_works(server)
    with BoardClient(servers[0].target) as first:
        token = first.list_users(page_size=1).next_page_token
    assert token
    for server in servers[1:]:
        with BoardClient(server.target) as other:
            assert other.list_users(page_size=1, page_token=token).users
    for server in servers:
        Processes.stop(server.proc)


@pytest.mark.slow
@pytest.mark.parametrize("server_processes", [1, 2])
def test_servers_started_together_on_a_fresh_sqlite_file_all_come_up(
    processes: Processes, tmp_path: Path, server_processes: int
) -> None:
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'fresh-{round_}.db'}"
        assert_come_up_together(processes, url, tmp_path, server_processes)


@pytest.mark.postgres
def test_servers_started_together_on_a_fresh_postgres_database_all_come_up(
    postgres_cluster: PostgresCluster, processes: Processes, tmp_path: Path
) -> None:
    for _ in range(2):
        assert_come_up_together(processes, postgres_cluster.new_database(), tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_during_the_first_start_on_postgres_then_a_restart_works(
    postgres_cluster: PostgresCluster, processes: Processes, tmp_path: Path
) -> None:
    for i, delay in enumerate((0.3, 0.6, 0.9, 1.2, 1.5, 1.8)):
        url = postgres_cluster.new_database()
        proc = first_start(processes, url, tmp_path, f"pg-killed-{i}")
        time.sleep(delay)
        Processes.stop(proc, sig=signal.SIGKILL)
        server = serve(processes, url, tmp_path)
        assert_works(server)
        Processes.stop(server.proc)
