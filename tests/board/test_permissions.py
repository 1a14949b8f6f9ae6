"""Who may call each mutating RPC: every one × {anonymous, another user, the owner, an admin}, on SQLite and
PostgreSQL, against real servers, asserting the exact status code.

The owner is the user the call's target belongs to (the post's author, the account itself). An admin is made
with ``board-server admin grant``. Beyond the code, the database tells whether the call did anything: a
refused call leaves every row as it was, an allowed one changes some.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from sqlalchemy import Engine, MetaData, Table, select, update

from clients.board import BoardClient, BoardClientError
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import (
    PASSWORD,
    Backend,
    Member,
    RunningServer,
    database_engine,
    new_email,
    sign_in,
    start_board_server,
    tiny_png,
)
from tests.support import Processes

OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
ROLES = ("anonymous", "another user", "the owner", "an admin")
# The tables a board call can change: a refused call must leave all of them as they were.
WATCHED = ("users", "access_tokens", "posts", "comments", "attachments", "attachment_labels")


@dataclass
class Things:
    """What the owner has, made afresh for each case: a post, a comment on it, an attachment to it."""

    owner: Member
    post: board_pb2.Post
    comment: board_pb2.Comment
    attachment: board_pb2.Attachment


@dataclass(frozen=True)
class Rule:
    """One row of the table: a call and the code each role gets, in ROLES order."""

    name: str
    call: Callable[[BoardClient, Things], object]
    expected: tuple[grpc.StatusCode, grpc.StatusCode, grpc.StatusCode, grpc.StatusCode]
    closed_sign_up: bool = False  # made on the server running with --sign-up closed
    uses_up_owner: bool = False  # the call ends the owner's account or sessions: a new owner for it
    own_session: bool = False  # SignOut: the caller signs out a session of its own, made for the call
    failed_attachment: bool = False  # RetryAttachment: the attachment is FAILED first


OWNER_OR_ADMIN = (UNAUTHENTICATED, DENIED, OK, OK)
# A new post or comment is the caller's: naming another author is refused, even to an admin.
AS_THE_OWNER = (UNAUTHENTICATED, DENIED, OK, DENIED)
ANY_SIGNED_IN = (UNAUTHENTICATED, OK, OK, OK)

RULES = [
    Rule("CreateUser, sign-up open", lambda c, t: c.create_user("New", new_email(), PASSWORD), (OK,) * 4),
    Rule(
        "CreateUser, sign-up closed",
        lambda c, t: c.create_user("New", new_email(), PASSWORD),
        (UNAUTHENTICATED, DENIED, DENIED, OK),
        closed_sign_up=True,
    ),
    Rule("UpdateUser", lambda c, t: c.update_user(t.owner.id, name=new_email("name")), OWNER_OR_ADMIN),
    Rule(
        "UpdateUser password",
        lambda c, t: c.update_user(
            t.owner.id, password="another password 2", current_password=t.owner.password
        ),
        OWNER_OR_ADMIN,
        uses_up_owner=True,
    ),
    Rule("DeleteUser", lambda c, t: c.delete_user(t.owner.id), OWNER_OR_ADMIN, uses_up_owner=True),
    Rule("SignOut", lambda c, t: c.sign_out(), ANY_SIGNED_IN, own_session=True),
    Rule("CreatePost as the owner", lambda c, t: c.create_post(t.owner.id, "t", "c"), AS_THE_OWNER),
    Rule("CreatePost as the caller", lambda c, t: c.create_post(0, "t", "c"), ANY_SIGNED_IN),
    Rule("UpdatePost", lambda c, t: c.update_post(t.post.id, title="edited"), OWNER_OR_ADMIN),
    Rule("DeletePost", lambda c, t: c.delete_post(t.post.id), OWNER_OR_ADMIN),
    Rule(
        "CreateComment as the owner",
        lambda c, t: c.create_comment(t.post.id, t.owner.id, "c"),
        AS_THE_OWNER,
    ),
    Rule("CreateComment as the caller", lambda c, t: c.create_comment(t.post.id, 0, "c"), ANY_SIGNED_IN),
    Rule("UpdateComment", lambda c, t: c.update_comment(t.comment.id, content="edited"), OWNER_OR_ADMIN),
    Rule("DeleteComment", lambda c, t: c.delete_comment(t.comment.id), OWNER_OR_ADMIN),
    Rule("AddAttachment", lambda c, t: c.add_attachment(t.post.id, "a.png", tiny_png()), OWNER_OR_ADMIN),
    Rule("DeleteAttachment", lambda c, t: c.delete_attachment(t.attachment.id), OWNER_OR_ADMIN),
    # Admins only; past that check this server answers FAILED_PRECONDITION: it has no model to re-tag with.
    Rule(
        "RetagAttachments",
        lambda c, t: c.retag_attachments(),
        (UNAUTHENTICATED, DENIED, DENIED, grpc.StatusCode.FAILED_PRECONDITION),
    ),
    Rule(
        "RetryAttachment",
        lambda c, t: c.retry_attachment(t.attachment.id),
        OWNER_OR_ADMIN,
        failed_attachment=True,
    ),
]


@dataclass
class World:
    """Two servers on one database (sign-up open, sign-up closed), their users, and the database itself."""

    open_server: RunningServer
    closed_server: RunningServer
    other: Member
    owner: Member
    admin: Member
    engine: Engine
    tables: list[Table]
    _clients: list[BoardClient] = field(default_factory=list)

    def things(self, rule: Rule) -> Things:
        owner = self.open_server.sign_up("Owner") if rule.uses_up_owner else self.owner
        if rule.uses_up_owner:
            self._clients.append(owner.client)
        post = owner.client.create_post(0, "Owned", "by the owner")
        comment = owner.client.create_comment(post.id, 0, "the owner's comment")
        attachment = owner.client.add_attachment(post.id, "owned.png", tiny_png())
        if rule.failed_attachment:
            attachments = next(t for t in self.tables if t.name == "attachments")
            with self.engine.begin() as conn:
                conn.execute(
                    update(attachments).where(attachments.c.id == attachment.id).values(status="FAILED")
                )
        return Things(owner, post, comment, attachment)

    def caller(self, role: str, rule: Rule, things: Things) -> BoardClient:
        server = self.closed_server if rule.closed_sign_up else self.open_server
        member = {"another user": self.other, "the owner": things.owner, "an admin": self.admin}.get(role)
        if member is None:
            token = None
        elif rule.own_session:
            session = sign_in(server.target, member.email, member.password)
            session.close()
            token = session.token
        else:
            token = member.client.token
        client = server.client(token=token)
        self._clients.append(client)
        return client

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the watched tables."""
        with self.engine.connect() as conn:
            return {
                table.name: [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key))]
                for table in self.tables
            }

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for member in (self.other, self.owner, self.admin):
            member.client.close()


@pytest.fixture(scope="module")
def world(backend: Backend, module_processes: Processes) -> Iterator[World]:
    url = backend.new_database_url()
    open_server = start_board_server(module_processes, url, backend.workdir)
    closed_server = start_board_server(module_processes, url, backend.workdir, extra=("--sign-up", "closed"))
    with database_engine(url) as engine:
        metadata = MetaData()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # expression indexes (lower(email)) are not reflected; not needed
            metadata.reflect(engine, only=WATCHED)
        world = World(
            open_server,
            closed_server,
            other=open_server.sign_up("Another"),
            owner=open_server.sign_up("Owner"),
            admin=open_server.make_admin(),
            engine=engine,
            tables=[metadata.tables[name] for name in WATCHED],
        )
        try:
            yield world
        finally:
            world.close()


def outcome(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except BoardClientError as exc:
        return exc.code
    return OK


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_who_may_call_each_mutating_rpc(world: World, rule: Rule, role: str) -> None:
    things = world.things(rule)
    caller = world.caller(role, rule, things)
    before = world.snapshot()
    code = outcome(lambda: rule.call(caller, things))
    after = world.snapshot()
    assert code == rule.expected[ROLES.index(role)], f"{rule.name} by {role}"
    if code == OK:
        assert after != before, f"{rule.name} by {role} answered OK but changed nothing"
    else:
        changed = [name for name in before if before[name] != after[name]]
        assert not changed, f"{rule.name} by {role} was refused but changed {changed}"
