"""Users through the generated client: validation, not-found, duplicates, masks, cascades."""

from __future__ import annotations

import uuid

import grpc
import pytest

from clients.board import (
    AlreadyExistsError,
    BoardClient,
    BoardClientError,
    InvalidArgumentError,
    NotFoundError,
)


def email() -> str:
    return f"u-{uuid.uuid4().hex[:12]}@example.org"


def fields(error: BoardClientError) -> set[str]:
    return {v.field for v in error.violations}


def test_create_and_get_user_round_trip(client: BoardClient) -> None:
    address = email()
    created = client.create_user("Ada Lovelace", address)
    assert created.id > 0 and created.name == "Ada Lovelace" and created.email == address
    assert created.create_time.seconds > 0
    assert client.get_user(created.id) == created


@pytest.mark.parametrize(
    ("name", "address", "bad"),
    [
        ("", "a@example.org", {"name"}),
        ("   ", "a@example.org", {"name"}),
        ("x" * 101, "a@example.org", {"name"}),
        ("Ada", "not-an-email", {"email"}),
        ("Ada", "a@b", {"email"}),
        ("Ada", "a b@example.org", {"email"}),
        ("Ada", "a@" + "x" * 250 + ".org", {"email"}),
        ("", "", {"name", "email"}),
    ],
)
def test_invalid_user_is_invalid_argument_with_field_violations(
    client: BoardClient, name: str, address: str, bad: set[str]
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_user(name, address)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields(caught.value) == bad


def test_name_at_the_limit_is_accepted(client: BoardClient) -> None:
    assert client.create_user("x" * 100, email()).name == "x" * 100


def test_duplicate_email_is_already_exists_ignoring_case(client: BoardClient) -> None:
    address = email()
    client.create_user("Ada", address)
    with pytest.raises(AlreadyExistsError) as caught:
        client.create_user("Other Ada", address.upper())
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_missing_user_is_not_found(client: BoardClient) -> None:
    with pytest.raises(NotFoundError):
        client.get_user(10**12)
    with pytest.raises(NotFoundError):
        client.delete_user(10**12)
    with pytest.raises(NotFoundError):
        client.update_user(10**12, name="x")


def test_non_positive_id_is_invalid_argument(client: BoardClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.get_user(0)
    assert fields(caught.value) == {"id"}


def test_update_user_changes_only_masked_fields(client: BoardClient) -> None:
    user = client.create_user("Ada", email())
    renamed = client.update_user(user.id, name="Countess", paths=["name"])
    assert renamed.name == "Countess" and renamed.email == user.email
    assert renamed.create_time == user.create_time
    new_address = email()
    moved = client.update_user(user.id, name="ignored", email=new_address, paths=["email"])
    assert moved.name == "Countess" and moved.email == new_address
    assert client.get_user(user.id) == moved


@pytest.mark.parametrize("path", ["id", "create_time"])
def test_immutable_user_path_is_rejected(client: BoardClient, path: str) -> None:
    user = client.create_user("Ada", email())
    with pytest.raises(InvalidArgumentError) as caught:
        client.update_user(user.id, paths=[path])
    assert fields(caught.value) == {"update_mask"}
    assert client.get_user(user.id) == user


@pytest.mark.parametrize("paths", [[], ["nickname"], ["name", "bogus"]])
def test_empty_or_unknown_mask_is_rejected(client: BoardClient, paths: list[str]) -> None:
    user = client.create_user("Ada", email())
    with pytest.raises(InvalidArgumentError) as caught:
        client.update_user(user.id, name="New", paths=paths)
    assert "update_mask" in fields(caught.value)


def test_update_to_taken_email_is_already_exists(client: BoardClient) -> None:
    first, second = client.create_user("A", email()), client.create_user("B", email())
    with pytest.raises(AlreadyExistsError):
        client.update_user(second.id, email=first.email.upper())


def test_update_with_invalid_value_is_rejected(client: BoardClient) -> None:
    user = client.create_user("Ada", email())
    with pytest.raises(InvalidArgumentError) as caught:
        client.update_user(user.id, name=" ", email="nope")
    assert fields(caught.value) == {"user.name", "user.email"}


def test_delete_user_removes_their_posts_and_comments(client: BoardClient) -> None:
    author, other = client.create_user("Author", email()), client.create_user("Other", email())
    own_post = client.create_post(author.id, "mine", "text")
    other_post = client.create_post(other.id, "theirs", "text")
    on_own = client.create_comment(own_post.id, other.id, "other on mine")
    by_author = client.create_comment(other_post.id, author.id, "mine on theirs")
    kept = client.create_comment(other_post.id, other.id, "stays")

    client.delete_user(author.id)

    for lookup, row_id in [
        (client.get_user, author.id),
        (client.get_post, own_post.id),
        (client.get_comment, on_own.id),
        (client.get_comment, by_author.id),
    ]:
        with pytest.raises(NotFoundError):
            lookup(row_id)
    assert client.get_comment(kept.id) == kept
    assert [p.id for p in client.iter_posts(user_id=author.id)] == []
    # The email is free again.
    client.create_user("Again", author.email)
