"""Creates with a request_id (AIP-155) against real servers, on SQLite and PostgreSQL: a repeat returns what
the first call made and writes nothing; another request with the same id, or a malformed id, is
INVALID_ARGUMENT; ids belong to their caller; concurrent duplicates (over two servers on one database) make
one resource; past the TTL an id starts a new request, and housekeeping forgets it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from clients.board import BoardClient, BoardClientError, InvalidArgumentError
from tests.board.conftest import (
    GRPCURL,
    PASSWORD,
    Backend,
    Member,
    MemberFactory,
    RunningServer,
    at_once,
    database_engine,
    new_email,
    start_board_server,
    tiny_png,
)
from tests.docs.markdown import fenced_blocks
from tests.support import REPO_ROOT, Processes, wait_for


def rid() -> str:
    return str(uuid.uuid4())


def titles(client: BoardClient, user_id: int) -> list[str]:
    return [p.title for p in client.iter_posts(user_id, page_size=1000)]


def remembered(database_url: str) -> int:
    """Rows in request_ids (read behind the API's back)."""
    with database_engine(database_url) as engine, engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM request_ids")).scalar_one())


def test_a_repeated_create_post_returns_the_first_post_and_writes_nothing(
    board_server: RunningServer, member: Member
) -> None:
    request_id = rid()
    first = member.client.create_post(0, "once", "only once", request_id=request_id)
    again = member.client.create_post(0, "once", "only once", request_id=request_id)
    assert again == first
    assert titles(member.client, member.id) == ["once"]
    created = f"Post created; id={first.id}; "
    wait_for("the audit line", lambda: created in board_server.audit_log.read_text(), timeout=20)
    assert board_server.audit_log.read_text().count(created) == 1  # the repeat changed nothing: no line


def test_a_repeat_returns_the_post_as_it_is_now(member: Member) -> None:
    request_id = rid()
    first = member.client.create_post(0, "before", "the edit", request_id=request_id)
    edited = member.client.update_post(first.id, title="after")
    again = member.client.create_post(0, "before", "the edit", request_id=request_id)
    assert (again.id, again.title, again.etag) == (first.id, "after", edited.etag)


def test_repeats_of_every_create_return_what_the_first_made(
    board_server: RunningServer, member: Member
) -> None:
    client = member.client
    post = client.create_post(0, "parent", "of the rest")
    comment_id = rid()
    comment = client.create_comment(post.id, 0, "nice", request_id=comment_id)
    assert client.create_comment(post.id, 0, "nice", request_id=comment_id) == comment
    assert [c.id for c in client.iter_comments(post.id)] == [comment.id]

    attachment_id = rid()
    added = client.add_attachment(post.id, "a.png", tiny_png(), request_id=attachment_id)
    again = client.add_attachment(post.id, "a.png", tiny_png(), request_id=attachment_id)
    assert again.id == added.id
    assert [a.id for a in client.list_attachments(post.id)] == [added.id]

    # Sign-up is anonymous: the request_id alone names it, the digest holds the name and the email.
    sign_up_id, email = rid(), new_email("retry")
    with board_server.client() as anonymous:
        user = anonymous.create_user("Retry", email, PASSWORD, request_id=sign_up_id)
        assert anonymous.create_user("Retry", email, PASSWORD, request_id=sign_up_id) == user
        with pytest.raises(InvalidArgumentError) as other_password:
            anonymous.create_user("Retry", email, "another password", request_id=sign_up_id)
    assert [v.field for v in other_password.value.violations] == ["request_id"]


def test_the_same_request_id_for_another_request_is_invalid_argument_and_writes_nothing(
    member: Member,
) -> None:
    client, request_id = member.client, rid()
    post = client.create_post(0, "first", "request", request_id=request_id)
    refused: list[Callable[[], object]] = [
        lambda: client.create_post(0, "second", "request", request_id=request_id),
        lambda: client.create_post(0, "first", "request!", request_id=request_id),
        lambda: client.create_comment(post.id, 0, "first", request_id=request_id),  # another kind
    ]
    for call in refused:
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        assert [v.field for v in caught.value.violations] == ["request_id"], caught.value
        assert "different request" in caught.value.message
    assert titles(client, member.id) == ["first"]
    assert not list(client.iter_comments(post.id))


@pytest.mark.parametrize(
    "request_id",
    # Fixed values: the parameters name the tests, which every xdist worker must collect alike.
    [
        "not-a-uuid",
        "16136442-f164-11f1-b70d-02fc00000001",  # a UUID, but version 1
        "1a04ab8dc72543c39a9cfb597bb67d5d",  # a UUID4 without hyphens
        "{1183afac-cbcd-459d-bc9a-27def61e4b89}",
        "b05fdab6-8c4c-44ff-94c1-3d883bc9ee69 ",
        "x" * 10_000,
    ],
    ids=["not-a-uuid", "version-1", "no-hyphens", "braces", "trailing-space", "10000-chars"],
)
def test_a_malformed_request_id_is_invalid_argument(member: Member, request_id: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        member.client.create_post(0, "t", "c", request_id=request_id)
    assert [v.field for v in caught.value.violations] == ["request_id"]
    assert len(caught.value.message) < 300
    assert not titles(member.client, member.id)


def test_a_request_id_in_capitals_is_the_same_request_id(member: Member) -> None:
    request_id = rid()
    first = member.client.create_post(0, "t", "c", request_id=request_id)
    assert member.client.create_post(0, "t", "c", request_id=request_id.upper()).id == first.id


def test_request_ids_belong_to_their_caller(members: MemberFactory) -> None:
    ada, bob, request_id = members("Ada"), members("Bob"), rid()
    mine = ada.client.create_post(0, "same", "request", request_id=request_id)
    theirs = bob.client.create_post(0, "same", "request", request_id=request_id)
    assert mine.id != theirs.id
    assert (mine.user_id, theirs.user_id) == (ada.id, bob.id)


def test_a_failed_create_leaves_nothing_behind_and_its_retry_runs(member: Member) -> None:
    request_id = rid()
    with pytest.raises(BoardClientError) as missing:
        member.client.create_comment(2**62, 0, "on nothing", request_id=request_id)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    post = member.client.create_post(0, "now", "it exists")
    # The same id for another request is fine: the failed one was never remembered.
    comment = member.client.create_comment(post.id, 0, "on something", request_id=request_id)
    assert comment.post_id == post.id


def test_concurrent_duplicates_over_two_servers_make_one_post(
    board_server: RunningServer, backend: Backend, processes: Processes, member: Member
) -> None:
    second = start_board_server(processes, board_server.database_url, backend.workdir)
    request_id = rid()
    answers: list[int] = []

    def create(client: BoardClient, _: int) -> None:
        client.token = member.client.token
        answers.append(client.create_post(0, "raced", "sixteen times", request_id=request_id).id)

    errors = at_once([board_server.target, second.target], 16, create)
    assert errors == [None] * 16
    assert len(set(answers)) == 1 and len(answers) == 16
    assert titles(member.client, member.id) == ["raced"]


def test_past_the_ttl_a_request_id_starts_anew_and_housekeeping_forgets_it(
    backend: Backend, processes: Processes
) -> None:
    url = backend.new_database_url()
    ttl = ("--request-id-ttl", "1s")
    first = start_board_server(processes, url, backend.workdir, extra=ttl)
    member = first.sign_up("Expiring")
    with member.client as client:
        request_id = rid()
        old = client.create_post(0, "t", "c", request_id=request_id)
        assert remembered(url) == 2  # the sign-up's and the post's
        time.sleep(1.5)
        new = client.create_post(0, "t", "c", request_id=request_id)
        assert new.id != old.id  # the first one's time was up
        assert client.create_post(0, "t", "c", request_id=request_id).id == new.id
        time.sleep(1.5)
    # Housekeeping runs when a server starts (and every 10 minutes after).
    start_board_server(processes, url, backend.workdir, extra=ttl)
    wait_for("housekeeping to forget the old request_ids", lambda: remembered(url) == 0, timeout=30)


def docs_block(marker: str) -> str:
    """The ```sh block of docs/board-api.md that holds ``marker``."""
    text = (REPO_ROOT / "docs" / "board-api.md").read_text()
    (block,) = [b for b in fenced_blocks(text, "sh") if marker in b]
    return block


def test_the_grpcurl_safe_retry_in_the_docs_makes_one_post(
    board_server: RunningServer, member: Member
) -> None:
    script = docs_block("RID=$(").replace("127.0.0.1:50051", board_server.target)
    first_line, loop = script.split("\n", 1)
    assert first_line.startswith("RID=$(")
    env = {**os.environ, "TOKEN": member.client.token or "", "PATH": f"{GRPCURL.parent}:{os.environ['PATH']}"}

    def run(text: str, **extra: str) -> dict[str, str]:
        done = subprocess.run(
            ["bash", "-c", text],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0 and not done.stderr, done.stderr
        answer: dict[str, str] = json.loads(done.stdout)
        return answer

    assert run(script)["title"] == "Hello"  # the block as written
    request_id = rid()
    first, again = run(loop, RID=request_id), run(loop, RID=request_id)  # one id, sent twice
    assert again["id"] == first["id"]
    assert titles(member.client, member.id) == ["Hello", "Hello"]


def test_a_repeat_is_answered_even_where_the_create_could_not_be_made_again(
    processes: Processes, tmp_path: Path
) -> None:
    # A post that holds one attachment at most: the repeat of the upload that filled it must get that upload.
    url = f"sqlite:///{tmp_path / 'board.db'}"
    server = start_board_server(processes, url, tmp_path, extra=("--max-attachments-per-post", "1"))
    member = server.sign_up("Full")
    with member.client as client:
        post = client.create_post(0, "one photo", "at most")
        request_id = rid()
        added = client.add_attachment(post.id, "a.png", tiny_png(), request_id=request_id)
        assert client.add_attachment(post.id, "a.png", tiny_png(), request_id=request_id).id == added.id
        with pytest.raises(BoardClientError) as full:
            client.add_attachment(post.id, "b.png", tiny_png())
        assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
