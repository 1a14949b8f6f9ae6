"""Abuse and limits against real board servers: idle and half-sent streams starve nobody, the concurrency
and per-connection caps answer at once instead of queueing, the server-side deadline fires on a call that is
slow for real (a database lock held by someone else), the attachment quota holds (also under concurrent
uploads on two processes), and reads never write to the audit log. The limits per client address and user,
and the request timeout, are in test_peer_limits.py.

The abusive clients speak HTTP/2 by hand (bench/starvation.py, which measures the same set-up); their
streams are checked to be still open after the other client's calls, so that a server that coped by
dropping them would fail here.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import h2.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from bench.starvation import REFLECTION_METHOD, Abusers, RawGrpcConnection
from clients.board import (
    BoardClient,
    BoardClientError,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import Backend, RunningServer, sign_up, start_board_server
from tests.support import Processes, wait_for

# A deadline that only a starved or queued call reaches: it turns a hang into a failure, it times nothing.
GENEROUS = 20.0


def serve(processes: Processes, database_url: str, workdir: Path, *flags: str) -> RunningServer:
    """A board server with accounts on, one process unless ``flags`` say otherwise, no metrics port."""
    extra = ("--auth", "on", "--processes", "1", "--metrics-address", "none", *flags)
    return start_board_server(processes, database_url, workdir, extra=extra)


def signed_in(target: str) -> tuple[BoardClient, board_pb2.User]:
    """A new user, signed in: the client sends the token with every call."""
    member = sign_up(target, "Abuse", timeout=GENEROUS)
    return member.client, member.user


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def health_status(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=GENEROUS
        )
    return int(response.status)


@pytest.fixture
def sqlite_server(processes: Processes, tmp_path: Path) -> RunningServer:
    return serve(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path)


# Long enough that the request timeout (10 s by default) ends none of the abusers while a test measures.
HOLD = ("--request-timeout", "5m")


# --- starvation --------------------------------------------------------------------------------------------


def test_idle_streams_and_half_sent_uploads_starve_no_other_client(
    processes: Processes, tmp_path: Path
) -> None:
    target = serve(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, *HOLD).target
    client, user = signed_in(target)
    with client:
        post = client.create_post(user.id, "still here", "served while others stall")
        metadata = (("authorization", f"Bearer {client.token}"),)
        abusers = Abusers(target, idle=32, slow=8, post_id=post.id, metadata=metadata, source="127.0.0.2")
        with abusers:
            wait_for("the half-sent uploads to send their part", abusers.uploads_sent, timeout=60)
            assert abusers.open_streams() == 40
            for _ in range(100):
                assert client.get_post(post.id, timeout=GENEROUS) == post
                assert health_status(target) == health_pb2.HealthCheckResponse.SERVING
            created = client.create_post(user.id, "a write too", "while 40 streams hang", timeout=GENEROUS)
            assert client.get_post(created.id, timeout=GENEROUS).title == "a write too"
            # The server coped without dropping the abusers: every stream is still open.
            assert abusers.open_streams() == 40
            assert all(s.sent == abusers.sent_upload_bytes for s in abusers.uploads)


def test_calls_beyond_max_concurrent_rpcs_are_resource_exhausted_not_queued(
    processes: Processes, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'board.db'}"
    server = serve(processes, url, tmp_path, "--max-concurrent-rpcs", "8", *HOLD)
    client, user = signed_in(server.target)
    with client:
        post = client.create_post(user.id, "t", "c")
        with Abusers(server.target, idle=8, slow=0, post_id=post.id) as abusers:

            def refused() -> bool:
                # grpc.aio decides whether the next call is over the limit before that call arrives: an idle
                # stream arriving just as one of our calls ends can be refused while a slot is free. Such a
                # stream is replaced, until 8 hold the 8 slots.
                for _ in range(8 - abusers.open_streams()):
                    abusers.add_idle()
                try:
                    client.get_post(post.id)
                except ResourceExhaustedError:
                    return True
                return False

            wait_for("8 idle streams to take every slot", refused, timeout=GENEROUS)
            # A queued call would wait for a slot and end with DEADLINE_EXCEEDED instead.
            for _ in range(20):
                with pytest.raises(ResourceExhaustedError):
                    client.get_post(post.id, timeout=GENEROUS)
            with pytest.raises(grpc.RpcError) as caught:
                health_status(server.target)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # The 8 that hold the slots stay open (any refused while the slots filled up are closed).
            wait_for("8 open idle streams", lambda: abusers.open_streams() == 8, timeout=GENEROUS)
        # The abusers went away (their connections closed): the slots are free again.
        wait_for("a call to get through", lambda: client.get_post(post.id) == post, timeout=GENEROUS)


def test_streams_beyond_the_per_connection_limit_are_refused(processes: Processes, tmp_path: Path) -> None:
    server = serve(
        processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, "--max-streams-per-connection", "3"
    )
    connection = RawGrpcConnection(server.target, ignore_stream_limit=True)
    try:
        assert connection.wait(lambda: connection.remote_max_concurrent_streams == 3, timeout=GENEROUS)
        held = [connection.open_stream(REFLECTION_METHOD) for _ in range(3)]
        extra = connection.open_stream(REFLECTION_METHOD)  # the server said 3; a hostile client opens a 4th
        assert connection.wait(lambda: not extra.open, timeout=GENEROUS)
        assert extra.reset_code == h2.errors.ErrorCodes.REFUSED_STREAM or extra.grpc_status in (
            str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]),
            str(grpc.StatusCode.UNAVAILABLE.value[0]),
        ), extra
        assert all(stream.open for stream in held)
        assert connection.goaway is None and not connection.closed
        # Other connections have their own streams.
        assert health_status(server.target) == health_pb2.HealthCheckResponse.SERVING
    finally:
        connection.close()


def test_a_client_pinging_too_often_is_sent_away(sqlite_server: RunningServer) -> None:
    connection = RawGrpcConnection(sqlite_server.target)
    try:
        assert connection.wait(lambda: connection.remote_max_concurrent_streams > 0, timeout=GENEROUS)
        for _ in range(5):
            connection.ping(4)  # far more often than --min-client-ping-interval (10 s) allows
            if connection.wait(lambda: connection.goaway is not None, timeout=1):
                break
        assert connection.wait(lambda: connection.goaway is not None, timeout=GENEROUS)
        assert connection.goaway == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        connection.close()
    assert health_status(sqlite_server.target) == health_pb2.HealthCheckResponse.SERVING


def test_an_idle_connection_is_closed_after_max_connection_idle(processes: Processes, tmp_path: Path) -> None:
    server = serve(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, "--max-connection-idle", "1s")
    connection = RawGrpcConnection(server.target)  # connected, no call: idle
    try:
        ended = lambda: connection.goaway is not None or connection.closed  # noqa: E731
        assert connection.wait(ended, timeout=GENEROUS)  # GOAWAY (gRPC 1.85 sends INTERNAL_ERROR) or close
    finally:
        connection.close()


# --- server-side deadline ----------------------------------------------------------------------------------


@contextlib.contextmanager
def database_locked(database_url: str) -> Iterator[None]:
    """Hold the write lock (SQLite) or an exclusive lock on the posts table (PostgreSQL) from outside."""
    if database_url.startswith("sqlite"):
        lite = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            lite.execute("BEGIN IMMEDIATE")
            yield
            lite.execute("ROLLBACK")
        finally:
            lite.close()
        return
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def test_call_slowed_by_a_held_database_lock_gets_the_server_side_deadline(
    backend: Backend, processes: Processes
) -> None:
    url = backend.new_database_url()
    # Sign up where hashing a password has time (argon2 on a busy machine can take a second), then use the
    # session on a second server of the same database that gives every call 1 s.
    registrar = serve(processes, url, backend.workdir)
    # The post too is written there: on a loaded machine, 1 s is not a promise for a call without the lock.
    registered, user = signed_in(registrar.target)
    with registered:
        post = registered.create_post(user.id, "before", "the lock")
    server = serve(processes, url, backend.workdir, "--call-timeout", "1s")
    with BoardClient(server.target, timeout=GENEROUS, token=registered.token) as client:
        with database_locked(url):
            # The write (SQLite) or read (PostgreSQL) waits for the lock; the server gives up after 1 s.
            with pytest.raises(DeadlineExceededError) as caught:
                if url.startswith("sqlite"):
                    client.create_post(user.id, "during", "the lock", timeout=GENEROUS)
                else:
                    client.get_post(post.id, timeout=GENEROUS)
            assert "server gave up after 1 s" in caught.value.message
            assert health_status(server.target) == health_pb2.HealthCheckResponse.SERVING
        wait_for("a write after the lock", lambda: client.create_post(user.id, "after", "it").id, GENEROUS)
        wait_for("the same post after the lock", lambda: client.get_post(post.id) == post, GENEROUS)


# --- quotas ------------------------------------------------------------------------------------------------


def test_attachments_per_post_are_capped_and_listed_a_page_at_a_time(
    backend: Backend, processes: Processes
) -> None:
    server = serve(processes, backend.new_database_url(), backend.workdir, "--max-attachments-per-post", "3")
    client, user = signed_in(server.target)
    with client:
        post = client.create_post(user.id, "photos", "three at most")
        ids = [client.add_attachment(post.id, f"p{i}.jpg", jpeg()).id for i in range(3)]
        with pytest.raises(ResourceExhaustedError) as caught:
            client.add_attachment(post.id, "p3.jpg", jpeg())
        assert "3 attachments" in caught.value.message
        client.delete_attachment(ids.pop(0))
        ids.append(client.add_attachment(post.id, "again.jpg", jpeg()).id)

        first = client.list_attachments_page(post.id, page_size=2)
        assert [a.id for a in first.attachments] == ids[:2] and first.next_page_token
        rest = client.list_attachments_page(post.id, page_size=2, page_token=first.next_page_token)
        assert [a.id for a in rest.attachments] == ids[2:] and rest.next_page_token == ""
        assert [a.id for a in client.list_attachments_page(post.id, page_size=5000).attachments] == ids
        with pytest.raises(InvalidArgumentError) as bad:
            client.list_attachments_page(post.id, page_size=-1)
        assert [v.field for v in bad.value.violations] == ["page_size"]


def test_concurrent_uploads_on_two_processes_never_pass_the_cap(
    backend: Backend, processes: Processes
) -> None:
    server = serve(
        processes, backend.new_database_url(), backend.workdir, "--processes", "2",
        "--max-attachments-per-post", "3",
    )  # fmt: skip
    owner, user = signed_in(server.target)
    with owner:
        post = owner.create_post(user.id, "race", "for three places")
        data = jpeg()
        start = threading.Barrier(12)

        def upload(i: int) -> str:
            # Each uploader its own connection, so that the kernel spreads them over both processes.
            with BoardClient(
                server.target, timeout=GENEROUS, token=owner.token,
                options=[("grpc.use_local_subchannel_pool", 1)],
            ) as client:  # fmt: skip
                start.wait()
                try:
                    client.add_attachment(post.id, f"r{i}.jpg", data)
                except BoardClientError as exc:
                    return exc.code.name
                return "OK"

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(upload, range(12)))
        assert sorted(outcomes) == ["OK"] * 3 + ["RESOURCE_EXHAUSTED"] * 9
        assert len(owner.list_attachments(post.id)) == 3


# --- audit log ---------------------------------------------------------------------------------------------


def test_not_found_reads_write_nothing_to_the_audit_log(sqlite_server: RunningServer) -> None:
    client, user = signed_in(sqlite_server.target)
    with client:
        post = client.create_post(user.id, "audited", "a change")
        audit = sqlite_server.audit_log

        def audited(text: str) -> bool:
            return audit.exists() and text in audit.read_text()

        wait_for("the audit line of the post", lambda: audited(f"Post created; id={post.id}"), GENEROUS)
        before = audit.read_bytes()
        missing = 10**12
        for i in range(50):
            for read in (client.get_post, client.get_user, client.get_comment, client.get_attachment):
                with pytest.raises(BoardClientError) as caught:
                    read(missing + i)
                assert caught.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(BoardClientError):
                client.list_comments(missing + i)
        client.update_post(post.id, title="changed")  # a change: the audit log goes on from here
        wait_for("the audit line of the update", lambda: audited(f"Post updated; id={post.id}"), GENEROUS)
        after = audit.read_bytes()
        assert after.startswith(before)
        added = after[len(before) :].decode().splitlines()
        assert len(added) == 1 and "Post updated" in added[0], added
        assert "not found" not in after.decode().lower()
        # The reads went to the server's ordinary log instead.
        wait_for(
            "the not-found lines", lambda: f"Post not found; id={missing + 49}" in sqlite_server.log(), 10
        )
