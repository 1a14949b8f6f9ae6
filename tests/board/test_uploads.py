"""Bodies against a real board server: every request is at most 1 MiB, refused from its length prefix before
it is read; UploadAttachment takes images up to the attachment limit in chunks, refusing an anonymous caller
before a byte of the body and a bad upload before the bytes it would cost. The attacker speaks HTTP/2 by
hand from another loopback address (bench/starvation.py); the uploads that should work go through the
Python client and grpcurl here (the CLI in tests/clients, Node in tests/node).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest

from bench.starvation import RawGrpcConnection, framed, grpc_frame_prefix
from clients.board import BoardClient, BoardClientError
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import GRPCURL, Member, RunningServer, sign_up, start_board_server, tiny_png
from tests.support import Processes

GENEROUS = 30.0
BOARD = "/board.v1.BoardService/"
ATTACKER = "127.0.0.2"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(module_processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    """A board with its defaults (20 MiB attachments, 1 MiB requests), one process."""
    work = tmp_path_factory.mktemp("uploads")
    extra = ("--processes", "1", "--metrics-address", "none")
    return start_board_server(module_processes, f"sqlite:///{work / 'board.db'}", work, extra=extra)


@pytest.fixture
def author(server: RunningServer) -> Iterator[Member]:
    member = sign_up(server.target, "Uploader", timeout=GENEROUS)
    yield member
    member.client.close()


@pytest.fixture
def attacker(server: RunningServer) -> Iterator[RawGrpcConnection]:
    connection = RawGrpcConnection(server.target, source=ATTACKER)
    yield connection
    connection.close()


def metadata_message(
    post_id: int, size: int, filename: str = "photo.png"
) -> board_pb2.UploadAttachmentRequest:
    metadata = board_pb2.UploadAttachmentMetadata(post_id=post_id, filename=filename, size_bytes=size)
    return board_pb2.UploadAttachmentRequest(metadata=metadata)


def chunk_messages(data: bytes, size: int = 256 * 1024) -> list[board_pb2.UploadAttachmentRequest]:
    return [board_pb2.UploadAttachmentRequest(chunk=data[i : i + size]) for i in range(0, len(data), size)]


def upload(
    client: BoardClient, messages: Iterable[board_pb2.UploadAttachmentRequest]
) -> board_pb2.Attachment:
    """UploadAttachment with exactly ``messages``, as the signed-in ``client``."""
    with grpc.insecure_channel(client.target) as channel:
        call = channel.stream_unary(
            BOARD + "UploadAttachment",
            request_serializer=board_pb2.UploadAttachmentRequest.SerializeToString,
            response_deserializer=board_pb2.Attachment.FromString,
        )
        response: board_pb2.Attachment = call(iter(messages), metadata=client.metadata, timeout=GENEROUS)
    return response


# --- refused before the body -------------------------------------------------------------------------------


def test_an_anonymous_twenty_mib_upload_that_never_arrives_is_unauthenticated_at_once(
    server: RunningServer, author: Member, attacker: RawGrpcConnection
) -> None:
    post = author.client.create_post(0, "mine", "no strangers' photos")
    stream = attacker.open_stream(BOARD + "UploadAttachment")  # no authorization
    first = framed(metadata_message(post.id, 20 * MIB).SerializeToString())
    attacker.send_partial(stream, first + grpc_frame_prefix(MIB) + b"\xff\xd8" * 1000)  # then nothing
    started = time.monotonic()
    assert attacker.wait(lambda: not stream.open, timeout=GENEROUS)
    assert time.monotonic() - started < 1.0
    assert stream.grpc_status == str(grpc.StatusCode.UNAUTHENTICATED.value[0]), stream
    assert "uploading needs a signed-in caller" in stream.grpc_message
    assert author.client.list_attachments(post.id) == []


def test_a_five_mib_create_post_is_resource_exhausted_without_being_read_whole(
    server: RunningServer, author: Member, attacker: RawGrpcConnection
) -> None:
    metadata = (("authorization", f"Bearer {author.client.token}"),)
    stream = attacker.open_stream(BOARD + "CreatePost", metadata)
    request = board_pb2.CreatePostRequest(title="t", content="x" * (5 * MIB)).SerializeToString()
    attacker.send_partial(stream, framed(request)[: 64 * 1024])  # the prefix says 5 MiB; 64 KiB come
    assert attacker.wait(lambda: not stream.open, timeout=GENEROUS)
    assert stream.grpc_status == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]), stream
    assert "larger than max" in stream.grpc_message
    assert stream.sent <= 64 * 1024 + 5  # answered without the rest of the body
    with pytest.raises(BoardClientError) as caught:
        author.client.create_post(0, "t", "x" * (2 * MIB))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_an_upload_to_a_post_that_is_not_the_callers_is_refused_before_any_chunk(
    server: RunningServer, author: Member, attacker: RawGrpcConnection
) -> None:
    post = author.client.create_post(0, "mine", "c")
    stranger = sign_up(server.target, "Stranger", timeout=GENEROUS)
    with stranger.client:
        refusals = {}
        for name, post_id in (("someone else's", post.id), ("missing", 10**12)):
            stream = attacker.open_stream(
                BOARD + "UploadAttachment", (("authorization", f"Bearer {stranger.client.token}"),)
            )
            attacker.send_partial(stream, framed(metadata_message(post_id, 20 * MIB).SerializeToString()))
            assert attacker.wait(lambda: not stream.open, timeout=GENEROUS)  # noqa: B023
            refusals[name] = stream.grpc_status
    assert refusals == {
        "someone else's": str(grpc.StatusCode.PERMISSION_DENIED.value[0]),
        "missing": str(grpc.StatusCode.NOT_FOUND.value[0]),
    }


# --- the upload's own rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "field"),
    [
        ("chunk first", "metadata"),
        ("metadata twice", "chunk"),
        ("no messages", "metadata"),
        ("fewer bytes than declared", "metadata.size_bytes"),
        ("more bytes than declared", "chunk"),
        ("declared over the limit", "metadata.size_bytes"),
        ("negative size", "metadata.size_bytes"),
        ("no file name", "metadata.filename"),
    ],
)
def test_a_malformed_upload_is_invalid_argument_naming_the_field(
    author: Member, shape: str, field: str
) -> None:
    post = author.client.create_post(0, "t", "c")
    data = tiny_png()
    head, chunks = metadata_message(post.id, len(data)), chunk_messages(data, 20)
    messages = {
        "chunk first": [*chunks, head],
        "metadata twice": [head, *chunks[:1], head],
        "no messages": [],
        "fewer bytes than declared": [metadata_message(post.id, len(data) + 1), *chunks],
        "more bytes than declared": [metadata_message(post.id, len(data) - 1), *chunks],
        "declared over the limit": [metadata_message(post.id, 20 * MIB + 1), *chunks],
        "negative size": [metadata_message(post.id, -1), *chunks],
        "no file name": [metadata_message(post.id, len(data), filename=""), *chunks],
    }[shape]
    with pytest.raises(grpc.RpcError) as caught:
        upload(author.client, messages)
    assert isinstance(caught.value, grpc.Call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert (caught.value.details() or "").startswith(field + ":"), caught.value.details()
    assert author.client.list_attachments(post.id) == []


def test_an_upload_of_unknown_size_is_ended_at_the_chunk_that_passes_the_limit(
    processes: Processes, tmp_path: Path
) -> None:
    server = start_board_server(
        processes, f"sqlite:///{tmp_path / 'b.db'}", tmp_path, extra=("--max-attachment-bytes", "100000")
    )
    member = sign_up(server.target, timeout=GENEROUS)
    with member.client as client:
        post = client.create_post(0, "t", "c")
        sent = []

        def messages() -> Iterator[board_pb2.UploadAttachmentRequest]:
            yield metadata_message(post.id, 0)  # size unknown
            for _ in range(2000):  # 20 MB in 10 kB chunks, if the server let it
                sent.append(1)
                yield board_pb2.UploadAttachmentRequest(chunk=b"\x00" * 10_000)

        with pytest.raises(grpc.RpcError) as caught:
            upload(client, messages())
        assert isinstance(caught.value, grpc.Call)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert (caught.value.details() or "").startswith("chunk: the image is larger than 100000 bytes")
        assert len(sent) < 2000  # the server answered before the client was done


def test_an_upload_over_the_authors_storage_quota_is_refused_before_any_chunk(
    processes: Processes, tmp_path: Path
) -> None:
    server = start_board_server(
        processes, f"sqlite:///{tmp_path / 'q.db'}", tmp_path, extra=("--user-storage-quota", "100000")
    )
    member = sign_up(server.target, timeout=GENEROUS)
    with member.client as client:
        post = client.create_post(0, "t", "c")
        connection = RawGrpcConnection(server.target, source=ATTACKER)
        try:
            stream = connection.open_stream(BOARD + "UploadAttachment", tuple(client.metadata))
            connection.send_partial(stream, framed(metadata_message(post.id, 200_000).SerializeToString()))
            assert connection.wait(lambda: not stream.open, timeout=GENEROUS)
        finally:
            connection.close()
        assert stream.grpc_status == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]), stream.grpc_message
        assert client.list_attachments(post.id) == []


def test_a_repeated_upload_with_its_request_id_returns_the_first_attachment(author: Member) -> None:
    client = author.client
    post = client.create_post(0, "t", "c")
    request_id = "2f1c6e0a-8d3b-4c2e-9a57-0b6d4e8f1a23"
    added = client.upload_attachment(post.id, "a.png", tiny_png(), chunk_bytes=64, request_id=request_id)
    again = client.upload_attachment(post.id, "a.png", tiny_png(), request_id=request_id)
    assert again.id == added.id
    assert [a.id for a in client.list_attachments(post.id)] == [added.id]
    with pytest.raises(BoardClientError) as malformed:
        client.upload_attachment(post.id, "a.png", tiny_png(), request_id="not-a-uuid")
    assert malformed.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in malformed.value.violations] == ["metadata.request_id"]


def test_a_small_image_in_many_chunks_is_one_attachment(author: Member) -> None:
    post = author.client.create_post(0, "t", "c")
    data = tiny_png()
    added = upload(author.client, [metadata_message(post.id, 0), *chunk_messages(data, 7)])
    assert (added.size_bytes, added.content_type, added.status) == (
        len(data), "image/png", board_pb2.ATTACHMENT_STATUS_PENDING,
    )  # fmt: skip
    assert author.client.get_attachment_content(added.id).data == data


# --- up to the limit, from the clients ---------------------------------------------------------------------


def test_a_twenty_mib_photo_uploads_through_the_python_client(
    server: RunningServer, author: Member, photo_near_the_limit_file: Path
) -> None:
    data = photo_near_the_limit_file.read_bytes()
    post = author.client.create_post(0, "big", "a photo near the limit")
    added = author.client.upload_attachment(post.id, "big.png", data)
    assert (added.size_bytes, added.width, added.content_type) == (len(data), 2560, "image/png")
    with server.client(timeout=GENEROUS) as reader:
        assert reader.get_attachment_content(added.id).data == data


# The grpcurl recipe of docs/board-api.md: the metadata, then the file in 256 KiB chunks, base64 in JSON.
GRPCURL_UPLOAD = r"""
{ printf '{"metadata": {"post_id": %s, "filename": "%s", "size_bytes": %s}}\n' \
    "$POST_ID" "$(basename "$FILE")" "$(stat -c %s "$FILE")"
  split -b 262144 --filter='printf "{\"chunk\": \"%s\"}\n" "$(base64 -w0)"' "$FILE"
} | "$GRPCURL" -plaintext -H "authorization: Bearer $TOKEN" -d @ \
    "$TARGET" board.v1.BoardService/UploadAttachment
"""


def test_a_twenty_mib_photo_uploads_through_grpcurl(
    server: RunningServer, author: Member, photo_near_the_limit_file: Path
) -> None:
    post = author.client.create_post(0, "big", "through grpcurl")
    env = {
        **os.environ,
        "GRPCURL": str(GRPCURL), "TARGET": server.target, "TOKEN": author.client.token or "",
        "POST_ID": str(post.id), "FILE": str(photo_near_the_limit_file),
    }  # fmt: skip
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", GRPCURL_UPLOAD],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"filename": "near-the-limit.png"' in done.stdout
    assert f'"size_bytes": "{photo_near_the_limit_file.stat().st_size}"' in done.stdout
    (added,) = author.client.list_attachments(post.id)
    with server.client(timeout=GENEROUS) as reader:
        assert reader.get_attachment_content(added.id).data == photo_near_the_limit_file.read_bytes()
