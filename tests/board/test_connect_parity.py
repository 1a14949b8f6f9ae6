"""Every board.v1 method answers the same over Connect (JSON and binary) and gRPC-Web on the HTTP listener as
over gRPC: for the same request from the same caller, the same code, message and google.rpc details (a table
over every RPC of the service, checked against the proto's list), and the same answer where one succeeds."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.protobuf import field_mask_pb2
from grpc_status import rpc_status
from PIL import Image

from clients.gen.board.v1 import board_pb2, board_pb2_grpc
from clients.gen.board.v1.board_connect import BoardServiceClientSync
from tests.board.conftest import Member, RunningServer, new_email, start_board_server, tiny_png
from tests.support import Processes

SERVICE = board_pb2.DESCRIPTOR.services_by_name["BoardService"]
MISSING = 10**12
# (code, message, [(detail type, detail bytes)]) or ("OK", serialized answer, [])
Outcome = tuple[str, str | bytes, list[tuple[str, bytes]]]


@dataclass
class World:
    """A board with an owner (a post, a comment, a PENDING attachment) and another member."""

    server: RunningServer
    owner: Member
    other: Member
    post: board_pb2.Post
    comment: board_pb2.Comment
    attachment: board_pb2.Attachment


@pytest.fixture(scope="module")
def world(module_processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("parity")
    # No tagging: attachments stay PENDING, so mask and retry answer FAILED_PRECONDITION every time.
    server = start_board_server(module_processes, f"sqlite:///{workdir / 'board.db'}", workdir)
    assert server.web_url is not None, server.log()
    owner, other = server.sign_up("Owner"), server.sign_up("Other")
    post = owner.client.create_post(0, "parity", "the same answer both ways")
    comment = owner.client.create_comment(post.id, 0, "a comment")
    attachment = owner.client.add_attachment(post.id, "red.png", tiny_png())
    yield World(server, owner, other, post, comment, attachment)
    owner.client.close()
    other.client.close()


# One row per RPC: (method, who calls: None | "owner" | "other", the request).
def rows(w: World) -> list[tuple[str, str | None, Any]]:
    b = board_pb2
    mask = field_mask_pb2.FieldMask
    not_an_image = b"GIF89a but not really an image at all"
    return [
        ("CreateUser", None, b.CreateUserRequest(name="", email="not-an-email", password="short")),
        ("GetUser", None, b.GetUserRequest(id=0)),
        ("ListUsers", "owner", b.ListUsersRequest(page_token="not a token")),
        ("UpdateUser", "other",
         b.UpdateUserRequest(user=b.User(id=w.owner.id, name="x"), update_mask=mask(paths=["name"]))),
        ("DeleteUser", "other", b.DeleteUserRequest(id=w.owner.id)),
        ("SignIn", None, b.SignInRequest(email=new_email("nobody"), password="wrong password")),
        ("SignOut", None, b.SignOutRequest()),
        ("CreatePost", "owner", b.CreatePostRequest(title="", content="")),
        ("GetPost", None, b.GetPostRequest(id=MISSING)),
        ("ListPosts", None, b.ListPostsRequest(filter="label.dog >=")),
        ("UpdatePost", "other",
         b.UpdatePostRequest(post=b.Post(id=w.post.id, title="x"), update_mask=mask(paths=["title"]))),
        ("DeletePost", "owner", b.DeletePostRequest(id=MISSING)),
        ("CreateComment", "owner", b.CreateCommentRequest(post_id=MISSING, content="hello")),
        ("GetComment", None, b.GetCommentRequest(id=MISSING)),
        ("ListComments", None, b.ListCommentsRequest(post_id=MISSING)),
        ("UpdateComment", "owner",
         b.UpdateCommentRequest(comment=b.Comment(id=w.comment.id, content="x"))),
        ("DeleteComment", None, b.DeleteCommentRequest(id=w.comment.id)),
        ("AddAttachment", "owner",
         b.AddAttachmentRequest(post_id=w.post.id, filename="x.gif", data=not_an_image)),
        ("UploadAttachment", "owner",
         [b.UploadAttachmentRequest(metadata=b.UploadAttachmentMetadata(post_id=MISSING, filename="x.png"))]),
        ("GetAttachment", None, b.GetAttachmentRequest(id=MISSING)),
        ("ListAttachments", None, b.ListAttachmentsRequest(post_id=MISSING)),
        ("GetAttachmentContent", None, b.GetAttachmentContentRequest(id=MISSING)),
        ("GetAttachmentMask", None, b.GetAttachmentMaskRequest(id=w.attachment.id)),
        ("DeleteAttachment", "other", b.DeleteAttachmentRequest(id=w.attachment.id)),
        ("WatchAttachment", None, b.WatchAttachmentRequest(id=MISSING)),
        ("RetryAttachment", "owner", b.RetryAttachmentRequest(id=w.attachment.id)),
        ("GetAttachmentPreview", None,
         b.GetAttachmentPreviewRequest(id=w.attachment.id, max_size=5)),
        ("RetagAttachments", "other", b.RetagAttachmentsRequest(filter="stale")),
    ]  # fmt: skip


# Calls that succeed, answered byte for byte the same.
def successes(w: World) -> list[tuple[str, str | None, Any]]:
    b = board_pb2
    return [
        ("GetPost", None, b.GetPostRequest(id=w.post.id)),
        ("GetUser", "owner", b.GetUserRequest(id=0)),
        ("ListComments", None, b.ListCommentsRequest(post_id=w.post.id)),
        ("GetAttachment", None, b.GetAttachmentRequest(id=w.attachment.id)),
        ("GetAttachmentContent", None, b.GetAttachmentContentRequest(id=w.attachment.id)),
    ]


def token_of(w: World, who: str | None) -> str | None:
    member = {"owner": w.owner, "other": w.other}.get(who or "")
    return member.client.token if member is not None else None


def _streaming(name: str) -> tuple[bool, bool]:
    method = SERVICE.methods_by_name[name]
    return method.client_streaming, method.server_streaming


def over_grpc(w: World, name: str, token: str | None, request: Any) -> Outcome:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    client_streaming, server_streaming = _streaming(name)
    with grpc.insecure_channel(w.server.target) as channel:
        call = getattr(board_pb2_grpc.BoardServiceStub(channel), name)  # type: ignore[no-untyped-call]
        try:
            if server_streaming:
                answer: Any = [m.SerializeToString() for m in call(request, metadata=metadata, timeout=20)]
            else:
                sent = iter(request) if client_streaming else request
                answer = call(sent, metadata=metadata, timeout=20).SerializeToString()
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            status = rpc_status.from_call(exc)
            details = [(d.type_url.rsplit("/", 1)[-1], d.value) for d in status.details] if status else []
            return exc.code().name, exc.details() or "", details
    return "OK", b"".join(answer) if isinstance(answer, list) else answer, []


def over_connect(
    w: World, name: str, token: str | None, request: Any, client: BoardServiceClientSync
) -> Outcome:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    client_streaming, server_streaming = _streaming(name)
    call = getattr(client, "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_"))
    try:
        if server_streaming:
            answer: Any = b"".join(
                m.SerializeToString() for m in call(request, headers=headers, timeout_ms=20_000)
            )
        else:
            sent = iter(request) if client_streaming else request
            answer = call(sent, headers=headers, timeout_ms=20_000).SerializeToString()
    except ConnectError as exc:
        code = "CANCELLED" if exc.code.name == "CANCELED" else exc.code.name
        return code, exc.message, [(d.type_name, d.message_bytes) for d in exc.details]
    return "OK", answer, []


CLIENTS: dict[str, Callable[[str], BoardServiceClientSync]] = {
    "connect-json": lambda url: BoardServiceClientSync(url, codec=google_protobuf_json_codec()),
    "connect-proto": BoardServiceClientSync,
    "grpc-web": lambda url: BoardServiceClientSync(url, protocol=ProtocolType.GRPC_WEB),
}


def test_the_table_covers_every_rpc_of_the_service(world: World) -> None:
    assert [name for name, _, _ in rows(world)] == [m.name for m in SERVICE.methods]


@pytest.mark.parametrize("flavour", list(CLIENTS))
def test_every_rpc_answers_the_same_code_message_and_details_as_grpc(world: World, flavour: str) -> None:
    assert world.server.web_url is not None
    with CLIENTS[flavour](world.server.web_url) as client:
        differences = {}
        codes = set()
        for name, who, request in rows(world):
            token = token_of(world, who)
            expected = over_grpc(world, name, token, request)
            got = over_connect(world, name, token, request, client)
            codes.add(expected[0])
            if expected[0] == got[0] == "UNIMPLEMENTED":
                continue  # a method this server lacks: grpc.aio words that in its own way
            if got != expected:
                differences[name] = (expected, got)
    assert differences == {}
    # The table is worth its rows: it reaches the board's ordinary failures, not one code for all.
    assert {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "FAILED_PRECONDITION",
    } <= codes


@pytest.mark.parametrize("flavour", list(CLIENTS))
def test_successful_calls_answer_the_same_bytes(world: World, flavour: str) -> None:
    assert world.server.web_url is not None
    with CLIENTS[flavour](world.server.web_url) as client:
        for name, who, request in successes(world):
            token = token_of(world, who)
            assert over_connect(world, name, token, request, client) == over_grpc(world, name, token, request)


def test_a_streamed_watch_ends_with_the_attachments_state(world: World) -> None:
    """WatchAttachment over Connect's server streaming: the current state first (here PENDING, no tagger),
    and the stream stays open until the client's deadline."""
    assert world.server.web_url is not None
    with BoardServiceClientSync(world.server.web_url, codec=google_protobuf_json_codec()) as client:
        seen = []
        with pytest.raises(ConnectError) as ended:
            for item in client.watch_attachment(
                board_pb2.WatchAttachmentRequest(id=world.attachment.id), timeout_ms=1500
            ):
                seen.append(item.status)
    assert seen == [board_pb2.ATTACHMENT_STATUS_PENDING]
    assert ended.value.code.name == "DEADLINE_EXCEEDED"


def _photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_write_over_connect_is_seen_over_grpc(world: World) -> None:
    assert world.server.web_url is not None
    headers = {"authorization": f"Bearer {world.owner.client.token}"}
    with BoardServiceClientSync(world.server.web_url) as client:
        post = client.create_post(
            board_pb2.CreatePostRequest(title="from a browser", content="over Connect"), headers=headers
        )
        added = client.add_attachment(
            board_pb2.AddAttachmentRequest(post_id=post.id, filename="green.jpg", data=_photo()),
            headers=headers,
        )
    assert world.owner.client.get_post(post.id) == post
    assert world.owner.client.get_attachment(added.id).content_type == "image/jpeg"
    assert post.user_id == world.owner.id
