"""Attachments through the gRPC API of a real board server (tagging off: uploads stay PENDING), on SQLite and
PostgreSQL: storage, validation with field violations, size limits (a message of at most 1 MiB, larger images
in chunks), cascades, and the label filter's rules. tests/board/test_uploads.py has UploadAttachment's rules.

Uploads are made by the post's author, signed in (``author``); reads need no token (``client`` is anonymous).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import pytest
from PIL import Image

from clients.board import (
    BoardClient,
    BoardClientError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import Backend, Member, RunningServer, start_board_server
from tests.support import Processes


@pytest.fixture(scope="module")
def server(backend: Backend, module_processes: Processes) -> RunningServer:
    """This module's own server per backend: its attachment audit lines stay out of the shared one's."""
    return start_board_server(module_processes, backend.new_database_url(), backend.workdir)


@pytest.fixture
def client(server: RunningServer) -> Iterator[BoardClient]:
    """An anonymous reader of the module's server."""
    with server.client() as board:
        yield board


@pytest.fixture
def author(server: RunningServer) -> Iterator[Member]:
    """A signed-in user of the module's server."""
    member = server.sign_up("Ann")
    yield member
    member.client.close()


def jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def new_post(author: Member) -> int:
    return author.client.create_post(0, "With photos", "see below").id


def test_attachment_is_stored_pending_and_read_back(author: Member, client: BoardClient) -> None:
    post_id = new_post(author)
    data = jpeg()
    added = author.client.add_attachment(post_id, "sea.jpg", data, "image/jpeg")
    assert added.status == board_pb2.ATTACHMENT_STATUS_PENDING
    assert (added.post_id, added.filename, added.content_type) == (post_id, "sea.jpg", "image/jpeg")
    assert (added.width, added.height, added.size_bytes) == (64, 48, len(data))
    assert added.create_time.seconds > 0
    assert client.get_attachment(added.id) == added
    assert [a.id for a in client.list_attachments(post_id)] == [added.id]
    content = client.get_attachment_content(added.id)
    assert (content.data, content.content_type) == (data, "image/jpeg")
    with pytest.raises(BoardClientError) as caught:
        client.get_attachment_mask(added.id)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    author.client.delete_attachment(added.id)
    with pytest.raises(NotFoundError):
        client.get_attachment(added.id)
    assert client.list_attachments(post_id) == []


def test_an_image_over_one_mib_goes_up_in_chunks_and_comes_back_whole(
    author: Member, client: BoardClient
) -> None:
    post_id = new_post(author)
    big = jpeg() + b"\x00" * (6 * 1024 * 1024)  # trailing bytes after EOI: still a JPEG header
    added = author.client.upload_attachment(post_id, "big.jpg", big)
    assert added.size_bytes == len(big)
    assert client.get_attachment_content(added.id).data == big


def test_an_add_attachment_request_over_one_mib_is_resource_exhausted(author: Member) -> None:
    post_id = new_post(author)
    with pytest.raises(ResourceExhaustedError):
        author.client.add_attachment(post_id, "big.jpg", jpeg() + b"\x00" * (1024 * 1024))
    assert author.client.list_attachments(post_id) == []


def test_upload_over_the_attachment_limit_is_invalid_argument(author: Member) -> None:
    post_id = new_post(author)
    with pytest.raises(InvalidArgumentError) as caught:
        author.client.upload_attachment(post_id, "huge.jpg", jpeg() + b"\x00" * (20 * 1024 * 1024))
    assert [v.field for v in caught.value.violations] == ["metadata.size_bytes"]
    assert "at most 20971520 bytes" in caught.value.violations[0].description


@pytest.mark.parametrize(
    ("filename", "content_type", "data", "fields"),
    [
        ("a.jpg", "", b"", ["data"]),
        ("a.txt", "", b"just text", ["data"]),
        ("a.html", "text/html", b"<html><body>hi</body></html>", ["data"]),
        ("a.png", "image/png", None, ["content_type"]),
        ("", "", None, ["filename"]),
        ("x" * 256, "", None, ["filename"]),
    ],
)
def test_bad_uploads_are_invalid_argument_with_field_violations(
    author: Member, filename: str, content_type: str, data: bytes | None, fields: list[str]
) -> None:
    post_id = new_post(author)
    with pytest.raises(InvalidArgumentError) as caught:
        author.client.add_attachment(post_id, filename, jpeg() if data is None else data, content_type)
    assert [v.field for v in caught.value.violations] == fields


def test_attachment_to_missing_post_is_not_found(author: Member, client: BoardClient) -> None:
    with pytest.raises(NotFoundError):
        author.client.add_attachment(10**9, "a.jpg", jpeg())
    with pytest.raises(NotFoundError):
        client.list_attachments(10**9)


def test_attachments_go_with_their_post_and_their_user(author: Member, client: BoardClient) -> None:
    post_id = new_post(author)
    on_post = author.client.add_attachment(post_id, "a.jpg", jpeg()).id
    author.client.delete_post(post_id)
    with pytest.raises(NotFoundError):
        client.get_attachment(on_post)
    second = author.client.create_post(0, "Again", "more photos").id
    on_user = author.client.add_attachment(second, "b.jpg", jpeg()).id
    author.client.delete_user(author.id)
    with pytest.raises(NotFoundError):
        client.get_attachment(on_user)


def test_label_filter_rules(client: BoardClient) -> None:
    assert list(client.iter_posts(label="no-such-class")) == []  # nothing is tagged with tagging off
    for fraction in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidArgumentError) as caught:
            client.list_posts(label="dog", min_label_fraction=fraction)
        assert [v.field for v in caught.value.violations] == ["min_label_fraction"]
    with pytest.raises(InvalidArgumentError):
        client.list_posts(label="x" * 101)
    # A page token of one filter is not valid for another list.
    plain = client.list_posts(page_size=1)
    if plain.next_page_token:
        with pytest.raises(InvalidArgumentError):
            client.list_posts(page_size=1, page_token=plain.next_page_token, label="dog")
