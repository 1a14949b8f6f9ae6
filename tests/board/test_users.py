"""Users through the generated client: sign-up validation, not-found, duplicates, masks, cascades."""

from __future__ import annotations

import grpc
import pytest

from clients.board import (
    AlreadyExistsError,
    BoardClient,
    BoardClientError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from tests.board.conftest import PASSWORD, Member, MemberFactory, RunningServer, new_email


def fields(error: BoardClientError) -> set[str]:
    return {v.field for v in error.violations}


def test_create_and_get_user_round_trip(anonymous: BoardClient, board_server: RunningServer) -> None:
    address = new_email()
    created = anonymous.create_user("Ada Lovelace", address, PASSWORD)
    assert created.id > 0 and created.name == "Ada Lovelace" and created.email == address
    assert created.create_time.seconds > 0 and not created.admin
    assert created.password == ""  # input only, never returned
    # Anyone may read the user, without the email; the user, signed in, reads it whole.
    assert anonymous.get_user(created.id).email == ""
    with board_server.client() as ada:
        ada.sign_in(address, PASSWORD)
        assert ada.get_user(created.id) == created


@pytest.mark.parametrize(
    ("name", "address", "password", "bad"),
    [
        ("", "a@example.org", PASSWORD, {"name"}),
        ("   ", "a@example.org", PASSWORD, {"name"}),
        ("x" * 101, "a@example.org", PASSWORD, {"name"}),
        ("Ada", "not-an-email", PASSWORD, {"email"}),
        ("Ada", "a@b", PASSWORD, {"email"}),
        ("Ada", "a b@example.org", PASSWORD, {"email"}),
        ("Ada", "a@" + "x" * 250 + ".org", PASSWORD, {"email"}),
        ("", "", PASSWORD, {"name", "email"}),
        # With auth on, the password is required: 8 to 1,024 characters, not the email.
        ("Ada", "a@example.org", "", {"password"}),
        ("Ada", "a@example.org", "7 chars", {"password"}),
        ("Ada", "a@example.org", "x" * 1025, {"password"}),
        ("Ada", "ada@example.org", "ADA@example.org", {"password"}),
        ("", "bad", "short", {"name", "email", "password"}),
    ],
)
def test_invalid_user_is_invalid_argument_with_field_violations(
    anonymous: BoardClient, name: str, address: str, password: str, bad: set[str]
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        anonymous.create_user(name, address, password)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(caught.value) == bad
    assert not password or password not in caught.value.message  # never echoed


def test_name_and_password_at_their_limits_are_accepted(anonymous: BoardClient) -> None:
    assert anonymous.create_user("x" * 100, new_email(), "p" * 8).name == "x" * 100
    assert anonymous.create_user("Long", new_email(), "p" * 1024).name == "Long"


def test_duplicate_email_is_already_exists_ignoring_case(anonymous: BoardClient) -> None:
    address = new_email()
    anonymous.create_user("Ada", address, PASSWORD)
    with pytest.raises(AlreadyExistsError) as caught:
        anonymous.create_user("Other Ada", address.upper(), PASSWORD)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_missing_user_is_not_found(anonymous: BoardClient, client: BoardClient, admin: Member) -> None:
    with pytest.raises(NotFoundError):
        anonymous.get_user(10**12)
    # Only the user or an admin may change an account: an admin learns that it is missing...
    with pytest.raises(NotFoundError):
        admin.client.delete_user(10**12)
    with pytest.raises(NotFoundError):
        admin.client.update_user(10**12, name="x")
    # ...anyone else is refused before the lookup, so nobody probes for ids by trying to delete them.
    with pytest.raises(PermissionDeniedError):
        client.delete_user(10**12)
    with pytest.raises(UnauthenticatedError):
        anonymous.update_user(10**12, name="x")


def test_negative_id_is_invalid_argument(anonymous: BoardClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        anonymous.get_user(-1)
    assert fields(caught.value) == {"id"}


def test_id_zero_is_the_caller(anonymous: BoardClient, member: Member) -> None:
    assert member.client.get_user(0) == member.client.get_user(member.id)  # "who am I"
    with pytest.raises(UnauthenticatedError):
        anonymous.get_user(0)


def test_update_user_changes_only_masked_fields(member: Member) -> None:
    client, user = member.client, member.user
    renamed = client.update_user(user.id, name="Countess", paths=["name"])
    assert renamed.name == "Countess" and renamed.email == user.email
    assert renamed.create_time == user.create_time
    new_address = new_email()
    moved = client.update_user(
        user.id, name="ignored", email=new_address, paths=["email"], current_password=member.password
    )
    assert moved.name == "Countess" and moved.email == new_address
    assert client.get_user(user.id) == moved


@pytest.mark.parametrize("path", ["id", "create_time", "admin"])
def test_immutable_user_path_is_rejected(member: Member, path: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        member.client.update_user(member.id, paths=[path])
    assert fields(caught.value) == {"update_mask"}
    assert member.client.get_user(member.id) == member.user


@pytest.mark.parametrize("paths", [[], ["nickname"], ["name", "bogus"]])
def test_empty_or_unknown_mask_is_rejected(member: Member, paths: list[str]) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        member.client.update_user(member.id, name="New", paths=paths)
    assert "update_mask" in fields(caught.value)


def test_update_to_taken_email_is_already_exists(member: Member, members: MemberFactory) -> None:
    first = members("First")
    with pytest.raises(AlreadyExistsError):
        member.client.update_user(member.id, email=first.email.upper(), current_password=member.password)


def test_update_with_invalid_value_is_rejected(member: Member) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        member.client.update_user(member.id, name=" ", email="nope", password="short")
    assert fields(caught.value) == {"user.name", "user.email", "user.password"}


def test_delete_user_removes_their_posts_comments_and_sessions(
    members: MemberFactory, anonymous: BoardClient
) -> None:
    author, other = members("Author"), members("Other")
    own_post = author.client.create_post(0, "mine", "text")
    other_post = other.client.create_post(0, "theirs", "text")
    on_own = other.client.create_comment(own_post.id, 0, "other on mine")
    by_author = author.client.create_comment(other_post.id, 0, "mine on theirs")
    kept = other.client.create_comment(other_post.id, 0, "stays")

    author.client.delete_user(author.id)

    for lookup, row_id in [
        (anonymous.get_user, author.id),
        (anonymous.get_post, own_post.id),
        (anonymous.get_comment, on_own.id),
        (anonymous.get_comment, by_author.id),
    ]:
        with pytest.raises(NotFoundError):
            lookup(row_id)
    assert anonymous.get_comment(kept.id) == kept
    assert [p.id for p in anonymous.iter_posts(user_id=author.id)] == []
    # The account's sessions went with it: its token is refused, even for a read.
    with pytest.raises(UnauthenticatedError):
        author.client.get_post(other_post.id)
    # The email is free again.
    anonymous.create_user("Again", author.email, PASSWORD)


@pytest.mark.parametrize("change_email", [False, True])
def test_a_new_password_must_not_be_the_email(member: Member, change_email: bool) -> None:
    """Also when the email is not in the same update: the password is compared with the account's email."""
    address = new_email() if change_email else member.email
    with pytest.raises(InvalidArgumentError) as caught:
        member.client.update_user(
            member.id, password=address.upper(), email=address if change_email else None
        )
    assert fields(caught.value) == {"user.password"}
    member.client.get_user(member.id)  # the session is untouched
