"""Etags (AIP-154) against real servers, on SQLite and PostgreSQL: every answer carries the resource's etag,
every change gives a new one, an update or delete with a stale etag is ABORTED and changes nothing, and of 16
concurrent updates sent with one etag exactly one applies. An attachment's etag follows its tagging (claim,
outcome), shown here with a fake model server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from clients.board import AbortedError, BoardClient, NotFoundError
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import Member, MemberFactory, RunningServer, at_once, start_board_server, tiny_png
from tests.board.fake_torchserve import fake_torchserve
from tests.support import Processes


def test_every_answer_carries_the_post_etag_and_an_update_changes_it(member: Member) -> None:
    client = member.client
    post = client.create_post(0, "etag", "first version")
    assert post.etag
    assert client.get_post(post.id).etag == post.etag
    assert [p.etag for p in client.list_posts(user_id=member.id).posts] == [post.etag]
    listed = client.list_posts(filter=f"user_id = {member.id}", order_by="create_time desc").posts
    assert [p.etag for p in listed] == [post.etag]
    updated = client.update_post(post.id, content="second version", etag=post.etag)
    assert updated.etag not in ("", post.etag)
    assert client.get_post(post.id).etag == updated.etag


def test_comment_user_and_attachment_answers_carry_their_etags(
    board_server: RunningServer, member: Member
) -> None:
    client = member.client
    comment = client.create_comment(client.create_post(0, "p", "c").id, 0, "first")
    assert comment.etag and client.get_comment(comment.id).etag == comment.etag
    edited = client.update_comment(comment.id, content="second", etag=comment.etag)
    assert edited.etag not in ("", comment.etag)
    assert [c.etag for c in client.iter_comments(comment.post_id)] == [edited.etag]

    me = client.get_user(member.id)
    assert me.etag == member.user.etag and me.etag
    with board_server.client() as anonymous:
        assert anonymous.get_user(member.id).etag == me.etag  # the same version, whoever looks
    renamed = client.update_user(member.id, name="Renamed", etag=me.etag)
    assert renamed.etag not in ("", me.etag)
    assert client.sign_in(member.email, member.password).user.etag == renamed.etag

    added = client.add_attachment(comment.post_id, "a.png", tiny_png())
    assert added.etag and client.get_attachment(added.id).etag == added.etag
    assert [a.etag for a in client.list_attachments(comment.post_id)] == [added.etag]
    full = client.list_posts(user_id=member.id, with_attachments=True).posts
    assert [a.etag for p in full for a in p.attachments] == [added.etag]


Stale = Callable[[BoardClient, str], object]


def stale_cases(member: Member) -> list[tuple[str, Stale, Callable[[], object]]]:
    """(what, a change sent with ``etag``, the read whose answer must not change) for each Update*/Delete*."""
    client = member.client
    post = client.create_post(0, "target", "of stale etags")
    comment = client.create_comment(post.id, 0, "target")
    attachment = client.add_attachment(post.id, "t.png", tiny_png())
    get_post, get_comment = (lambda: client.get_post(post.id)), (lambda: client.get_comment(comment.id))
    get_attachment, get_me = (lambda: client.get_attachment(attachment.id)), (lambda: client.get_user(0))
    # In an order where each change leaves the next one's target in place (a post takes its comments along).
    return [
        ("UpdateComment", lambda c, e: c.update_comment(comment.id, content="lost", etag=e), get_comment),
        ("DeleteComment", lambda c, e: c.delete_comment(comment.id, etag=e), get_comment),
        ("DeleteAttachment", lambda c, e: c.delete_attachment(attachment.id, etag=e), get_attachment),
        ("UpdatePost", lambda c, e: c.update_post(post.id, title="lost", etag=e), get_post),
        ("DeletePost", lambda c, e: c.delete_post(post.id, etag=e), get_post),
        ("UpdateUser", lambda c, e: c.update_user(member.id, name="Lost", etag=e), get_me),
        ("DeleteUser", lambda c, e: c.delete_user(member.id, etag=e), get_me),
    ]  # fmt: skip


@pytest.mark.parametrize("stale_etag", ["1", "v999", "not an etag", "x" * 5000])
def test_a_stale_etag_is_aborted_and_changes_nothing(member: Member, stale_etag: str) -> None:
    for what, change, read in stale_cases(member):
        before = read()
        with pytest.raises(AbortedError) as aborted:
            change(member.client, stale_etag)
        assert "changed since you read it" in aborted.value.message, what
        assert len(aborted.value.message) < 200, what  # the etag sent is never echoed
        assert read() == before, what


def test_the_current_etag_lets_each_change_through(member: Member) -> None:
    for what, change, read in stale_cases(member):
        current = read()
        change(member.client, getattr(current, "etag", ""))  # raises if refused
        if what in ("DeleteComment", "DeleteAttachment", "DeletePost"):
            with pytest.raises(NotFoundError):
                read()
        elif what != "DeleteUser":
            assert getattr(read(), "etag", "") != getattr(current, "etag", ""), what


def test_sixteen_concurrent_updates_with_one_etag_make_one_change(
    member: Member, board_server: RunningServer
) -> None:
    post = member.client.create_post(0, "raced", "sixteen editors")

    def edit(client: BoardClient, n: int) -> None:
        client.token = member.client.token
        client.update_post(post.id, title=f"editor {n}", etag=post.etag)

    # Each on its own connection: the shared server runs several processes (SQLite) or threads (PostgreSQL).
    outcomes = at_once([board_server.target], 16, edit)
    won = [n for n, error in enumerate(outcomes) if error is None]
    assert len(won) == 1, outcomes
    assert all(isinstance(error, AbortedError) for error in outcomes if error is not None), outcomes
    stored = member.client.get_post(post.id)
    assert stored.title == f"editor {won[0]}"
    assert stored.etag != post.etag


def test_an_attachment_etag_follows_its_tagging(processes: Processes, tmp_path: Path) -> None:
    with fake_torchserve(hold=True) as fake:
        flags = ("--segmentation-target", fake.target, "--tagging-poll", "0.3", "--tagging-workers", "1")
        board = start_board_server(processes, f"sqlite:///{tmp_path / 'board.db'}", tmp_path, extra=flags)
        member = board.sign_up("Tagged")
        with member.client as client:
            uploaded = client.add_attachment(client.create_post(0, "p", "c").id, "t.png", tiny_png())
            fake.wait_for_calls(1, timeout=60)
            claimed = client.get_attachment(uploaded.id)  # still PENDING, one attempt under way
            assert claimed.status == board_pb2.ATTACHMENT_STATUS_PENDING and claimed.attempts == 1
            assert claimed.etag != uploaded.etag
            fake.release()  # the fake refuses the image: FAILED
            failed = client.wait_for_tagging(uploaded.id, timeout=60)
            assert failed.status == board_pb2.ATTACHMENT_STATUS_FAILED
            assert failed.etag not in (uploaded.etag, claimed.etag)
            with pytest.raises(AbortedError):
                client.delete_attachment(uploaded.id, etag=claimed.etag)
            client.delete_attachment(uploaded.id, etag=failed.etag)
            assert not client.list_attachments(uploaded.post_id)


def test_admin_grant_changes_the_user_etag(board_server: RunningServer, members: MemberFactory) -> None:
    member = members("Promoted")
    before = member.client.get_user(0).etag
    granted = board_server.admin("grant", member.email)
    assert granted.returncode == 0, granted.stderr
    after = member.client.get_user(0)
    assert after.admin and after.etag != before
