"""Every mutating RPC writes its audit line: the event, the ids it touched and ``by=`` the actor, in the audit
log file of a real server. The table names every RPC of BoardService that is not a read; a new one fails
``test_the_table_covers_every_mutating_rpc`` until it has a row.

The server tags through tests/board/fake_torchserve.py (every image refused, so an upload ends FAILED at
once and can be retried; ``describe`` answered, so an admin can queue re-tags).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from clients.gen.board.v1 import board_pb2
from tests.board.conftest import (
    NOT_BUILT,
    PASSWORD,
    Member,
    RunningServer,
    new_email,
    sign_in,
    start_board_server,
    tiny_png,
)
from tests.board.fake_torchserve import MODEL, FakeTorchServe, fake_torchserve
from tests.support import Processes, wait_for

pytestmark = pytest.mark.integration

FAILED = board_pb2.ATTACHMENT_STATUS_FAILED
# "| 2026-01-02 03:04:05,678 | INFO | Post created; id=7; user_id=3; by=user:3 | service.py | create_post |"
AUDIT_LINE = re.compile(r"^\| [\d-]+ [\d:,]+ \| [A-Z]+ \| (?P<message>.+) \| [\w.]+ \| \w+ \|$")


@dataclass(frozen=True)
class Line:
    """An audit line as a test expects it: the event and some of its fields (``by`` included)."""

    event: str
    fields: dict[str, str]

    def found_in(self, lines: list[tuple[str, dict[str, str]]]) -> bool:
        return any(
            event == self.event and all(fields.get(k) == v for k, v in self.fields.items())
            for event, fields in lines
        )


@dataclass
class Board:
    server: RunningServer
    fake: FakeTorchServe
    admin: Member

    def member(self) -> Member:
        return self.server.sign_up("Audited")


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    """A server of its own (its audit log holds only this module's lines) tagging through a fake."""
    workdir = tmp_path_factory.mktemp("audit-lines")
    processes = Processes(workdir / "logs")
    with fake_torchserve() as fake:
        try:
            extra = ("--segmentation-target", fake.target, "--tagging-poll", "0.3", "--processes", "1")
            server = start_board_server(processes, f"sqlite:///{workdir / 'board.db'}", workdir, extra=extra)
            admin = server.make_admin()
            yield Board(server, fake, admin)
            admin.client.close()
        finally:
            processes.stop_all()


def actor(member: Member) -> str:
    return f"user:{member.id}"


def audit_lines(server: RunningServer) -> list[tuple[str, dict[str, str]]]:
    """(event, fields) of every line of the server's audit log."""
    lines = []
    for text in server.audit_log.read_text().splitlines():
        match = AUDIT_LINE.match(text)
        assert match, f"malformed audit line: {text!r}"
        event, *pairs = match["message"].split("; ")
        lines.append((event, dict(pair.split("=", 1) for pair in pairs)))
    return lines


# --- one change per mutating RPC, and the lines it must write -------------------------------------------


def create_user(board: Board) -> list[Line]:
    with board.server.client() as anonymous:
        user = anonymous.create_user("New", new_email(), PASSWORD)
    return [Line("User created", {"id": str(user.id), "by": "anonymous"})]


def sign_in_rpc(board: Board) -> list[Line]:
    member = board.member()
    member.client.sign_in(member.email, PASSWORD)
    return [Line("Signed in", {"user_id": str(member.id), "by": actor(member)})]


def sign_out(board: Board) -> list[Line]:
    member = board.member()
    member.client.sign_out()
    return [Line("Signed out", {"user_id": str(member.id), "by": actor(member)})]


def update_user(board: Board) -> list[Line]:
    member = board.member()
    other_device = sign_in(board.server.target, member.email)  # a second session: the password change ends it
    other_device.close()
    member.client.update_user(
        member.id, name="Renamed", password="another long password", current_password=member.password
    )
    return [
        Line("User updated", {"id": str(member.id), "fields": "name,password", "by": actor(member)}),
        Line("Sessions revoked", {"user_id": str(member.id), "by": actor(member)}),
    ]


def delete_user(board: Board) -> list[Line]:
    member = board.member()
    board.admin.client.delete_user(member.id)  # by an admin: the admin is the actor
    return [Line("User deleted", {"id": str(member.id), "by": f"admin:{board.admin.id}"})]


def create_post(board: Board) -> list[Line]:
    member = board.member()
    post = member.client.create_post(0, "t", "c")
    return [Line("Post created", {"id": str(post.id), "user_id": str(member.id), "by": actor(member)})]


def update_post(board: Board) -> list[Line]:
    member = board.member()
    post = member.client.create_post(0, "t", "c")
    member.client.update_post(post.id, title="changed")
    return [Line("Post updated", {"id": str(post.id), "fields": "title", "by": actor(member)})]


def delete_post(board: Board) -> list[Line]:
    member = board.member()
    post = member.client.create_post(0, "t", "c")
    member.client.delete_post(post.id)
    return [Line("Post deleted", {"id": str(post.id), "by": actor(member)})]


def create_comment(board: Board) -> list[Line]:
    member = board.member()
    post = member.client.create_post(0, "t", "c")
    comment = member.client.create_comment(post.id, 0, "c")
    fields = {"id": str(comment.id), "post_id": str(post.id), "user_id": str(member.id), "by": actor(member)}
    return [Line("Comment created", fields)]


def update_comment(board: Board) -> list[Line]:
    member = board.member()
    comment = member.client.create_comment(member.client.create_post(0, "t", "c").id, 0, "c")
    member.client.update_comment(comment.id, content="changed")
    return [Line("Comment updated", {"id": str(comment.id), "fields": "content", "by": actor(member)})]


def delete_comment(board: Board) -> list[Line]:
    member = board.member()
    comment = member.client.create_comment(member.client.create_post(0, "t", "c").id, 0, "c")
    member.client.delete_comment(comment.id)
    return [Line("Comment deleted", {"id": str(comment.id), "by": actor(member)})]


def add_attachment(board: Board) -> list[Line]:
    member = board.member()
    post = member.client.create_post(0, "t", "c")
    image = tiny_png()
    added = member.client.add_attachment(post.id, "a.png", image)
    fields = {"id": str(added.id), "post_id": str(post.id), "bytes": str(len(image)), "by": actor(member)}
    return [Line("Attachment created", fields)]


def upload_attachment(board: Board) -> list[Line]:
    member = board.member()
    post = member.client.create_post(0, "t", "c")
    image = tiny_png()
    added = member.client.upload_attachment(post.id, "u.png", image, chunk_bytes=16)
    fields = {"id": str(added.id), "post_id": str(post.id), "bytes": str(len(image)), "by": actor(member)}
    return [Line("Attachment created", fields)]


def delete_attachment(board: Board) -> list[Line]:
    member = board.member()
    added = member.client.add_attachment(member.client.create_post(0, "t", "c").id, "a.png", tiny_png())
    member.client.delete_attachment(added.id)
    return [Line("Attachment deleted", {"id": str(added.id), "by": actor(member)})]


def retry_attachment(board: Board) -> list[Line]:
    member = board.member()
    added = member.client.add_attachment(member.client.create_post(0, "t", "c").id, "a.png", tiny_png())
    assert member.client.wait_for_tagging(added.id, timeout=60).status == FAILED  # the fake refuses it
    member.client.retry_attachment(added.id)
    return [Line("Attachment queued again", {"id": str(added.id), "by": actor(member)})]


def retag_attachments(board: Board) -> list[Line]:
    member = board.member()
    post = member.client.create_post(0, "t", "c")
    added = member.client.add_attachment(post.id, "a.png", tiny_png())
    assert member.client.wait_for_tagging(added.id, timeout=60).status == FAILED
    queued = board.admin.client.retag_attachments(f"post_id = {post.id}")
    assert queued.queued_count == 1, queued
    model = f"{MODEL['arch']}/{str(MODEL['archive_sha256'])[:12]}"
    fields = {"count": "1", "model": model, "by": f"admin:{board.admin.id}"}
    return [Line("Re-tag queued", fields)]


CHANGES: dict[str, Callable[[Board], list[Line]]] = {
    "CreateUser": create_user,
    "UpdateUser": update_user,
    "DeleteUser": delete_user,
    "SignIn": sign_in_rpc,
    "SignOut": sign_out,
    "CreatePost": create_post,
    "UpdatePost": update_post,
    "DeletePost": delete_post,
    "CreateComment": create_comment,
    "UpdateComment": update_comment,
    "DeleteComment": delete_comment,
    "AddAttachment": add_attachment,
    "UploadAttachment": upload_attachment,
    "DeleteAttachment": delete_attachment,
    "RetryAttachment": retry_attachment,
    "RetagAttachments": retag_attachments,
}
READS = ("Get", "List", "Watch")


def test_the_table_covers_every_mutating_rpc() -> None:
    methods = board_pb2.DESCRIPTOR.services_by_name["BoardService"].methods_by_name
    assert {name for name in methods if not name.startswith(READS)} - NOT_BUILT == set(CHANGES)


@pytest.mark.parametrize("rpc", list(CHANGES))
def test_every_mutating_rpc_writes_its_audit_line(board: Board, rpc: str) -> None:
    for line in CHANGES[rpc](board):
        wait_for(f"{rpc}'s audit line {line}", lambda: line.found_in(audit_lines(board.server)), timeout=20)  # noqa: B023
