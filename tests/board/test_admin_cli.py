"""`board-server admin grant|revoke|set-password EMAIL`: the operator's commands, run on the database of a
running server (SQLite and PostgreSQL); their effect is seen by the server at once, and audited."""

from __future__ import annotations

import re

import pytest

from clients.board import PermissionDeniedError, UnauthenticatedError
from tests.board.conftest import PASSWORD, Member, MemberFactory, RunningServer, new_email, sign_in
from tests.support import wait_for


def audited(server: RunningServer, line: str) -> bool:
    return any(
        re.search(rf"\| INFO \| {re.escape(line)} \|", row)
        for row in server.audit_log.read_text().splitlines()
    )


def test_grant_makes_an_admin_at_once_and_revoke_takes_it_back(
    board_server: RunningServer, members: MemberFactory
) -> None:
    ada, bob = members("Ada"), members("Bob")
    post = bob.client.create_post(0, "Bob's", "text")
    with pytest.raises(PermissionDeniedError):
        ada.client.update_post(post.id, title="not yet")

    granted = board_server.admin("grant", ada.email.upper())  # the email in any case
    assert granted.returncode == 0, granted.stderr
    assert f"grant done for user {ada.id}" in granted.stderr
    # Ada's open session is an admin's now: the flag is read with the token on every call.
    assert ada.client.update_post(post.id, title="moderated").title == "moderated"
    assert ada.client.get_user(ada.id).admin
    assert ada.client.get_user(bob.id).email == bob.email

    revoked = board_server.admin("revoke", ada.email)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(PermissionDeniedError):
        ada.client.delete_post(post.id)
    assert not ada.client.get_user(ada.id).admin
    assert ada.client.get_user(bob.id).email == ""
    wait_for(
        "the operator's audit lines",
        lambda: audited(board_server, f"Admin revoked; user_id={ada.id}; by=operator"),
        timeout=10,
    )
    assert audited(board_server, f"Admin granted; user_id={ada.id}; by=operator")


def test_set_password_reads_stdin_and_ends_every_session(board_server: RunningServer, member: Member) -> None:
    new_password = "set by the operator 42"
    with sign_in(board_server.target, member.email) as other_device:
        done = board_server.admin("set-password", member.email, stdin=f"{new_password}\n")
        assert done.returncode == 0, done.stderr
        assert new_password not in done.stdout + done.stderr  # never echoed
        for session in (member.client, other_device):
            with pytest.raises(UnauthenticatedError):
                session.get_user(member.id)
    with board_server.client() as board:
        with pytest.raises(UnauthenticatedError):
            board.sign_in(member.email, PASSWORD)
        board.sign_in(member.email, new_password)
        assert board.get_user(member.id).email == member.email
    line = f"Password set; user_id={member.id}; sessions_revoked=2; by=operator"
    wait_for("the audit line", lambda: audited(board_server, line), timeout=10)
    assert new_password not in board_server.audit_log.read_text()


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short\n", "at least 8 characters"),
        ("\n", "at least 8 characters"),
        ("x" * 1025 + "\n", "at most 1024"),
    ],
)
def test_set_password_keeps_the_password_rules(
    board_server: RunningServer, member: Member, password: str, reason: str
) -> None:
    refused = board_server.admin("set-password", member.email, stdin=password)
    assert refused.returncode == 1 and reason in refused.stderr
    member.client.get_user(member.id)  # nothing changed: the session lives, the old password works
    with sign_in(board_server.target, member.email, PASSWORD):
        pass


def test_the_email_itself_is_not_a_password(board_server: RunningServer, member: Member) -> None:
    refused = board_server.admin("set-password", member.email, stdin=f"{member.email.upper()}\n")
    assert refused.returncode == 1 and "must not be the email address" in refused.stderr


@pytest.mark.parametrize("action", ["grant", "revoke", "set-password"])
def test_an_unknown_email_is_an_error(board_server: RunningServer, action: str) -> None:
    nobody = new_email("nobody")
    done = board_server.admin(action, nobody, stdin="a fine password\n")
    assert done.returncode == 1 and f"no user with email {nobody!r}" in done.stderr


@pytest.mark.parametrize(
    "arguments", [("grant",), ("promote", "a@example.org"), ("grant", "a@example.org", "b")]
)
def test_a_malformed_admin_command_is_a_usage_error(
    board_server: RunningServer, arguments: tuple[str, ...]
) -> None:
    done = board_server.admin(*arguments)
    assert done.returncode == 2 and "admin needs ACTION EMAIL" in done.stderr
