"""WatchAttachment and the Prometheus endpoint against real board servers (no TorchServe: tagging off, so
uploads stay PENDING and the database is changed behind the API where a test needs a state change).

- a watch sends the current state at once, then each change, and ends after TAGGED or FAILED; it ends with
  NOT_FOUND when the attachment is deleted, and with the caller's deadline otherwise;
- 64 open watch streams do not starve other calls;
- /metrics, scraped over HTTP, counts calls per method and code (summed over every server process), reports
  the attachments by status from the database, the open watchers and the group-commit batches.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import cast

import grpc
import pytest
from sqlalchemy import Table, update

from board_server.storage.tables import Attachment
from clients.board import BoardClient, DeadlineExceededError, NotFoundError
from clients.gen.board.v1 import board_pb2, board_pb2_grpc
from tests.board.conftest import (
    Backend,
    Member,
    RunningServer,
    database_engine,
    sign_up,
    start_board_server,
    tiny_png,
)
from tests.support import Processes, wait_for

ATTACHMENTS = cast(Table, Attachment.__table__)
METRICS_LINE = re.compile(r"metrics on (http://\S+/metrics)")
PENDING, TAGGED, FAILED = (
    board_pb2.ATTACHMENT_STATUS_PENDING,
    board_pb2.ATTACHMENT_STATUS_TAGGED,
    board_pb2.ATTACHMENT_STATUS_FAILED,
)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory, module_processes: Processes) -> RunningServer:
    """Two server processes (one /metrics for both), fast watch polling, on SQLite."""
    workdir = tmp_path_factory.mktemp("watch")
    return start_board_server(
        module_processes,
        f"sqlite:///{workdir / 'watch.db'}",
        workdir,
        server_processes=2,
        # 64 watchers of one user, from one address, with calls beside them: above the per-client default.
        extra=("--watch-poll", "0.2", "--max-calls-per-peer", "256"),
    )


@pytest.fixture
def author(board: RunningServer) -> Iterator[Member]:
    member = sign_up(board.target, "Watcher")
    yield member
    member.client.close()


def set_status(board: RunningServer, attachment_id: int, status: str) -> None:
    """Change an attachment's state as another replica's tagging worker would (no TorchServe here)."""
    with database_engine(board.database_url) as engine, engine.begin() as conn:
        conn.execute(
            update(ATTACHMENTS)
            .where(ATTACHMENTS.c.id == attachment_id)
            .values(status=status, update_time=datetime.now(UTC), failure_reason="set by the test")
        )


def upload(member: Member) -> int:
    post = member.client.create_post(0, "watched", "a photo to watch")
    return member.client.add_attachment(post.id, "w.png", tiny_png()).id


@pytest.mark.parametrize("final", ["TAGGED", "FAILED"])
def test_watch_sends_now_then_each_change_and_ends_when_settled(
    board: RunningServer, author: Member, final: str
) -> None:
    attachment_id = upload(author)
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        for item in author.client.watch_attachment(attachment_id, timeout=60):
            seen.append(item.status)
        done.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_for("the current state first", lambda: seen == [PENDING], timeout=20)
    set_status(board, attachment_id, final)
    assert done.wait(timeout=30), "the stream did not end after the attachment settled"
    watcher.join(timeout=5)
    assert seen == [PENDING, TAGGED if final == "TAGGED" else FAILED]


def test_watch_of_a_deleted_attachment_ends_not_found(board: RunningServer, author: Member) -> None:
    attachment_id = upload(author)
    stream = author.client.watch_attachment(attachment_id, timeout=60)
    assert next(stream).status == PENDING
    author.client.delete_attachment(attachment_id)
    with pytest.raises(NotFoundError):
        next(stream)


def test_watch_ends_at_the_callers_deadline(board: RunningServer, author: Member) -> None:
    attachment_id = upload(author)
    with pytest.raises(DeadlineExceededError):
        for item in author.client.watch_attachment(attachment_id, timeout=1.5):
            assert item.status == PENDING


def scrape(board: RunningServer) -> dict[str, float]:
    """Every sample of the board's /metrics: 'name{labels}' -> value."""
    match = METRICS_LINE.search(board.log())
    assert match, board.log()[-2000:]
    with urllib.request.urlopen(match.group(1), timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def handled(samples: dict[str, float], method: str, code: str) -> float:
    key = (
        f'grpc_server_handled_total{{grpc_code="{code}",grpc_method="{method}",'
        f'grpc_service="board.v1.BoardService",grpc_type="unary",protocol="grpc"}}'
    )
    return samples.get(key, 0.0)


def test_64_watchers_do_not_starve_other_calls_and_show_in_the_metrics(
    board: RunningServer, author: Member
) -> None:
    attachment_id = upload(author)
    post_id = author.client.get_attachment(attachment_id).post_id
    channel = grpc.insecure_channel(board.target)
    stub = board_pb2_grpc.BoardServiceStub(channel)  # type: ignore[no-untyped-call]
    request = board_pb2.WatchAttachmentRequest(id=attachment_id)
    streams = [stub.WatchAttachment(request, timeout=120, metadata=author.client.metadata) for _ in range(64)]
    try:
        for stream in streams:
            assert next(stream).status == PENDING  # every one of them is open and was answered
        wait_for("64 open watchers in the metrics", lambda: scrape(board).get("board_watchers") == 64, 20)
        with BoardClient(board.target, timeout=5) as other:
            for _ in range(50):  # a deadline that turns a starved server into a failure
                assert other.get_post(post_id).id == post_id
    finally:
        for stream in streams:
            stream.cancel()
        channel.close()
    wait_for("the watchers gone from the metrics", lambda: scrape(board).get("board_watchers") == 0, 20)


def test_metrics_count_calls_by_method_and_code_over_every_process(
    board: RunningServer, author: Member
) -> None:
    before = scrape(board)
    post_id = author.client.create_post(0, "counted", "a post the metrics count").id
    with BoardClient(board.target, timeout=10) as anonymous:
        # Separate connections, so both server processes answer some of them.
        for _ in range(20):
            anonymous.get_post(post_id)
        for _ in range(7):
            with pytest.raises(NotFoundError):
                anonymous.get_post(10**12)
    uploaded = upload(author)
    set_status(board, uploaded, "FAILED")

    def moved() -> bool:
        after = scrape(board)
        # Each process writes its calls to the metrics in batches (within ~2 s): wait for every count.
        return (
            handled(after, "GetPost", "OK") - handled(before, "GetPost", "OK") == 20
            and handled(after, "GetPost", "NOT_FOUND") - handled(before, "GetPost", "NOT_FOUND") == 7
            and handled(after, "CreatePost", "OK") - handled(before, "CreatePost", "OK") == 2
        )

    wait_for("GetPost counted 20 OK and 7 NOT_FOUND, CreatePost 2 OK", moved, timeout=20)
    after = scrape(board)
    started = (
        'grpc_server_started_total{grpc_method="GetPost",grpc_service="board.v1.BoardService",'
        'grpc_type="unary",protocol="grpc"}'
    )
    assert after[started] - before.get(started, 0.0) == 27
    seconds = (
        'grpc_server_handling_seconds_count{grpc_method="GetPost",grpc_service="board.v1.BoardService",'
        'grpc_type="unary",protocol="grpc"}'
    )
    assert after[seconds] - before.get(seconds, 0.0) == 27
    # Counted in the database at the scrape: every replica reports the same truth.
    assert after['board_attachments{status="FAILED"}'] >= 1
    assert after['board_attachments{status="PENDING"}'] >= 1
    assert after["board_tagging_queue"] == after['board_attachments{status="PENDING"}']
    # Writes went through SQLite's group commit: at least the two posts and the upload were committed.
    assert (
        after["board_group_commit_batch_size_count"] - before.get("board_group_commit_batch_size_count", 0)
        >= 3
    )
    assert after["board_db_connections_in_use"] >= 1


def test_metrics_can_be_turned_off(backend: Backend, processes: Processes) -> None:
    server = start_board_server(
        processes, backend.new_database_url(), backend.workdir, extra=("--metrics-address", "none")
    )
    assert METRICS_LINE.search(server.log()) is None
    member = sign_up(server.target)
    member.client.create_post(0, "no metrics", "still served")
    member.client.close()
