"""Changing one's password or email takes the current password, on SQLite and PostgreSQL: a stolen token
alone cannot take an account over. Without it the change is INVALID_ARGUMENT, with a wrong one
PERMISSION_DENIED, and wrong ones count as failed sign-ins of the account's email from the caller's
address; an admin changes another user's without theirs (not their own); a new password ends every other
session, the thief's included, and keeps the one that made the change.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import grpc
import pytest

from board_server.domain.accounts import SIGN_IN_FAILURE_LIMIT, WRONG_CURRENT
from clients.board import BoardClientError, ResourceExhaustedError, UnauthenticatedError
from tests.board.conftest import PASSWORD, MemberFactory, RunningServer, new_email, sign_in
from tests.board.peers import from_address

NEW_PASSWORD = "a new and longer password"


def refused(call: Callable[[], object]) -> BoardClientError:
    with pytest.raises(BoardClientError) as caught:
        call()
    return caught.value


def test_a_stolen_token_cannot_change_the_password_or_the_email(
    board_server: RunningServer, members: MemberFactory
) -> None:
    owner = members("Owner")
    with sign_in(board_server.target, owner.email) as thief:  # a session the owner does not hold
        for change in (
            partial(thief.update_user, owner.id, password=NEW_PASSWORD),
            partial(thief.update_user, owner.id, email=new_email("thief")),
        ):
            missing = refused(change)
            assert missing.code == grpc.StatusCode.INVALID_ARGUMENT
            assert [v.field for v in missing.violations] == ["current_password"]
            wrong = refused(partial(change, current_password="a guess of the thief"))
            assert wrong.code == grpc.StatusCode.PERMISSION_DENIED and wrong.message == WRONG_CURRENT
        assert thief.update_user(owner.id, name="Renamed by the thief").name == "Renamed by the thief"

        # The owner, who knows the password, changes it: every other session ends, theirs stays.
        owner.client.update_user(owner.id, password=NEW_PASSWORD, current_password=PASSWORD)
        assert refused(lambda: thief.get_user(0)).code == grpc.StatusCode.UNAUTHENTICATED
    assert owner.client.get_user(0).id == owner.id
    with pytest.raises(UnauthenticatedError):
        sign_in(board_server.target, owner.email)  # the old password
    with sign_in(board_server.target, owner.email, NEW_PASSWORD) as again:
        moved = again.update_user(owner.id, email=new_email("moved"), current_password=NEW_PASSWORD)
        assert again.get_user(0).email == moved.email


def test_wrong_current_passwords_count_as_failed_sign_ins_from_that_address(
    board_server: RunningServer, members: MemberFactory
) -> None:
    owner = members("Owner")
    with sign_in(board_server.target, owner.email) as thief:
        for attempt in range(SIGN_IN_FAILURE_LIMIT):
            wrong = partial(
                thief.update_user, owner.id, password=NEW_PASSWORD, current_password=f"g{attempt}"
            )
            assert refused(wrong).code == grpc.StatusCode.PERMISSION_DENIED
        right = partial(thief.update_user, owner.id, password=NEW_PASSWORD, current_password=PASSWORD)
        throttled = refused(right)
        assert isinstance(throttled, ResourceExhaustedError) and throttled.retry_after
        # Signing in with that email from this address waits too; from another it does not.
        assert isinstance(refused(partial(sign_in, board_server.target, owner.email)), ResourceExhaustedError)
    with from_address(board_server.target, "127.0.0.7") as elsewhere, sign_in(elsewhere, owner.email) as away:
        assert away.get_user(0).id == owner.id


def test_an_admin_changes_another_users_password_or_email_but_needs_their_own_for_themself(
    board_server: RunningServer, members: MemberFactory
) -> None:
    member = members("Member")
    admin = board_server.make_admin()
    with admin.client as admins:
        changed = admins.update_user(member.id, email=new_email("set-by-admin"), password=NEW_PASSWORD)
        with sign_in(board_server.target, changed.email, NEW_PASSWORD) as member_again:
            assert member_again.get_user(0).id == member.id
        missing = refused(partial(admins.update_user, admin.id, password=NEW_PASSWORD))
        assert [v.field for v in missing.violations] == ["current_password"]
        admins.update_user(admin.id, password=NEW_PASSWORD, current_password=PASSWORD)
