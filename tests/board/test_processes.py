"""The process model (a supervisor and N SO_REUSEPORT server processes) against real `board-server` runs:

- each write acknowledged once: concurrent CreatePosts with unique titles over connections spread across the
  processes, every acknowledged one present exactly once and nothing else;
- group commit across processes on SQLite: writers on every process, then kill -9 of the whole group in the
  middle of the writes; after a restart every acknowledged write is there, once;
- the supervisor restarts a server process killed with -9, and the port keeps answering meanwhile;
- SIGTERM to the supervisor drains every process: calls in flight (held back by a database lock) complete,
  then everything exits.

Which process serves which connection is read from the kernel (psutil): the tests first make sure that every
server process holds some of their connections, so that "across processes" is observed, not hoped for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.board import BoardClient, BoardClientError
from tests.board.conftest import Backend, RunningServer, sign_up, start_board_server
from tests.board.prometheus import sample
from tests.support import Processes, wait_for

GENEROUS = 60.0
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # each client its own TCP connection


def serve(
    processes: Processes, database_url: str, workdir: Path, count: int, *, metrics: bool = False
) -> RunningServer:
    """``count`` server processes; /metrics on a free port with ``metrics``, else none."""
    extra: tuple[str, ...] = ("--auth", "on", "--processes", str(count), "--grace", "20")
    extra += () if metrics else ("--metrics-address", "none")
    return start_board_server(processes, database_url, workdir, extra=extra)


def server_processes(server: RunningServer) -> list[psutil.Process]:
    """The server processes under the supervisor (forked by its fork server): those that listen on the board's
    port."""
    descendants = psutil.Process(server.proc.pid).children(recursive=True)
    return [p for p in descendants if _listens(p, server.port)]


def _listens(process: psutil.Process, port: int) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return any(
            c.laddr and c.laddr.port == port and c.status == "LISTEN" for c in process.net_connections()
        )
    return False


def connections_per_process(server: RunningServer) -> dict[int, int]:
    """Established connections to the board's port, per server process pid."""
    counts: dict[int, int] = {}
    for process in server_processes(server):
        with contextlib.suppress(psutil.NoSuchProcess):
            counts[process.pid] = sum(
                1
                for c in process.net_connections()
                if c.laddr and c.laddr.port == server.port and c.status == "ESTABLISHED"
            )
    return counts


def spread_clients(server: RunningServer, token: str, expected: int, at_least: int = 8) -> list[BoardClient]:
    """Clients on their own connections, opened until every one of ``expected`` processes holds one."""
    clients: list[BoardClient] = []
    while len(clients) < 64:
        client = BoardClient(server.target, timeout=GENEROUS, token=token, options=OWN_CONNECTION)
        client.list_users(page_size=1)  # connects
        clients.append(client)
        counts = connections_per_process(server)
        if len(clients) >= at_least and len(counts) == expected and all(counts.values()):
            return clients
    raise AssertionError(f"connections never reached every process: {connections_per_process(server)}")


def sign_up_writer(target: str) -> tuple[int, str]:
    """A new user signed in: (user id, access token)."""
    member = sign_up(target, "Writer", timeout=GENEROUS)
    member.client.close()
    assert member.client.token is not None
    return member.id, member.client.token


def titles_of(target: str, user_id: int) -> Counter[str]:
    with BoardClient(target, timeout=GENEROUS) as reader:
        return Counter(post.title for post in reader.iter_posts(user_id, page_size=1000))


@contextlib.contextmanager
def closing_all(clients: list[BoardClient]) -> Iterator[list[BoardClient]]:
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("count", [2, 3])
def test_each_write_is_acknowledged_once_across_processes(
    backend: Backend, processes: Processes, count: int
) -> None:
    server = serve(processes, backend.new_database_url(), backend.workdir, count)
    assert len(server_processes(server)) == count
    user_id, token = sign_up_writer(server.target)
    with closing_all(spread_clients(server, token, count)) as clients:
        titles = [f"{uuid.uuid4().hex}-{i}" for i in range(400)]

        def create(i: int) -> str:
            post = clients[i % len(clients)].create_post(user_id, titles[i], "once")
            return str(post.title)

        with ThreadPoolExecutor(16) as pool:
            acknowledged = list(pool.map(create, range(len(titles))))
    assert sorted(acknowledged) == sorted(titles)
    stored = titles_of(server.target, user_id)
    assert stored == Counter(titles), {t: n for t, n in stored.items() if n != 1 or t not in titles}


def test_group_commit_across_processes_survives_kill_9_of_the_group(
    processes: Processes, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'board.db'}"
    server = serve(processes, url, tmp_path, 2)
    user_id, token = sign_up_writer(server.target)
    acknowledged: list[str] = []
    attempted: set[str] = set()
    lock = threading.Lock()
    killed = threading.Event()
    with closing_all(spread_clients(server, token, 2)) as clients:

        def write(index: int) -> None:
            # Writes until the kill fails one: each of the 16 writers is mid-write when the group dies.
            client = clients[index % len(clients)]
            i = 0
            while True:
                title = f"w{index}-{i}"
                i += 1
                with lock:
                    attempted.add(title)
                try:
                    client.create_post(user_id, title, "durable", timeout=10)
                except BoardClientError:
                    if killed.is_set():
                        return
                    raise
                with lock:
                    acknowledged.append(title)

        with ThreadPoolExecutor(16) as pool:
            writers = [pool.submit(write, i) for i in range(16)]
            enough = lambda: len(acknowledged) >= 300 or any(w.done() for w in writers)  # noqa: E731
            wait_for("300 acknowledged writes", enough, 120)
            killed.set()
            os.killpg(server.proc.pid, signal.SIGKILL)  # supervisor and server processes, mid-write
            server.proc.wait(timeout=GENEROUS)
            for writer in writers:
                writer.result(timeout=GENEROUS)
    assert len(acknowledged) >= 300
    assert len(attempted) > len(acknowledged), "no write was in flight when the group was killed"
    restarted = serve(processes, url, tmp_path, 1)
    stored = titles_of(restarted.target, user_id)
    missing = [t for t in acknowledged if stored[t] != 1]
    assert not missing, f"{len(missing)} acknowledged writes lost or doubled, e.g. {missing[:5]}"
    assert set(stored) <= attempted and max(stored.values()) == 1


def test_supervisor_restarts_a_killed_server_process_and_the_port_keeps_answering(
    processes: Processes, tmp_path: Path
) -> None:
    server = serve(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, 2)
    before = {p.pid for p in server_processes(server)}
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    def answered() -> bool:
        # A fresh connection each time; wait_for_ready: a call may wait for a connection, never fail for one.
        with grpc.insecure_channel(server.target, options=OWN_CONNECTION) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            response = health.Check(health_pb2.HealthCheckRequest(), timeout=GENEROUS, wait_for_ready=True)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    # The port answers from the kill on, until the replacement serves (forked from the fork server, it may
    # be there before the first call: the port is asked at least once all the same).
    deadline = time.monotonic() + 120
    while True:
        assert answered()
        if len({p.pid for p in server_processes(server)} - before) >= 1 or time.monotonic() > deadline:
            break
    after = {p.pid for p in server_processes(server)}
    assert len(after) == 2 and victim not in after, (before, after)
    assert "restarting it" in server.log()
    assert server.proc.poll() is None
    # The new process serves too.
    user_id, token = sign_up_writer(server.target)
    with closing_all(spread_clients(server, token, 2)) as clients:
        new = (after - before).pop()
        assert connections_per_process(server)[new] >= 1
        for client in clients:
            assert client.create_post(user_id, "after the restart", "served").id > 0


def test_sigterm_drains_every_process(processes: Processes, tmp_path: Path) -> None:
    path = tmp_path / "board.db"
    server = serve(processes, f"sqlite:///{path}", tmp_path, 2, metrics=True)
    children = server_processes(server)
    user_id, token = sign_up_writer(server.target)
    with closing_all(spread_clients(server, token, 2)) as clients:
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # every write now waits for this lock, in both processes
        try:
            with ThreadPoolExecutor(len(clients)) as pool:
                calls = [
                    pool.submit(c.create_post, user_id, f"in flight {i}", "drained", timeout=GENEROUS)
                    for i, c in enumerate(clients)
                ]
                # Every call has reached a server process (and cannot finish: the lock is held).
                in_servers = len(calls)
                wait_for(
                    "the calls in the servers",
                    lambda: (
                        sample(server, "grpc_server_started_total", grpc_method="CreatePost") >= in_servers
                    ),
                    GENEROUS,
                )
                assert not any(call.done() for call in calls)
                os.kill(server.proc.pid, signal.SIGTERM)  # the supervisor alone: it must tell the others
                wait_for("the drain to begin", lambda: "draining" in server.log(), GENEROUS)
                lock.execute("ROLLBACK")
                titles = [call.result(timeout=GENEROUS).title for call in calls]
        finally:
            lock.close()
    assert server.proc.wait(timeout=GENEROUS) == 0
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)
    restarted = serve(processes, f"sqlite:///{path}", tmp_path, 1)
    assert titles_of(restarted.target, user_id) == Counter(titles)
