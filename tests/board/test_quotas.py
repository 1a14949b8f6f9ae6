"""A user's quotas through real servers, on SQLite and PostgreSQL: the bytes the attachments of the user's
posts hold (``--user-storage-quota``) and the writes a user makes in a minute
(``--writes-per-user-per-minute``). Both answer RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure naming the
user (and RetryInfo for the writes), are counted in the database (two replicas on one database share them),
and hold for uploads sent all at once.
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import grpc
import pytest
from PIL import Image

from board_server.domain.accounts import Accounts, Caller
from board_server.domain.idempotency import RequestIds
from board_server.domain.paging import load_page_tokens
from board_server.domain.posts import PostService
from board_server.domain.quotas import Quotas
from board_server.domain.served_models import ServedModels
from board_server.storage import users as user_rows
from board_server.storage.engine import migrate, open_database
from clients.board import BoardClient, NotFoundError, ResourceExhaustedError
from tests.board.conftest import Backend, at_once, sign_up, start_board_server
from tests.support import Processes


def noisy_jpeg() -> bytes:
    """A JPEG of a few kilobytes (noise does not compress), different each time."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (48, 48), os.urandom(48 * 48 * 3)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def over_quota(call: Callable[[], object], user_id: int) -> ResourceExhaustedError:
    """The call's RESOURCE_EXHAUSTED, checked to name the user's quota in a QuotaFailure."""
    with pytest.raises(ResourceExhaustedError) as caught:
        call()
    error = caught.value
    assert [v.subject for v in error.quota_violations] == [f"user:{user_id}"], error.quota_violations
    return error


def test_the_attachments_of_a_users_posts_stay_within_the_storage_quota(
    backend: Backend, processes: Processes
) -> None:
    image = noisy_jpeg()
    quota = 2 * len(image) + len(image) // 2  # room for two
    server = start_board_server(
        processes, backend.new_database_url(), backend.workdir, extra=("--user-storage-quota", str(quota))
    )
    owner, other, admin = (
        sign_up(server.target, "Owner"),
        sign_up(server.target, "Other"),
        server.make_admin(),
    )
    with owner.client as mine, other.client as theirs, admin.client as admins:
        first_post, second_post = (mine.create_post(0, f"post {n}", "photos") for n in range(2))
        kept = mine.add_attachment(first_post.id, "one.jpg", image)
        mine.add_attachment(second_post.id, "two.jpg", image)
        for call in (
            lambda: mine.add_attachment(first_post.id, "three.jpg", image),
            lambda: mine.add_attachment(second_post.id, "three.jpg", image),  # per user, not per post
            lambda: admins.add_attachment(first_post.id, "by the admin.jpg", image),  # counts for the author
        ):
            error = over_quota(call, owner.id)
            assert str(quota) in error.quota_violations[0].description and error.retry_after is None
        assert len(mine.list_attachments(first_post.id)) == 1  # the refused uploads left nothing
        # Another user has a quota of their own; deleting frees room.
        assert theirs.add_attachment(theirs.create_post(0, "mine", "photo").id, "a.jpg", image).id
        mine.delete_attachment(kept.id)
        assert mine.add_attachment(first_post.id, "again.jpg", image).id


def test_uploads_sent_all_at_once_stay_within_the_storage_quota(
    backend: Backend, processes: Processes
) -> None:
    image = noisy_jpeg()
    server = start_board_server(
        processes,
        backend.new_database_url(),
        backend.workdir,
        extra=("--user-storage-quota", str(2 * len(image) + 1), "--processes", "2"),
    )
    owner = sign_up(server.target, "Owner")
    with owner.client as mine:
        posts = [mine.create_post(0, f"post {n}", "at once").id for n in range(8)]

        def upload(client: BoardClient, n: int) -> None:
            client.token = mine.token
            client.add_attachment(posts[n], f"{n}.jpg", image)

        outcomes = at_once([server.target], len(posts), upload)
        codes = Counter(grpc.StatusCode.OK if e is None else e.code for e in outcomes)
        assert codes == {grpc.StatusCode.OK: 2, grpc.StatusCode.RESOURCE_EXHAUSTED: 6}, codes
        assert sum(len(mine.list_attachments(p)) for p in posts) == 2


def at_the_start_of_a_minute() -> None:
    """Wait, if need be, until the current minute has more than 20 s left: the write counter is per minute."""
    into = time.time() % 60
    if into > 40:
        time.sleep(60.5 - into)


@pytest.mark.slow  # may wait up to 20 s for a fresh minute: started early, the wait overlaps other work
def test_writes_per_user_per_minute_are_counted_across_replicas(
    backend: Backend, processes: Processes
) -> None:
    url, limit = backend.new_database_url(), 5
    flags = ("--writes-per-user-per-minute", str(limit))
    replica_a, replica_b = (
        start_board_server(processes, url, backend.workdir, extra=flags) for _ in range(2)
    )
    writer, bystander = sign_up(replica_a.target, "Writer"), sign_up(replica_b.target, "Bystander")
    with (
        writer.client as on_a,
        replica_b.client(token=writer.client.token) as on_b,
        bystander.client as elsewhere,
    ):
        at_the_start_of_a_minute()
        post = on_a.create_post(0, "first", "one write")
        on_b.update_post(post.id, title="second write")
        comment = on_a.create_comment(post.id, 0, "third write")
        on_b.delete_comment(comment.id)
        on_a.create_post(0, "fifth", "the last of the minute")
        for client in (on_a, on_b):
            error = over_quota(partial(client.create_post, 0, "sixth", "too many"), writer.id)
            assert error.retry_after is not None and 0 < error.retry_after <= 60
            assert f"{limit} writes" in error.quota_violations[0].description
        assert on_b.get_post(post.id).title == "second write"  # reads are not counted
        assert elsewhere.create_post(0, "mine", "another user's own quota").id


@pytest.mark.slow  # may wait up to 20 s for a fresh minute: started early, the wait overlaps other work
def test_a_write_refused_for_another_reason_is_not_counted(backend: Backend, processes: Processes) -> None:
    """A write is counted inside its own transaction, on PostgreSQL too: one that fails (not found) rolls its
    count back, so it takes nothing from the user's quota."""
    limit = 3
    server = start_board_server(
        processes,
        backend.new_database_url(),
        backend.workdir,
        extra=("--writes-per-user-per-minute", str(limit)),
    )
    writer = sign_up(server.target, "Writer")
    with writer.client as client:
        at_the_start_of_a_minute()
        for _ in range(limit + 2):
            with pytest.raises(NotFoundError):
                client.update_post(10**9, title="no such post")
            with pytest.raises(NotFoundError):
                client.delete_comment(10**9)
        posts = [client.create_post(0, f"post {n}", "counted") for n in range(limit)]
        assert len({post.id for post in posts}) == limit
        over_quota(partial(client.create_post, 0, "one more", "refused"), writer.id)


@pytest.mark.slow  # may wait up to 20 s for a fresh minute: started early, the wait overlaps other work
def test_one_users_writes_sent_all_at_once_are_held_to_the_limit(
    backend: Backend, processes: Processes
) -> None:
    """Twelve CreatePosts of one user released together, the limit 4, over two processes: on SQLite exactly
    4 are admitted; on PostgreSQL, where each connection counts on a row of its own (so they never wait for
    one another's counter lock), at least 4 (a write is refused only once 4 committed) and at most the writes
    in flight together; after them the user's next write is refused either way."""
    limit, writes = 4, 12
    server = start_board_server(
        processes,
        backend.new_database_url(),
        backend.workdir,
        extra=("--writes-per-user-per-minute", str(limit), "--processes", "2"),
    )
    writer = sign_up(server.target, "Writer")
    at_the_start_of_a_minute()

    def create(client: BoardClient, n: int) -> None:
        client.token = writer.client.token
        client.create_post(0, f"post {n}", "all at once")

    outcomes = at_once([server.target], writes, create)
    codes = Counter(grpc.StatusCode.OK if e is None else e.code for e in outcomes)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    admitted = codes[grpc.StatusCode.OK]
    if backend.name == "sqlite":
        assert admitted == limit, codes
    else:
        assert limit <= admitted <= writes, codes
    with writer.client as client:
        assert len(client.list_posts(user_id=writer.id, page_size=100).posts) == admitted
        over_quota(partial(client.create_post, 0, "one more", "refused"), writer.id)


def test_the_cost_of_counting_writes_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CreatePost's use case on SQLite, 16 at a time (group commit batches them as under load), with the
    write counter on and off, in interleaved rounds: the process's CPU time per post (the threads' included:
    the statements run on the loop and the writer), which the machine's other load disturbs far less than
    the wall clock. A figure for the record (docs/operations.md), no assert on time."""
    database = open_database(f"sqlite:///{tmp_path / 'cost.db'}")
    accounts = Accounts(database, auth=True, reads_need_sign_in=False, token_lifetime=timedelta(days=1))
    try:
        migrate(database.engine)
        tokens = load_page_tokens(database)
        models = ServedModels(database, "deeplabv3")
        requests = RequestIds(database, timedelta(days=1))
        on, off = (
            PostService(
                database,
                accounts,
                tokens,
                models,
                quotas=Quotas(writes_per_minute=w, storage_bytes=0),
                requests=requests,
            )
            for w in (10**9, 0)
        )
        author = database.write(
            lambda conn: user_rows.add_user(
                conn,
                name="Writer",
                email="w@example.org",
                email_canonical="w@example.org",
                now=datetime.now(UTC),
            )
        )
        caller = Caller(author.id)

        async def cpu_per_post(service: PostService, posts: int = 1600, concurrency: int = 16) -> float:
            async def writer() -> None:
                for _ in range(posts // concurrency):
                    await service.create_post(caller, 0, "title", "content")

            started = time.process_time()
            await asyncio.gather(*(writer() for _ in range(concurrency)))
            return (time.process_time() - started) / posts * 1e6

        async def measure() -> dict[str, list[float]]:
            await cpu_per_post(on, 320)  # warm up
            await cpu_per_post(off, 320)
            runs: dict[str, list[float]] = {"on": [], "off": []}
            for round_ in range(7):
                for name in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                    runs[name].append(await cpu_per_post(on if name == "on" else off))
            return runs

        runs = asyncio.run(measure())
    finally:
        accounts.close()
        database.dispose()
    counted, uncounted = statistics.median(runs["on"]), statistics.median(runs["off"])
    with capsys.disabled():
        print(  # a figure for the record
            f"\n[write counter, SQLite, in-process, 16 at a time] CreatePost {counted:.0f} µs CPU counted, "
            f"{uncounted:.0f} µs not ({counted / uncounted - 1:+.1%}; medians of 7 interleaved rounds)"
        )
    assert counted > 0 and uncounted > 0
