"""Page tokens against a real server (SQLite and PostgreSQL): opaque, signed with the deployment's key, bound
to their list and query, range-checked even when correctly signed, and valid on every replica.

Some tokens here are forged WITH the real key, read from the database the way someone who got hold of it
would: the server must still refuse ids beyond int64, nesting, and cursors of the wrong shape, with
INVALID_ARGUMENT on ``page_token`` and never INTERNAL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from clients.board import BoardClient, BoardClientError, InvalidArgumentError
from tests.board.conftest import Backend, RunningServer, sign_up, start_board_server
from tests.support import Processes

VERSION = b"\x02"
MAC_BYTES = 16


@dataclass
class Lists:
    """A server with a few rows in every list, a signed-in client, and the ids to aim at."""

    server: RunningServer
    client: BoardClient
    user_id: int
    other_user_id: int
    post_id: int  # has comments and attachments
    other_post_id: int  # has comments and attachments too
    processes: Processes


def serve(processes: Processes, database_url: str, workdir: Any) -> RunningServer:
    extra = ("--auth", "on", "--processes", "1", "--metrics-address", "none")
    return start_board_server(processes, database_url, workdir, extra=extra)


def jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "JPEG")
    return buffer.getvalue()


def signed_in(target: str) -> tuple[BoardClient, int]:
    member = sign_up(target, "Pager", timeout=30.0)
    return member.client, member.id


@pytest.fixture(scope="module")
def lists(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lists]:
    processes = Processes(tmp_path_factory.mktemp("page-token-logs"))
    try:
        server = serve(processes, backend.new_database_url(), backend.workdir)
        client, user_id = signed_in(server.target)
        other, other_user_id = signed_in(server.target)
        other.create_post(other_user_id, "theirs", "c")
        other.close()
        posts = [client.create_post(user_id, f"post {i}", "c").id for i in range(5)]
        image = jpeg()
        for post_id in posts[:2]:
            for i in range(3):
                client.create_comment(post_id, user_id, f"comment {i}")
                client.add_attachment(post_id, f"{i}.jpg", image)
        yield Lists(server, client, user_id, other_user_id, posts[0], posts[1], processes)
        client.close()
    finally:
        processes.stop_all()


# --- reading and forging tokens ----------------------------------------------------------------------------


def deployment_key(database_url: str) -> bytes:
    """The page-token key, straight from the database (table deployment_secrets)."""
    query = "SELECT value FROM deployment_secrets WHERE name = 'page_token_key'"
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            return bytes(conn.execute(query).fetchone()[0])
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return bytes(row[0])


def unpack(token: str) -> dict[str, Any]:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert raw[:1] == VERSION
    payload = json.loads(raw[1 + MAC_BYTES :])
    assert isinstance(payload, dict)
    return payload


def sign(key: bytes, payload: bytes) -> str:
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(VERSION + mac + payload).decode().rstrip("=")


def forge(key: bytes, original: str, cursor: object) -> str:
    """``original`` with its cursor replaced by ``cursor``, signed with ``key``."""
    payload = unpack(original)
    payload["c"] = cursor
    return sign(key, json.dumps(payload, separators=(",", ":")).encode())


Lister = Callable[[str], Any]


def listers(world: Lists) -> dict[str, tuple[Lister, Lister]]:
    """Each list: (first page of size 1 → its response, page with a token → its response)."""
    c = world.client
    return {
        "users": (lambda _: c.list_users(page_size=1), lambda t: c.list_users(page_size=1, page_token=t)),
        "posts": (lambda _: c.list_posts(page_size=1), lambda t: c.list_posts(page_size=1, page_token=t)),
        "posts of a user": (
            lambda _: c.list_posts(user_id=world.user_id, page_size=1),
            lambda t: c.list_posts(user_id=world.user_id, page_size=1, page_token=t),
        ),
        "posts by time": (
            lambda _: c.list_posts(page_size=1, order_by="create_time desc"),
            lambda t: c.list_posts(page_size=1, order_by="create_time desc", page_token=t),
        ),
        "comments": (
            lambda _: c.list_comments(world.post_id, page_size=1),
            lambda t: c.list_comments(world.post_id, page_size=1, page_token=t),
        ),
        "attachments": (
            lambda _: c.list_attachments_page(world.post_id, page_size=1),
            lambda t: c.list_attachments_page(world.post_id, page_size=1, page_token=t),
        ),
    }


LIST_NAMES = ("users", "posts", "posts of a user", "posts by time", "comments", "attachments")


def assert_page_token_refused(call: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        call()
    assert [v.field for v in caught.value.violations] == ["page_token"], caught.value
    assert len(caught.value.message) < 300


# --- tests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LIST_NAMES)
def test_tokens_page_through_every_row_once(lists: Lists, name: str) -> None:
    first, following = listers(lists)[name]
    page = first("")
    seen = []
    while True:
        items = [
            m.id for f in page.DESCRIPTOR.fields if f.name != "next_page_token" for m in getattr(page, f.name)
        ]
        seen += items
        if not page.next_page_token:
            break
        page = following(page.next_page_token)
    assert len(seen) == len(set(seen)) >= 2


BAD_CURSORS: tuple[object, ...] = (
    {"a": 2**63}, {"a": 2**64 + 1}, {"a": 10**40}, {"a": -1}, {"a": -(2**63) - 1}, {"a": "5"}, {"a": 5.5},
    {"a": True}, {"a": None}, {"a": []}, {"a": {"a": 1}}, {}, [], "x", 7, None,
    {"id": 2**63}, {"id": 10**40}, {"id": "1"}, {"id": 1, "create_time": "not a time"},
    {"id": 1, "create_time": "2026-01-01T00:00:00"}, {"id": 1, "create_time": "0001-01-01T00:00:00+14:00"},
    {"id": 1, "create_time": "9999-12-31T23:59:59-14:00"}, {"id": 1, "create_time": "x" * 65},
    {"id": 1, "create_time": 5}, {"id": 1, "fraction": "0.5"},
)  # fmt: skip


@pytest.mark.parametrize("name", LIST_NAMES)
def test_signed_tokens_with_cursors_out_of_range_are_invalid_argument(lists: Lists, name: str) -> None:
    key = deployment_key(lists.server.database_url)
    first, following = listers(lists)[name]
    token = first("").next_page_token
    # The forging itself is sound: the same cursor re-signed gives the same page as the real token.
    assert following(forge(key, token, unpack(token)["c"])) == following(token)
    # None of these is a cursor of any list (ids out of int64 or negative, wrong types, the other order's
    # keys, times without a UTC equivalent): each must be refused, whichever list it is sent to.
    wrong: list[str] = []
    for cursor in BAD_CURSORS:
        try:
            following(forge(key, token, cursor))
        except InvalidArgumentError as exc:
            if [v.field for v in exc.violations] != ["page_token"]:
                wrong.append(f"{str(cursor)[:80]}: violations {exc.violations}")
        except BoardClientError as exc:
            wrong.append(f"{str(cursor)[:80]}: {exc.code.name}: {exc.message}")
        else:
            wrong.append(f"{str(cursor)[:80]}: accepted")
    assert not wrong, f"{name}: cursors not refused as INVALID_ARGUMENT on page_token:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", [n for n in LIST_NAMES if n != "posts by time"])
def test_signed_id_cursors_at_the_edges_of_the_range_are_accepted(lists: Lists, name: str) -> None:
    """The bounds of the range check: 0 and 2**63 - 1 are ids a cursor may hold (2**63 and -1 are not)."""
    key = deployment_key(lists.server.database_url)
    first, following = listers(lists)[name]
    token = first("").next_page_token
    assert following(forge(key, token, {"a": 0})) == first("")  # after id 0: the first page
    last = following(forge(key, token, {"a": 2**63 - 1}))  # after the largest id: no rows, no next page
    assert not last.ListFields(), last


@pytest.mark.parametrize("name", LIST_NAMES)
def test_deeply_nested_and_oversized_tokens_are_invalid_argument(lists: Lists, name: str) -> None:
    key = deployment_key(lists.server.database_url)
    _, following = listers(lists)[name]
    deep = b"[" * 100_000 + b"]" * 100_000
    deep_object = b'{"r":' * 50_000 + b"1" + b"}" * 50_000
    for payload in (deep, deep_object, b"", b"null", b"\xff\xfe", b'{"r":"users","q":"","c":{"a":1}' * 2):
        assert_page_token_refused(lambda p=payload: following(sign(key, p)))  # type: ignore[misc]
    first, _ = listers(lists)[name]
    token = first("").next_page_token
    nested_cursor = forge(key, token, {"a": [[[[[[[[[[1]]]]]]]]]]})
    assert_page_token_refused(lambda: following(nested_cursor))
    assert_page_token_refused(lambda: following(token + "A" * 5_000))
    assert_page_token_refused(lambda: following("é" + token))


@pytest.mark.parametrize("name", LIST_NAMES)
def test_modified_and_forged_tokens_are_invalid_argument(lists: Lists, name: str) -> None:
    first, following = listers(lists)[name]
    token = first("").next_page_token
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for position in range(0, len(token), max(1, len(token) // 40)):
        replacement = alphabet[(alphabet.index(token[position]) + 1) % 64]
        changed = token[:position] + replacement + token[position + 1 :]
        decoded = base64.urlsafe_b64decode(changed + "=" * (-len(changed) % 4))
        if decoded == raw:
            continue  # only the unused low bits of the last character changed
        assert_page_token_refused(lambda t=changed: following(t))  # type: ignore[misc]
    payload = raw[1 + MAC_BYTES :]
    # Signed with another key, unsigned, the wrong version, cut.
    assert_page_token_refused(lambda: following(sign(secrets.token_bytes(32), payload)))
    unsigned = base64.urlsafe_b64encode(VERSION + b"\x00" * MAC_BYTES + payload).decode()
    assert_page_token_refused(lambda: following(unsigned))
    other_version = base64.urlsafe_b64encode(b"\x01" + raw[1:]).decode()
    assert_page_token_refused(lambda: following(other_version))
    assert_page_token_refused(lambda: following(token[: len(token) // 2]))
    assert_page_token_refused(lambda: following(base64.urlsafe_b64encode(payload).decode()))


def test_a_token_of_another_list_or_query_is_invalid_argument(lists: Lists) -> None:
    c = lists.client
    every = listers(lists)
    tokens = {name: first("").next_page_token for name, (first, _) in every.items()}
    for issued, token in tokens.items():
        for used, (_, following) in every.items():
            if used != issued:
                assert_page_token_refused(lambda f=following, t=token: f(t))  # type: ignore[misc]
    # The same list with another parent, filter or order.
    assert_page_token_refused(lambda: c.list_comments(lists.other_post_id, page_token=tokens["comments"]))
    assert_page_token_refused(
        lambda: c.list_attachments_page(lists.other_post_id, page_token=tokens["attachments"])
    )
    assert_page_token_refused(lambda: c.list_posts(lists.other_user_id, page_token=tokens["posts of a user"]))
    by_time = tokens["posts by time"]
    assert_page_token_refused(lambda: c.list_posts(order_by="create_time asc", page_token=by_time))
    assert_page_token_refused(
        lambda: c.list_posts(order_by="create_time desc", filter="label.dog", page_token=by_time)
    )
    assert_page_token_refused(lambda: c.list_posts(label="dog", page_token=tokens["posts"]))
    assert_page_token_refused(
        lambda: c.list_posts(filter=f"user_id = {lists.user_id}", page_token=tokens["posts"])
    )


def test_a_token_from_one_replica_works_on_another(lists: Lists, backend: Backend) -> None:
    """A second server on the same database shares the deployment key: page 2 of every list is the same
    there as here."""
    replica = serve(lists.processes, lists.server.database_url, backend.workdir)
    with BoardClient(replica.target, timeout=30.0) as there:
        here_lists, there_lists = listers(lists), listers(replace(lists, client=there))
        for name in LIST_NAMES:
            first, following_here = here_lists[name]
            _, following_there = there_lists[name]
            token = first("").next_page_token
            assert token
            second = following_there(token)
            assert second == following_here(token) and second.ListFields(), name
    Processes.stop(replica.proc)
