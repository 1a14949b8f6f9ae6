"""WatchAttachment across replicas on PostgreSQL: an outcome committed by one replica wakes the watchers of
another through LISTEN/NOTIFY, long before its poll; a listener connection that is dropped is covered by the
poll and comes back.

Replica B tags through tests/board/fake_torchserve.py (every image refused: the upload ends FAILED at once);
replica A has no segmentation target, so every change its watchers see was committed by B.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from clients.gen.board.v1 import board_pb2
from tests.board.conftest import (
    PostgresCluster,
    RunningServer,
    database_engine,
    sign_up,
    start_board_server,
    tiny_png,
)
from tests.board.fake_torchserve import FakeTorchServe, fake_torchserve
from tests.support import Processes, wait_for

pytestmark = pytest.mark.postgres

LISTENERS = "SELECT pid FROM pg_stat_activity WHERE application_name = :name"


@pytest.fixture
def tagger(
    postgres_cluster: PostgresCluster, processes: Processes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, RunningServer, FakeTorchServe]]:
    """Replica B on a fresh database, tagging through the fake model server; (URL, B, the fake)."""
    url = postgres_cluster.new_database()
    with fake_torchserve() as fake:
        extra = ("--segmentation-target", fake.target, "--tagging-poll", "0.2")
        yield url, start_board_server(processes, url, tmp_path_factory.mktemp("b"), extra=extra), fake


def watch_until_settled(server: RunningServer) -> tuple[list[board_pb2.AttachmentStatus], float]:
    """Upload a photo through ``server`` and watch it there: the statuses seen and the seconds the watch
    took."""
    member = sign_up(server.target, "Watcher")
    with member.client as client:
        post = client.create_post(0, "across replicas", "tagged by the other replica")
        attachment = client.add_attachment(post.id, "p.png", tiny_png())
        started = time.monotonic()
        statuses = [item.status for item in client.watch_attachment(attachment.id, timeout=120)]
    return statuses, time.monotonic() - started


def listener_pids(url: str, server: RunningServer) -> list[int]:
    with database_engine(url) as engine, engine.connect() as conn:
        name = f"board-listener-{server.proc.pid}"
        return [int(pid) for (pid,) in conn.execute(text(LISTENERS), {"name": name})]


def wait_for_listener(url: str, server: RunningServer, *, other_than: tuple[int, ...] = ()) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        fresh = [pid for pid in listener_pids(url, server) if pid not in other_than]
        if fresh:
            return fresh[0]
        time.sleep(0.1)
    raise TimeoutError(f"{server.name} has no LISTEN connection:\n{server.log()}")


@pytest.fixture
def watching(
    tagger: tuple[str, RunningServer, FakeTorchServe],
    processes: Processes,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], tuple[RunningServer, int]]:
    """``watching(poll)``: replica A on B's database, polling every ``poll``; A and its listener's pid."""

    def start(poll: str) -> tuple[RunningServer, int]:
        url = tagger[0]
        a = start_board_server(processes, url, tmp_path_factory.mktemp("a"), extra=("--watch-poll", poll))
        return a, wait_for_listener(url, a)

    return start


def test_an_outcome_on_one_replica_reaches_a_watcher_of_another_long_before_its_poll(
    tagger: tuple[str, RunningServer, FakeTorchServe], watching: Callable[[str], tuple[RunningServer, int]]
) -> None:
    b = tagger[1]
    # A polls once a minute: only a notification can bring B's outcome to its watcher sooner.
    a, _ = watching("60")
    statuses, seconds = watch_until_settled(a)
    assert statuses[-1] == board_pb2.ATTACHMENT_STATUS_FAILED, statuses
    assert seconds < 30, f"the watch took {seconds:.1f} s: the notification did not wake A"
    # B logs the outcome after it stored it (and so after the notification): the line may come a moment later.
    wait_for("B's log line of the outcome", lambda: "FAILED" in b.log(), timeout=10)
    assert "FAILED" not in a.log()


def test_a_dropped_listener_is_covered_by_the_poll_and_reconnects(
    tagger: tuple[str, RunningServer, FakeTorchServe], watching: Callable[[str], tuple[RunningServer, int]]
) -> None:
    url = tagger[0]
    a, dropped = watching("2")
    with database_engine(url) as engine, engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dropped}).scalar()
    statuses, seconds = watch_until_settled(a)
    assert statuses[-1] == board_pb2.ATTACHMENT_STATUS_FAILED, statuses
    assert seconds < 30
    wait_for_listener(url, a, other_than=(dropped,))
    assert "the change listener lost its connection" in a.log()
    statuses, _ = watch_until_settled(a)
    assert statuses[-1] == board_pb2.ATTACHMENT_STATUS_FAILED, statuses
