"""Keyset pagination: sizes, opaque tokens, every row exactly once while rows come and go."""

from __future__ import annotations

import base64

import pytest

from clients.board import BoardClient, InvalidArgumentError
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import PASSWORD, Member, new_email


@pytest.fixture
def author(member: Member) -> board_pb2.User:
    """The signed-in user behind ``client``: the posts and comments below are theirs."""
    return member.user


def test_page_size_defaults_to_50_and_caps_at_1000(client: BoardClient, author: board_pb2.User) -> None:
    for i in range(51):
        client.create_post(0, f"t{i}", "c")
    first = client.list_posts(user_id=author.id)
    assert len(first.posts) == 50 and first.next_page_token
    rest = client.list_posts(user_id=author.id, page_token=first.next_page_token)
    assert len(rest.posts) == 1 and rest.next_page_token == ""
    everything = client.list_posts(user_id=author.id, page_size=5000)
    assert len(everything.posts) == 51 and everything.next_page_token == ""
    ids = [p.id for p in everything.posts]
    assert ids == sorted(ids)


def test_negative_page_size_is_invalid_argument(client: BoardClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.list_users(page_size=-1)
    assert {v.field for v in caught.value.violations} == {"page_size"}


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!",
        base64.urlsafe_b64encode(b'{"v":1,"r":"posts","q":0,"a":5}').decode(),
        base64.urlsafe_b64encode(b"\x00" * 8 + b'{"v":1,"r":"posts","q":0,"a":5}').decode(),
    ],
)
def test_foreign_page_token_is_invalid_argument(client: BoardClient, token: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.list_posts(page_token=token)
    assert {v.field for v in caught.value.violations} == {"page_token"}


def test_token_is_bound_to_its_list_and_filter(client: BoardClient, author: board_pb2.User) -> None:
    for i in range(3):
        client.create_post(0, f"t{i}", "c")
    token = client.list_posts(user_id=author.id, page_size=1).next_page_token
    with pytest.raises(InvalidArgumentError):
        client.list_posts(user_id=0, page_token=token)
    with pytest.raises(InvalidArgumentError):
        client.list_users(page_token=token)


def test_paging_visits_every_row_once_while_rows_change(client: BoardClient, author: board_pb2.User) -> None:
    original = [client.create_post(0, f"t{i}", "c").id for i in range(25)]
    seen: list[int] = []
    deleted: set[int] = set()
    inserted: list[int] = []
    token = ""
    page_number = 0
    while True:
        page = client.list_posts(user_id=author.id, page_size=4, page_token=token)
        seen.extend(p.id for p in page.posts)
        page_number += 1
        # Between pages: delete a row not seen yet, and a row already seen; insert a new one.
        unseen = [i for i in original if i not in seen and i not in deleted]
        if unseen:
            client.delete_post(unseen[-1])
            deleted.add(unseen[-1])
        if seen and seen[0] not in deleted:
            client.delete_post(seen[0])
            deleted.add(seen[0])
        if page_number <= 3:
            inserted.append(client.create_post(0, f"new{page_number}", "c").id)
        if not (token := page.next_page_token):
            break
    assert len(seen) == len(set(seen)), "a row was returned twice"
    assert seen == sorted(seen)
    # Every row that existed throughout (never deleted) was visited, and so was every row inserted.
    survivors = [i for i in original if i not in deleted]
    assert set(survivors) <= set(seen)
    assert set(inserted) <= set(seen)


def test_list_users_pages_cover_new_users(anonymous: BoardClient) -> None:
    mine = {anonymous.create_user("L", new_email("l"), PASSWORD).id for _ in range(7)}
    seen: list[int] = []
    token = ""
    while True:
        page = anonymous.list_users(page_size=3, page_token=token)
        seen.extend(u.id for u in page.users)
        if not (token := page.next_page_token):
            break
    assert len(seen) == len(set(seen))
    assert mine <= set(seen)


def test_list_comments_pages(client: BoardClient, author: board_pb2.User) -> None:
    post = client.create_post(0, "t", "c")
    ids = [client.create_comment(post.id, author.id, f"c{i}").id for i in range(5)]
    assert [c.id for c in client.iter_comments(post.id, page_size=2)] == ids
