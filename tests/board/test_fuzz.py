"""No INTERNAL or UNKNOWN from client input, ever: property-based fuzzing of EVERY board.v1.BoardService RPC
against a real server (SQLite and PostgreSQL), with hypothesis.

Two kinds of input:

- **typed requests**, built from each request's descriptor: every field drawn at random (strings with NULs,
  huge strings, emoji, markup and SQL; extreme and real ids; NaN and infinities; unknown enum values; random
  update masks; valid, mutated, foreign and forged page tokens; random and near-valid filters and orders;
  image bytes and garbage), sent as the caller (a signed-in user, an admin, nobody, or a garbage token);
- **raw bytes** sent through a raw unary call: random bytes, valid requests mutated (bit flips, cuts,
  splices), and hand-encoded fields with invalid UTF-8 in string fields or the wrong wire type.

A client-streaming RPC (UploadAttachment) gets the drawn message first; a typed one is followed by a chunk of
a real image, so that a valid metadata message leads to a stored upload. The server runs with every limit
at its default.

Every answer must carry a documented code (``DOCUMENTED``; UNIMPLEMENTED only for an RPC in ``NOT_BUILT``,
empty now: every RPC of the contract is served), an error message of bounded length that does not echo a long
input back, and bounded trailers; after each RPC's run the server still answers Health.Check and GetPost.

``BOARD_FUZZ_EXAMPLES`` sets the examples per RPC and kind of input (default 100; hypothesis' own example
database is off, so that runs leave no files). At the end of the module the cases and the codes seen are
printed (``-s``).
"""

from __future__ import annotations

import base64
import io
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from clients.board import BoardClient
from clients.gen.board.v1 import board_pb2
from tests.board.conftest import (
    BOARD_SERVER,
    NOT_BUILT,
    PASSWORD,
    Backend,
    RunningServer,
    shipped_limits,
    sign_up,
    start_board_server,
)
from tests.support import Processes

SERVICE = board_pb2.DESCRIPTOR.services_by_name["BoardService"]
METHODS: dict[str, MethodDescriptor] = {m.name: m for m in SERVICE.methods}
Code = grpc.StatusCode
DOCUMENTED = frozenset(
    {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.FAILED_PRECONDITION,
        Code.RESOURCE_EXHAUSTED,
        Code.ABORTED,  # a stale etag on an update or delete
    }
)
MESSAGE_LIMIT = 2048  # characters of an error message
TRAILER_LIMIT = 8192  # bytes of all trailing metadata together
ECHO_PREFIX = 64  # no input longer than this may come back whole in a message (its first 64 characters)
EXAMPLES = int(os.environ.get("BOARD_FUZZ_EXAMPLES", "100"))
GENEROUS = 60.0  # a deadline that only a hung call reaches
REPEATED_ID = "8d5f2b1e-3c4a-4f6e-9a0b-1c2d3e4f5a6b"  # one request_id for many creates: repeats and clashes

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# --- the world the fuzzer calls into -----------------------------------------------------------------------


@dataclass
class World:
    """A server with real rows to aim at: who may call, which ids exist, which tokens were issued."""

    server: RunningServer
    backend: str
    channel: grpc.Channel
    tokens: dict[str, str]  # caller kind → access token
    ids: dict[str, list[int]]  # kind (users, posts, ...) → ids that exist
    victims: dict[str, list[int]]  # kind → ids the fuzzer may delete
    page_tokens: list[str]
    image: bytes
    probe_post: int
    caller_email: str = ""
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (RPC, code) → cases
    raw_codes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def metadata(self, who: str) -> tuple[tuple[str, str], ...]:
        if who == "nobody":
            return ()
        if who == "garbage":
            return (("authorization", "Bearer " + "x" * 43),)
        if who == "malformed":
            return (("authorization", "Basic dXNlcjpwYXNzd29yZA=="),)
        if who == "oversized":
            return (("authorization", "Bearer " + "y" * 6_000),)
        return (("authorization", f"Bearer {self.tokens[who]}"),)


def jpeg(size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (0, 90, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


JPEG = jpeg()


def signed_up(target: str, name: str) -> tuple[str, board_pb2.User, str]:
    """A new user signed in: (email, user, token)."""
    member = sign_up(target, name, timeout=GENEROUS)
    member.client.close()
    assert member.client.token is not None
    return member.email, member.user, member.client.token


def grant_admin(database_url: str, email: str, workdir: Path) -> None:
    import subprocess

    done = subprocess.run(
        [str(BOARD_SERVER), "admin", "grant", email, "--database-url", database_url],
        capture_output=True, text=True, timeout=120, check=False, cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def build_world(server: RunningServer, backend: Backend) -> World:
    """Users (caller, other, admin, victims), their posts, comments, attachments, and issued page tokens."""
    caller_email, caller, caller_token = signed_up(server.target, "Caller")
    _, other, other_token = signed_up(server.target, "Other")
    admin_email, admin, admin_token = signed_up(server.target, "Admin")
    grant_admin(server.database_url, admin_email, backend.workdir)
    image = jpeg()
    ids: dict[str, list[int]] = {"users": [caller.id, other.id, admin.id], "posts": [], "comments": []}
    ids["attachments"] = []
    victims: dict[str, list[int]] = {"users": [], "posts": [], "comments": [], "attachments": []}
    page_tokens: list[str] = []
    with (
        BoardClient(server.target, timeout=GENEROUS, token=caller_token) as mine,
        BoardClient(server.target, timeout=GENEROUS, token=other_token) as theirs,
    ):
        for client, author in ((mine, caller), (theirs, other)):
            for i in range(3):
                post = client.create_post(author.id, f"post {i} [/x] <b>", "content " * 10)
                comment = client.create_comment(post.id, author.id, "a comment")
                client.create_comment(post.id, author.id, "another")
                attachment = client.add_attachment(post.id, "a.jpg", image)
                client.add_attachment(post.id, "b.jpg", image)
                target = ids if i == 0 else victims
                target["posts"].append(post.id)
                target["comments"].append(comment.id)
                target["attachments"].append(attachment.id)
        for _ in range(4):
            victims["users"].append(signed_up(server.target, "Victim")[1].id)
        post_id = ids["posts"][0]
        page_tokens += [
            mine.list_users(page_size=1).next_page_token,
            mine.list_posts(page_size=1).next_page_token,
            mine.list_posts(user_id=caller.id, page_size=1).next_page_token,
            mine.list_posts(page_size=1, order_by="create_time desc").next_page_token,
            mine.list_comments(post_id, page_size=1).next_page_token,
            mine.list_attachments_page(post_id, page_size=1).next_page_token,
        ]
    assert all(page_tokens), page_tokens
    channel = grpc.insecure_channel(
        server.target,
        options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
    )
    return World(
        server,
        backend.name,
        channel,
        {"caller": caller_token, "other": other_token, "admin": admin_token},
        ids,
        victims,
        page_tokens,
        image,
        ids["posts"][0],
        caller_email,
    )


@pytest.fixture(scope="module")
def world(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    processes = Processes(tmp_path_factory.mktemp("fuzz-logs"))
    try:
        server = start_board_server(
            processes, backend.new_database_url(), backend.workdir,
            # The limits as shipped: a limit reached is RESOURCE_EXHAUSTED, never INTERNAL.
            extra=("--auth", "on", "--processes", "1", "--metrics-address", "none", *shipped_limits()),
        )  # fmt: skip
        built = build_world(server, backend)
        yield built
        built.channel.close()
        report(built)
    finally:
        processes.stop_all()


def report(world: World) -> None:
    """Print the cases and the codes seen (shown with ``pytest -s``)."""
    for title, codes in (("typed requests", world.codes), ("raw bytes", world.raw_codes)):
        total = Counter[str]()
        for (_, code), count in codes.items():
            total[code] += count
        cases = sum(total.values())
        print(f"\nfuzz [{world.backend}] {title}: {cases} cases; codes {dict(total.most_common())}")
    per_rpc: dict[str, Counter[str]] = {}
    for (rpc, code), count in world.codes.items():
        per_rpc.setdefault(rpc, Counter())[code] += count
    for rpc, seen in sorted(per_rpc.items()):
        print(f"  {rpc}: {dict(seen.most_common())}")


# --- strategies --------------------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
HUGE = "x" * 100_000
ODD_STRINGS = (
    "", " ", "\t\n", "\x00", "a\x00b", "\x00" * 300, "é" * 201, "💥" * 300, "[/x]", "[bold]hi[/bold]",
    "<script>alert(1)</script>", "' OR 1=1 --", "%s%s%n", "{}", "\\", "\u202egnp.exe", "\ufeff", "\u0085",
    "a" * 255, "a" * 256, "b" * 10_001, HUGE, "z" * 1_000_000,
)  # fmt: skip
EMAILS = ("a@b.co", "A@B.CO", "x@example.org", "no-at-sign", "@", "a@b", "a@b.c\x00", "a" * 250 + "@b.co")
FILTERS = (
    "label.dog", "label.dog >= 0.2 AND NOT label.car", "(label.cat OR label.dog) AND user_id = 3",
    'create_time > "2026-01-01T00:00:00Z"', 'label = "dog"', "label.dog > 0.3",
    "user_id = 9223372036854775808", "user_id = -1", "label.dog > 1e309", "label.dog > NaN",
    'create_time > "not a time"', "stale", 'status = "FAILED"', "post_id = 3",
    'model.arch = "deeplabv3_resnet101"', "(" * 5_000 + "label.dog" + ")" * 5000,
    "NOT " * 5_000 + "label.dog", "label." + "d" * 1_000, " AND ".join(["label.dog"] * 2_000), "label.dog >",
    "\x00", "label.\x00", 'title = "\x00"', "))((", "OR", "label.dog = = 1", "user_id: 3", "label.*",
    'create_time > "0001-01-01T00:00:00+14:00"', 'create_time < "9999-12-31T23:59:59-14:00"',
    "label.dog > 1e308", "user_id = 99999999999999999999", 'create_time > "2026-01-01"',
)  # fmt: skip
ORDERS = (
    "id", "id desc", "create_time desc", "create_time asc", "label.dog desc", "label.dog", "title",
    "create_time desc, id", "create_time sideways", "label." + "x" * 1_000, "\x00", ",", "id," * 500,
)  # fmt: skip
CONTENT_TYPES = (
    "",
    "image/jpeg",
    "image/JPG; q=1",
    "image/png",
    "image/webp",
    "text/html",
    "\x00",
    "a" * 300,
)
MASK_PATHS = (
    "title", "content", "name", "email", "password", "id", "user_id", "post_id", "create_time",
    "update_time", "content.x", "", "*", "title.title", "TITLE",
)  # fmt: skip
IMAGE_BYTES = (
    JPEG,
    b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"BM", b"II*\x00",
    b"\xff\xd8\xff" + b"\x00" * 1_000, b"\x89PNG\r\n\x1a\n" + b"\xff" * 100, b"\x00" * 21 * 1024 * 1024,
)  # fmt: skip

EDGE_INT32 = (0, 1, -1, 15, 16, 1_000, 1_001, 2_048, 2_049, INT32_MAX, INT32_MIN)
EDGE_DOUBLES = (0.0, -0.0, 1.0, 0.01, 1e-300, 1.0000001, -1.0)
_KINDS = {"User": "users", "Post": "posts", "Comment": "comments", "Attachment": "attachments"}


def _kind(message: str, field: str) -> str | None:
    """Which kind of row an id field names: ``user_id`` → users; ``id`` of GetPostRequest → posts."""
    if field.endswith("_id"):
        return _KINDS.get(field[: -len("_id")].capitalize())
    if field != "id":
        return None
    for word, kind in _KINDS.items():
        if word in message:
            return kind
    return None


def destroys_rows(method: str) -> bool:
    """Whether ``method`` can take a row away from the later tests: a delete, or a user update (a changed
    password ends the user's sessions)."""
    return method.startswith("Delete") or method == "UpdateUser"


def ids(world: World, message: str, field: str, method: str) -> st.SearchStrategy[int]:
    extremes = st.sampled_from([0, 1, -1, 2**31, 2**53 + 1, INT64_MAX, INT64_MIN, 10**12])
    base = st.one_of(extremes, st.integers(INT64_MIN, INT64_MAX), st.integers(0, 1_000))
    kind = _kind(message, field)
    if kind is None:
        return base
    if destroys_rows(method) and field == "id":
        # Deletes and user updates aim at rows kept for that: the fixture rows must live for the next example.
        kept = frozenset(world.ids[kind])
        return st.one_of(base.filter(lambda i: i not in kept), st.sampled_from(world.victims[kind]))
    return st.one_of(base, st.sampled_from(world.ids[kind] + world.victims[kind]))


def strings(world: World, name: str) -> st.SearchStrategy[str]:
    base = st.one_of(st.text(max_size=80), st.sampled_from(ODD_STRINGS))
    special: dict[str, st.SearchStrategy[str]] = {
        "page_token": st.one_of(st.sampled_from(world.page_tokens), page_token_mutants(world)),
        "filter": st.sampled_from(FILTERS),
        "order_by": st.sampled_from(ORDERS),
        "email": st.one_of(st.sampled_from(EMAILS), st.emails().map(str)),
        "content_type": st.sampled_from(CONTENT_TYPES),
        "request_id": st.one_of(st.uuids(version=4).map(str), st.uuids().map(str), st.just(REPEATED_ID)),
        "etag": st.sampled_from(("v1", "v2", "1", "0" * 24, 'W/"x"')),
    }
    plausible = st.sampled_from(("correct horse battery", "Ada", "dog", "photo.jpg"))
    return st.one_of(base, special.get(name, plausible))


def page_token_mutants(world: World) -> st.SearchStrategy[str]:
    """Issued tokens changed a little: a character flipped, cut, grown, re-padded, re-encoded."""

    def mutate(token: str, how: int, at: int) -> str:
        i = at % len(token)
        if how == 0:
            return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        if how == 1:
            return token[:i]
        if how == 2:
            return token + token
        if how == 3:
            return token + "=="
        if how == 4:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            return base64.urlsafe_b64encode(raw[:17] + raw[17:].replace(b"1", b"9")).decode()
        return base64.b64encode(token.encode()).decode()

    return st.builds(mutate, st.sampled_from(world.page_tokens), st.integers(0, 5), st.integers(0, 10_000))


def scalar(world: World, message: Descriptor, f: FieldDescriptor, method: str) -> st.SearchStrategy[Any]:
    kind = f.type
    int64 = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64)
    int32 = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32)
    if kind in int64:
        return ids(world, message.name, f.name, method)
    if kind == FieldDescriptor.TYPE_STRING:
        return strings(world, f.name)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert f.enum_type is not None
        known = st.sampled_from([v.number for v in f.enum_type.values])
        return st.one_of(known, st.integers(INT32_MIN, INT32_MAX))
    others: dict[int, st.SearchStrategy[Any]] = {
        **dict.fromkeys(int32, st.one_of(st.sampled_from(EDGE_INT32), st.integers(INT32_MIN, INT32_MAX))),
        FieldDescriptor.TYPE_DOUBLE: st.one_of(st.floats(), st.sampled_from(EDGE_DOUBLES)),
        FieldDescriptor.TYPE_BOOL: st.booleans(),
        FieldDescriptor.TYPE_BYTES: st.one_of(
            st.binary(max_size=200), st.sampled_from((*IMAGE_BYTES, world.image))
        ),
    }
    return others[kind]


def masks() -> st.SearchStrategy[Message]:
    from google.protobuf import field_mask_pb2

    paths = st.one_of(
        st.lists(st.one_of(st.sampled_from(MASK_PATHS), st.text(max_size=20)), max_size=6),
        st.lists(st.text(min_size=1, max_size=200), min_size=50, max_size=300),  # many unknown paths
    )
    return paths.map(lambda p: field_mask_pb2.FieldMask(paths=p))


def messages(world: World, descriptor: Descriptor, method: str, depth: int = 0) -> st.SearchStrategy[Message]:
    """A message of ``descriptor`` with any subset of its fields set to drawn values."""
    cls = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            assert f.message_type is not None
            name = f.message_type.full_name
            if name == "google.protobuf.FieldMask":
                value: st.SearchStrategy[Any] = masks()
            elif name == "google.protobuf.Timestamp" or depth >= 2:
                continue  # output-only timestamps; deeper nesting adds nothing the server reads
            else:
                value = messages(world, f.message_type, method, depth + 1)
        else:
            value = scalar(world, descriptor, f, method)
        fields[f.name] = st.lists(value, max_size=4) if f.is_repeated else value

    def build(values: dict[str, Any]) -> Message:
        built = cls()
        for name, value in values.items():
            if isinstance(value, Message):
                getattr(built, name).CopyFrom(value)
            elif isinstance(value, list):
                repeated = getattr(built, name)
                for item in value:
                    repeated.add().CopyFrom(item) if isinstance(item, Message) else repeated.append(item)
            else:
                setattr(built, name, value)
        return built

    return st.fixed_dictionaries({}, optional=fields).map(build)


def templates(world: World) -> dict[str, Message]:
    """A valid request of every RPC, aimed at the fixture rows (deletes at the victims): the fuzzer changes
    some of its fields, so that the calls get past validation into the use cases."""
    from google.protobuf import field_mask_pb2

    user, post, comment, attachment = (world.ids[k][0] for k in ("users", "posts", "comments", "attachments"))
    victim = {k: v[0] for k, v in world.victims.items()}
    b = board_pb2

    def mask(*paths: str) -> field_mask_pb2.FieldMask:
        return field_mask_pb2.FieldMask(paths=list(paths))

    made: dict[str, Message] = {
        "CreateUser": b.CreateUserRequest(name="Ada", email="ada@example.org", password="correct horse"),
        "GetUser": b.GetUserRequest(id=user),
        "ListUsers": b.ListUsersRequest(page_size=2),
        "UpdateUser": b.UpdateUserRequest(
            user=b.User(id=victim["users"], name="Bo"), update_mask=mask("name")
        ),
        "DeleteUser": b.DeleteUserRequest(id=victim["users"]),
        "SignIn": b.SignInRequest(email=world.caller_email, password=PASSWORD),
        "SignOut": b.SignOutRequest(),
        "CreatePost": b.CreatePostRequest(user_id=user, title="t", content="c"),
        "GetPost": b.GetPostRequest(id=post),
        "ListPosts": b.ListPostsRequest(page_size=2, filter="label.dog", order_by="create_time desc"),
        "UpdatePost": b.UpdatePostRequest(post=b.Post(id=post, title="t"), update_mask=mask("title")),
        "DeletePost": b.DeletePostRequest(id=victim["posts"]),
        "CreateComment": b.CreateCommentRequest(post_id=post, user_id=user, content="c"),
        "GetComment": b.GetCommentRequest(id=comment),
        "ListComments": b.ListCommentsRequest(post_id=post, page_size=1),
        "UpdateComment": b.UpdateCommentRequest(
            comment=b.Comment(id=comment, content="c"), update_mask=mask("content")
        ),
        "DeleteComment": b.DeleteCommentRequest(id=victim["comments"]),
        "AddAttachment": b.AddAttachmentRequest(post_id=post, filename="f.jpg", data=JPEG),
        "UploadAttachment": b.UploadAttachmentRequest(
            metadata=b.UploadAttachmentMetadata(post_id=post, filename="f.jpg", size_bytes=len(JPEG))
        ),
        "GetAttachment": b.GetAttachmentRequest(id=attachment),
        "ListAttachments": b.ListAttachmentsRequest(post_id=post, page_size=1),
        "GetAttachmentContent": b.GetAttachmentContentRequest(id=attachment),
        "GetAttachmentMask": b.GetAttachmentMaskRequest(id=attachment),
        "DeleteAttachment": b.DeleteAttachmentRequest(id=victim["attachments"]),
        "WatchAttachment": b.WatchAttachmentRequest(id=attachment),
        "RetryAttachment": b.RetryAttachmentRequest(id=attachment),
        "GetAttachmentPreview": b.GetAttachmentPreviewRequest(id=attachment, max_size=64, overlay=False),
        "RetagAttachments": b.RetagAttachmentsRequest(filter="stale"),
    }
    assert set(made) == set(METHODS), set(METHODS) ^ set(made)
    return made


def requests(world: World, method: str) -> st.SearchStrategy[Message]:
    """Random requests of ``method``, and its valid template with some fields replaced by random ones."""
    template = templates(world)[method]
    random = messages(world, METHODS[method].input_type, method)

    def merged(changes: Message) -> Message:
        request = type(template)()
        request.CopyFrom(template)
        request.MergeFrom(changes)
        return request

    return st.one_of(random, random.map(merged))


# --- calling and checking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    trailers: Sequence[tuple[str, str | bytes]]


def call(
    world: World,
    method: str,
    request: bytes,
    metadata: tuple[tuple[str, str], ...],
    more: Sequence[bytes] = (),
) -> Answer:
    """Send serialized ``request`` to ``method`` (a client stream: then the messages of ``more``); the status
    it ends with (a server stream: after its first item)."""
    path = f"/{SERVICE.full_name}/{method}"
    identity: Callable[[bytes], bytes] = lambda b: b  # noqa: E731 - bytes in, bytes out
    try:
        if METHODS[method].client_streaming:
            upload = world.channel.stream_unary(path, identity, identity)
            upload(iter([request, *more]), timeout=GENEROUS, metadata=metadata)
            return Answer(Code.OK, "", ())
        if METHODS[method].server_streaming:
            stream = world.channel.unary_stream(path, identity, identity)(
                request, timeout=GENEROUS, metadata=metadata
            )
            try:
                next(iter(stream))
            except StopIteration:
                pass
            finally:
                stream.cancel()  # type: ignore[no-untyped-call]
            return Answer(Code.OK, "", ())
        if METHODS[method].client_streaming:  # the request as the stream's only message
            world.channel.stream_unary(path, identity, identity)(
                iter([request]), timeout=GENEROUS, metadata=metadata
            )
            return Answer(Code.OK, "", ())
        world.channel.unary_unary(path, identity, identity)(request, timeout=GENEROUS, metadata=metadata)
        return Answer(Code.OK, "", ())
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        if exc.code() == Code.CANCELLED and METHODS[method].server_streaming:
            return Answer(Code.OK, "", ())  # cancelled by us after the first item
        return Answer(exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ()))


def long_inputs(request: Message) -> list[str]:
    """Every string longer than ECHO_PREFIX anywhere in ``request`` (what must never come back whole)."""
    found: list[str] = []
    for f, value in request.ListFields():
        values = value if f.is_repeated else [value]
        for item in values:
            if isinstance(item, Message):
                found += long_inputs(item)
            elif isinstance(item, str) and len(item) > ECHO_PREFIX:
                found.append(item)
    return found


def check(answer: Answer, method: str, echoes: Sequence[str]) -> None:
    allowed = DOCUMENTED | ({Code.UNIMPLEMENTED} if method in NOT_BUILT else set())
    assert answer.code in allowed, f"{method} answered {answer.code.name}: {answer.details[:300]!r}"
    assert len(answer.details) <= MESSAGE_LIMIT, f"{method}: a {len(answer.details)}-character message"
    for text in echoes:
        assert text[:ECHO_PREFIX] not in answer.details, (
            f"{method} echoed a long input: {answer.details[:200]!r}"
        )
    size = sum(len(k) + len(v) for k, v in answer.trailers)
    assert size <= TRAILER_LIMIT, f"{method}: {size} bytes of trailers"


def assert_still_serving(world: World) -> None:
    assert world.server.proc.poll() is None, world.server.log()[-3000:]
    health = health_pb2_grpc.HealthStub(world.channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=GENEROUS).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    with BoardClient(world.server.target, timeout=GENEROUS) as client:
        assert client.get_post(world.probe_post).id == world.probe_post


# Mostly a signed-in caller (so that calls get past authentication), sometimes an admin, someone else, nobody,
# or a token that is wrong in one way or another.
CALLERS = st.sampled_from(
    ["caller"] * 6 + ["admin"] * 2 + ["other", "nobody", "garbage", "malformed", "oversized"]
)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_typed_requests_get_only_documented_codes(world: World, method: str) -> None:
    callers = CALLERS if method != "SignOut" else st.sampled_from(["nobody", "garbage"])

    # A chunk of a real image after a client stream's drawn message.
    more = [board_pb2.UploadAttachmentRequest(chunk=JPEG).SerializeToString()]

    @FUZZ
    @given(request=requests(world, method), who=callers)
    def fuzz(request: Message, who: str) -> None:
        answer = call(world, method, request.SerializeToString(), world.metadata(who), more)
        world.codes[(method, answer.code.name)] += 1
        check(answer, method, long_inputs(request))

    fuzz()
    assert_still_serving(world)


# --- raw bytes ---------------------------------------------------------------------------------------------

INVALID_UTF8 = (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"abc\xe2\x82", b"\x80" * 50)


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def raw_field(number: int, wire: int, payload: bytes) -> bytes:
    tag = varint(number << 3 | wire)
    if wire == 2:
        return tag + varint(len(payload)) + payload
    return tag + payload


def hand_encoded(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Fields of ``descriptor`` encoded by hand: invalid UTF-8 in strings, wrong wire types, odd lengths."""
    numbers = [f.number for f in descriptor.fields] + [1, 2, 99, 536_870_911]
    strings_ = [f.number for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING]
    bad_utf8 = (
        st.builds(lambda n, p: raw_field(n, 2, p), st.sampled_from(strings_), st.sampled_from(INVALID_UTF8))
        if strings_
        else st.just(b"")
    )
    wrong_wire = st.builds(
        raw_field, st.sampled_from(numbers), st.sampled_from(range(8)), st.binary(max_size=12)
    )
    lengths = st.sampled_from([0, 1, 2**31, 2**32 + 1, 2**63, 2**64 - 1])
    lying_length = st.builds(
        lambda n, length, p: varint(n << 3 | 2) + varint(length) + p,
        st.sampled_from(numbers), lengths, st.binary(max_size=8),
    )  # fmt: skip
    overlong_varint = st.builds(lambda n: varint(n << 3) + b"\xff" * 11, st.sampled_from(numbers))
    return st.lists(
        st.one_of(bad_utf8, wrong_wire, lying_length, overlong_varint), min_size=1, max_size=5
    ).map(b"".join)


def mutants(world: World, method: str) -> st.SearchStrategy[bytes]:
    """A typed request serialized, then bit-flipped, cut or spliced."""

    def mutate(data: bytes, how: int, at: int, noise: bytes) -> bytes:
        if not data:
            return noise
        i = at % len(data)
        if how == 0:
            return data[:i] + bytes([data[i] ^ (1 << (at % 8))]) + data[i + 1 :]
        if how == 1:
            return data[:i]
        if how == 2:
            return data[:i] + noise + data[i:]
        return data + noise

    typed = requests(world, method).map(lambda m: m.SerializeToString())
    return st.builds(mutate, typed, st.integers(0, 3), st.integers(0, 1 << 20), st.binary(max_size=16))


def spares_kept_rows(world: World, method: str) -> Callable[[bytes], bool]:
    """Whether raw bytes leave the rows the later tests need alone: a delete or a user update that decodes to
    the id of a kept row (``ids``: the typed requests never aim one there) is not sent. A bit flipped in a
    victim's id, or random bytes, can spell the probe post's id, and its owner is the usual caller."""
    if not destroys_rows(method):
        return lambda payload: True
    cls = message_factory.GetMessageClass(METHODS[method].input_type)

    def aims_at_kept(message: Message) -> bool:
        for described, value in message.ListFields():
            if described.message_type is not None and not described.is_repeated:
                if aims_at_kept(value):
                    return True
            elif described.name == "id":
                kind = _kind(message.DESCRIPTOR.name, "id")
                if kind is not None and value in world.ids[kind]:
                    return True
        return False

    def spares(payload: bytes) -> bool:
        try:
            request = cls.FromString(payload)
        except DecodeError:
            return True  # the server refuses it before any use case runs
        return not aims_at_kept(request)

    return spares


@pytest.mark.parametrize("method", sorted(METHODS))
def test_raw_request_bytes_get_only_documented_codes(world: World, method: str) -> None:
    payloads = st.one_of(
        st.binary(max_size=300), hand_encoded(METHODS[method].input_type), mutants(world, method)
    )
    spares = spares_kept_rows(world, method)
    callers = st.sampled_from(["caller", "nobody"]) if method != "SignOut" else st.just("nobody")

    @FUZZ
    @given(payload=payloads, who=callers)
    def fuzz(payload: bytes, who: str) -> None:
        assume(spares(payload))
        answer = call(world, method, payload, world.metadata(who))
        world.raw_codes[(method, answer.code.name)] += 1
        check(answer, method, ())

    fuzz()
    assert_still_serving(world)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_invalid_utf8_in_every_string_field_is_invalid_argument(world: World, method: str) -> None:
    descriptor = METHODS[method].input_type
    for f in descriptor.fields:
        if f.type != FieldDescriptor.TYPE_STRING:
            continue
        answer = call(world, method, raw_field(f.number, 2, b"ok\xff\xfe"), world.metadata("caller"))
        assert answer.code == Code.INVALID_ARGUMENT, (method, f.name, answer)
        assert "UTF-8" in answer.details, answer.details


LONG_FILTERS = (
    "a" * 200, "label." + "x" * 300, 'create_time > "' + "9" * 500 + '"', "label.dog > 1" + "0" * 500,
    "id = " + "1" * 500, 'model.arch = "' + "m" * 500 + '"', "label.dog " + "=" * 300, "((" + "b" * 400,
    'status = "' + "S" * 300 + '"', "post_id = " + "7" * 600,
    'create_time > "2026-01-01T00:00:00.' + "1" * 500 + 'Z"',
)  # fmt: skip
LONG_ORDERS = ("x" * 150, "id " + "d" * 150, "label." + "q" * 180, "create_time " + "z" * 180)


@pytest.mark.parametrize("method", ["ListPosts", "RetagAttachments"])
def test_long_filters_and_orders_are_not_echoed(world: World, method: str) -> None:
    """The inputs the fuzzer found echoed whole (filter errors quoting an unknown field) and their kin."""
    requests_: list[Message] = []
    if method == "ListPosts":
        requests_ += [board_pb2.ListPostsRequest(filter=f) for f in LONG_FILTERS]
        requests_ += [board_pb2.ListPostsRequest(order_by=o) for o in LONG_ORDERS]
    else:
        requests_ += [board_pb2.RetagAttachmentsRequest(filter=f) for f in LONG_FILTERS]
    for request in requests_:
        answer = call(world, method, request.SerializeToString(), world.metadata("admin"))
        check(answer, method, long_inputs(request))
        for text in long_inputs(request):
            assert max(len(run) for run in _runs(answer.details)) <= 41, (text[:50], answer.details)


def _runs(details: str) -> list[str]:
    """Runs of one repeated character in ``details`` (how a long repetitive input would show if echoed)."""
    runs, start = [""], 0
    for i in range(1, len(details) + 1):
        if i == len(details) or details[i] != details[start]:
            runs.append(details[start:i])
            start = i
    return runs


def test_every_rpc_is_served(world: World) -> None:
    """UNIMPLEMENTED is allowed only for NOT_BUILT: every other RPC answers an empty request for real."""
    for method in sorted(set(METHODS) - NOT_BUILT):
        answer = call(world, method, b"", world.metadata("caller"))
        assert answer.code != Code.UNIMPLEMENTED, method
    assert_still_serving(world)
