"""ListPosts' answers from posts kept serialized (api/messages.py ``PostPages``): the same bytes as the answer
built field by field, a changed post never answered from what was kept of it, and the kept bytes bounded."""

from __future__ import annotations

import collections
from datetime import UTC, datetime, timedelta

from board_server.api.messages import PostPages, post_to_proto
from clients.gen.board.v1 import board_pb2

Row = collections.namedtuple("Row", "id user_id title content create_time update_time")
_T0 = datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=UTC)


def rows(count: int, *, title: str = "title", content: str = "content") -> list[Row]:
    return [
        Row(
            n,
            7,
            f"{title} {n}",
            f"{content} {n}",
            _T0 + timedelta(seconds=n),
            _T0 + timedelta(seconds=n, microseconds=n),
        )
        for n in range(1, count + 1)
    ]


def built(posts: list[Row], token: str) -> board_pb2.ListPostsResponse:
    response = board_pb2.ListPostsResponse(next_page_token=token)
    for post in posts:
        post_to_proto(post, response.posts.add)
    return response


def test_an_answer_is_the_one_built_field_by_field_kept_or_not() -> None:
    pages, page = PostPages(), rows(50)
    first, again = pages.response(page, "next"), pages.response(page, "next")
    assert first == again == built(page, "next")
    assert again.SerializeToString(deterministic=True) == built(page, "next").SerializeToString(
        deterministic=True
    )
    assert pages.response([], "") == board_pb2.ListPostsResponse()
    assert pages.response(page[::-1], "") == built(page[::-1], "")  # the rows' order, not the kept one


def test_a_changed_post_is_never_answered_from_what_was_kept() -> None:
    pages, page = PostPages(), rows(3)
    pages.response(page, "")
    edited = page[1]._replace(title="edited", update_time=page[1].update_time + timedelta(microseconds=1))
    same_time = page[2]._replace(content="changed behind the clock's back")  # any field makes another key
    answer = pages.response([page[0], edited, same_time], "")
    assert [p.title for p in answer.posts] == ["title 1", "edited", "title 3"]
    assert answer.posts[2].content == "changed behind the clock's back"
    assert answer.posts[1].etag != built([page[1]], "").posts[0].etag


def test_versions_of_one_post_asked_in_turn_are_each_answered_as_they_are() -> None:
    pages, page = PostPages(max_bytes=64 * 1024), rows(2)
    newer = page[0]._replace(title="newer", update_time=page[0].update_time + timedelta(microseconds=1))
    for _ in range(3):  # a reader behind a replica that has not seen the edit yet, and one that has
        assert pages.response([page[0], page[1]], "") == built([page[0], page[1]], "")
        assert pages.response([newer, page[1]], "") == built([newer, page[1]], "")
    assert len(pages._kept) == 2  # one version kept per post
    assert pages._bytes == 2 * sum(len(part) for _, part in pages._kept.values())


def test_the_kept_bytes_stay_within_their_bound() -> None:
    pages = PostPages(max_bytes=64 * 1024)
    for round_ in range(20):
        page = rows(50, title=f"round {round_}", content="x" * 500)
        assert pages.response(page, "") == built(page, "")
    assert 0 < pages._bytes <= 64 * 1024
    assert len(pages._kept) < 50 * 20
