"""A user's quotas through real servers, on SQLite and PostgreSQL: the bytes the attachments of the user's
posts hold (``--user-storage-quota``) and the writes a user makes in a minute
(``--writes-per-user-per-minute``). Both answer RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure naming the
user (and RetryInfo for the writes), are counted in the database (two replicas on one database share them),
and hold for uploads sent all at once.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from collections.abc import Callable
from functools import partial

import grpc
import pytest
from PIL import Image

from clients.board import BoardClient, ResourceExhaustedError
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
