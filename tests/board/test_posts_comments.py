"""Posts and comments through the generated client: rules, masks, timestamps, cascades.

``client`` is signed in as ``author``: what it creates is the author's (``user_id`` 0 means the caller).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Table, update

from board_server.storage.tables import Post
from clients.board import (
    BoardClient,
    BoardClientError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import Member, MemberFactory, RunningServer, database_engine

POSTS = cast(Table, Post.__table__)


def fields(error: BoardClientError) -> set[str]:
    return {v.field for v in error.violations}


@pytest.fixture
def author(member: Member) -> board_pb2.User:
    return member.user


@pytest.mark.parametrize("as_user", ["zero", "own id"])
def test_create_post_sets_author_and_server_timestamps(
    client: BoardClient, author: board_pb2.User, anonymous: BoardClient, as_user: str
) -> None:
    post = client.create_post(0 if as_user == "zero" else author.id, "Hello", "World")
    assert (post.user_id, post.title, post.content) == (author.id, "Hello", "World")
    assert post.create_time == post.update_time and post.create_time.seconds > 0
    assert client.get_post(post.id) == post
    assert anonymous.get_post(post.id) == post  # reads need no token


@pytest.mark.parametrize(
    ("title", "content", "bad"),
    [
        ("", "c", {"title"}),
        ("t", "", {"content"}),
        ("x" * 201, "c", {"title"}),
        ("t", "x" * 10_001, {"content"}),
    ],
)
def test_invalid_post_is_invalid_argument(
    client: BoardClient, author: board_pb2.User, title: str, content: str, bad: set[str]
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_post(author.id, title, content)
    assert fields(caught.value) == bad


def test_post_as_another_or_missing_user_is_permission_denied(
    client: BoardClient, author: board_pb2.User, admin: Member
) -> None:
    for caller in (client, admin.client):  # not even an admin writes in someone else's name
        with pytest.raises(PermissionDeniedError):
            caller.create_post(10**12, "t", "c")
    with pytest.raises(PermissionDeniedError):
        admin.client.create_post(author.id, "t", "c")
    assert [p.id for p in client.iter_posts(user_id=author.id)] == []


def test_missing_post_is_not_found(client: BoardClient) -> None:
    for call in (client.get_post, client.delete_post):
        with pytest.raises(NotFoundError):
            call(10**12)
    with pytest.raises(NotFoundError):
        client.update_post(10**12, title="x")


def assert_strictly_increasing(times: list[Timestamp]) -> None:
    nanoseconds = [t.ToNanoseconds() for t in times]
    assert all(a < b for a, b in itertools.pairwise(nanoseconds)), nanoseconds


def test_update_post_advances_update_time_only(client: BoardClient, author: board_pb2.User) -> None:
    # No pause between the writes: update_time must advance even within one tick of the clock.
    post = client.create_post(author.id, "Title", "Body")
    updated = client.update_post(post.id, title="New title", content="ignored", paths=["title"])
    assert (updated.title, updated.content) == ("New title", "Body")
    assert updated.create_time == post.create_time
    again = client.update_post(post.id, content="New body")
    times = [post.update_time, updated.update_time, again.update_time]
    times += [client.update_post(post.id, title=f"quick {i}").update_time for i in range(5)]
    assert_strictly_increasing(times)
    assert client.get_post(post.id).update_time == times[-1]


def test_update_time_advances_past_a_clock_that_stepped_back(
    board_server: RunningServer, client: BoardClient, author: board_pb2.User
) -> None:
    post = client.create_post(author.id, "Title", "Body")
    # The last write's time is an hour ahead of the clock now, as after an NTP step back (or another
    # replica's fast clock): the next update must still move update_time forward, not back to "now".
    ahead = datetime.now(UTC) + timedelta(hours=1)
    with database_engine(board_server.database_url) as engine, engine.begin() as conn:
        conn.execute(update(POSTS).where(POSTS.c.id == post.id).values(update_time=ahead))
    updated = client.update_post(post.id, title="after the step")
    assert updated.update_time.ToDatetime(tzinfo=UTC) > ahead


@pytest.mark.parametrize("path", ["id", "user_id", "create_time", "update_time"])
def test_immutable_post_path_is_rejected(client: BoardClient, author: board_pb2.User, path: str) -> None:
    post = client.create_post(author.id, "Title", "Body")
    with pytest.raises(InvalidArgumentError) as caught:
        client.update_post(post.id, paths=[path, "title"], title="x")
    assert fields(caught.value) == {"update_mask"}
    assert client.get_post(post.id) == post


def test_empty_post_mask_is_rejected(client: BoardClient, author: board_pb2.User) -> None:
    post = client.create_post(author.id, "Title", "Body")
    with pytest.raises(InvalidArgumentError) as caught:
        client.update_post(post.id, paths=[])
    assert fields(caught.value) == {"update_mask"}


def test_comment_lifecycle(client: BoardClient, author: board_pb2.User) -> None:
    post = client.create_post(author.id, "Title", "Body")
    comment = client.create_comment(post.id, author.id, "First!")
    assert (comment.post_id, comment.user_id, comment.content) == (post.id, author.id, "First!")
    assert client.get_comment(comment.id) == comment
    edited = client.update_comment(comment.id, content="Second?")  # at once: update_time advances anyway
    assert edited.content == "Second?" and edited.create_time == comment.create_time
    assert_strictly_increasing([comment.update_time, edited.update_time])
    assert [c.id for c in client.iter_comments(post.id)] == [comment.id]
    client.delete_comment(comment.id)
    with pytest.raises(NotFoundError):
        client.get_comment(comment.id)


@pytest.mark.parametrize("path", ["id", "post_id", "user_id", "create_time", "update_time"])
def test_immutable_comment_path_is_rejected(client: BoardClient, author: board_pb2.User, path: str) -> None:
    post = client.create_post(author.id, "Title", "Body")
    comment = client.create_comment(post.id, author.id, "text")
    with pytest.raises(InvalidArgumentError) as caught:
        client.update_comment(comment.id, paths=[path])
    assert fields(caught.value) == {"update_mask"}


def test_comment_for_missing_post_is_not_found_and_for_another_user_denied(
    client: BoardClient, author: board_pb2.User
) -> None:
    post = client.create_post(author.id, "Title", "Body")
    with pytest.raises(NotFoundError, match="Post not found"):
        client.create_comment(10**12, 0, "text")
    with pytest.raises(PermissionDeniedError):
        client.create_comment(post.id, 10**12, "text")
    with pytest.raises(NotFoundError):
        client.list_comments(10**12)
    assert list(client.iter_comments(post.id)) == []


@pytest.mark.parametrize(("content", "bad"), [("", {"content"}), ("x" * 2001, {"content"})])
def test_invalid_comment_is_invalid_argument(
    client: BoardClient, author: board_pb2.User, content: str, bad: set[str]
) -> None:
    post = client.create_post(author.id, "Title", "Body")
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_comment(post.id, author.id, content)
    assert fields(caught.value) == bad


def test_delete_post_removes_its_comments(
    client: BoardClient, author: board_pb2.User, members: MemberFactory
) -> None:
    doomed = client.create_post(author.id, "doomed", "text")
    kept_post = client.create_post(author.id, "kept", "text")
    gone = [client.create_comment(doomed.id, author.id, f"c{i}") for i in range(3)]
    gone.append(members("Visitor").client.create_comment(doomed.id, 0, "someone else's, on the doomed post"))
    kept = client.create_comment(kept_post.id, author.id, "kept")
    client.delete_post(doomed.id)
    for comment in gone:
        with pytest.raises(NotFoundError):
            client.get_comment(comment.id)
    assert client.get_comment(kept.id) == kept
    assert client.get_user(author.id) == author
