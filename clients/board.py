"""A small typed client for board.v1.BoardService: one method per RPC, deadlines, tokens, clear exceptions.

    with BoardClient("127.0.0.1:50051") as board:
        board.create_user("Ada", "ada@example.org", password="correct horse battery")
        board.sign_in("ada@example.org", "correct horse battery")   # later calls carry the token
        post = board.create_post(0, "Hello", "First post")            # 0: as the signed-in user
        for attachment in board.watch_attachment(7): ...

TLS is the default for any target off this machine (the system's roots, or ``root_certificates=`` PEM
bytes); a loopback target is plaintext. ``tls=False`` is plaintext anywhere (a trusted network, a TLS proxy
on the client's side), ``tls=True`` TLS even on loopback. Images go up with ``upload_attachment`` (chunks of
256 KiB over UploadAttachment; every request message of the board is at most 1 MiB).

Every failed call raises a BoardClientError subclass carrying the status code, the message and, for
INVALID_ARGUMENT, the field violations (field → description) sent by the server; RESOURCE_EXHAUSTED carries
the server's RetryInfo delay and QuotaFailure violations when it sent them.

Safe retries: every create carries a request_id (a fresh UUID4 unless the caller passes one, e.g. to retry a
create itself later), so the channel's retry policy (clients/service_config.json, shared with the Node
client) may retry it: UNAVAILABLE for every call, and DEADLINE_EXCEEDED answered by the server for creates,
at most 5 attempts with exponential backoff and gRPC's jitter, within the call's one deadline. Updates and
deletes take the ``etag`` of the version they mean (ABORTED, ``AbortedError``, when it changed since).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, field_mask_pb2

from clients.channels import open_channel
from clients.gen.board.v1 import board_pb2, board_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0
# Answers may carry a whole attachment (20 MiB by default on the server); requests stay under 1 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Bytes per UploadAttachment message: well under the board's 1 MiB per message, large enough to be cheap.
UPLOAD_CHUNK_BYTES = 256 * 1024
# An upload's deadline grows with its size: the call timeout plus this long per MiB (a slow link).
UPLOAD_SECONDS_PER_MIB = 2.0
# The retry policy of every channel (gRPC service config): which calls are retried, on which codes, how often.
SERVICE_CONFIG = (Path(__file__).resolve().parent / "service_config.json").read_text()

Response = TypeVar("Response")


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """A quota the call would have broken (google.rpc.QuotaFailure): whose (``user:7``) and what it allows."""

    subject: str
    description: str


class BoardClientError(Exception):
    """A call to the board failed; ``code`` is the gRPC status code."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
        quota_violations: Sequence[QuotaViolation] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.violations = list(violations)
        self.retry_after = retry_after
        self.quota_violations = list(quota_violations)


class InvalidArgumentError(BoardClientError):
    """The request was rejected; see ``violations``."""


class NotFoundError(BoardClientError):
    """A referenced user, post or comment does not exist."""


class AlreadyExistsError(BoardClientError):
    """The email is already taken (compared ignoring case)."""


class UnavailableError(BoardClientError):
    """The server could not be reached or is busy; the call may be retried."""


class DeadlineExceededError(BoardClientError):
    """The call did not finish within its timeout."""


class UnauthenticatedError(BoardClientError):
    """No access token where one is needed, or an unknown, expired or revoked one; or a failed sign-in."""


class PermissionDeniedError(BoardClientError):
    """Signed in, but not allowed (only the author or an admin may do this)."""


class ResourceExhaustedError(BoardClientError):
    """A limit was reached; ``retry_after`` (seconds) says when to try again, when the server said so, and
    ``quota_violations`` which of the user's quotas, when it was one."""


class FailedPreconditionError(BoardClientError):
    """The resource is not in the state the call needs (e.g. the mask of an attachment not yet TAGGED)."""


class AbortedError(BoardClientError):
    """The etag sent with an update or delete no longer matches: the resource changed since it was read, and
    nothing was changed. Read it again, then decide."""


_ERRORS: dict[grpc.StatusCode, type[BoardClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
}


def error_from_rpc(error: grpc.RpcError) -> BoardClientError:
    """Translate a failed call into the matching BoardClientError (with field violations if any)."""
    from google.rpc import error_details_pb2  # type: ignore[import-untyped]
    from grpc_status import rpc_status

    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    quotas: list[QuotaViolation] = []
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # details that do not match the code: keep the code and message
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                failure = error_details_pb2.QuotaFailure()
                detail.Unpack(failure)
                quotas.extend(QuotaViolation(v.subject, v.description) for v in failure.violations)
    return _ERRORS.get(code, BoardClientError)(code, message, violations, retry_after, quotas)


@dataclass
class BoardClient:
    """Client of one board server; use as a context manager or call ``close()``.

    ``token`` (an access token from ``sign_in``) goes with every call as ``authorization: Bearer``. The
    channel is TLS unless the target is loopback (``tls=None``, the default); ``tls=False`` forces plaintext,
    ``tls=True`` TLS; ``root_certificates`` (PEM) replace the system's roots. ``retries=False`` turns the
    retry policy (``SERVICE_CONFIG``) off.
    """

    target: str = DEFAULT_TARGET
    timeout: float = DEFAULT_TIMEOUT
    options: Sequence[tuple[str, Any]] = field(default_factory=list)
    token: str | None = None
    root_certificates: bytes | None = None
    tls: bool | None = None
    retries: bool = True

    def __post_init__(self) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *self._retry_options(),
            *self.options,
        ]
        self._channel = open_channel(
            self.target, tls=self.tls, root_certificates=self.root_certificates, options=options
        )
        self._stub = board_pb2_grpc.BoardServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def _retry_options(self) -> list[tuple[str, Any]]:
        if not self.retries:
            return [("grpc.enable_retries", 0)]
        return [("grpc.enable_retries", 1), ("grpc.service_config", SERVICE_CONFIG)]

    def __repr__(self) -> str:  # never show the token
        return f"BoardClient(target={self.target!r}, signed_in={self.token is not None})"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def __enter__(self) -> BoardClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(
        self, method: Callable[..., Any], request: Any, returns: type[Response], timeout: float | None
    ) -> Response:
        try:
            response = method(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        if not isinstance(response, returns):  # the generated stub is untyped; keep the promise honest
            raise TypeError(f"expected {returns.__name__}, got {type(response).__name__}")
        return response

    # users

    def create_user(
        self,
        name: str,
        email: str,
        password: str = "",
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> board_pb2.User:
        """Sign up (the password is required while the server has auth on)."""
        request = board_pb2.CreateUserRequest(
            name=name, email=email, password=password, request_id=new_request_id(request_id)
        )
        return self._call(self._stub.CreateUser, request, board_pb2.User, timeout)

    def sign_in(self, email: str, password: str, *, timeout: float | None = None) -> board_pb2.SignInResponse:
        """Sign in; later calls of this client carry the new token. Returns the response (token, expiry)."""
        request = board_pb2.SignInRequest(email=email, password=password)
        response = self._call(self._stub.SignIn, request, board_pb2.SignInResponse, timeout)
        self.token = response.access_token
        return response

    def sign_out(self, *, timeout: float | None = None) -> None:
        """Revoke this client's token on the server and forget it."""
        self._call(self._stub.SignOut, board_pb2.SignOutRequest(), empty_pb2.Empty, timeout)
        self.token = None

    def get_user(self, user_id: int, *, timeout: float | None = None) -> board_pb2.User:
        return self._call(self._stub.GetUser, board_pb2.GetUserRequest(id=user_id), board_pb2.User, timeout)

    def list_users(
        self, page_size: int = 0, page_token: str = "", *, timeout: float | None = None
    ) -> board_pb2.ListUsersResponse:
        request = board_pb2.ListUsersRequest(page_size=page_size, page_token=page_token)
        return self._call(self._stub.ListUsers, request, board_pb2.ListUsersResponse, timeout)

    def iter_users(self, page_size: int = 0) -> Iterator[board_pb2.User]:
        """Every user, following next_page_token."""
        return _follow_pages(lambda token: _page(self.list_users(page_size, token), "users"))

    def update_user(
        self,
        user_id: int,
        *,
        name: str | None = None,
        email: str | None = None,
        password: str | None = None,
        current_password: str = "",
        paths: Sequence[str] | None = None,
        etag: str = "",
        timeout: float | None = None,
    ) -> board_pb2.User:
        """Change the given fields (of the version ``etag`` names, when given); ``paths`` overrides the mask
        derived from which arguments are set. A new password or email takes the ``current_password`` (except
        for an admin changing another user)."""
        user = board_pb2.User(
            id=user_id, name=name or "", email=email or "", password=password or "", etag=etag
        )
        mask = _mask(paths, name=name, email=email, password=password)
        request = board_pb2.UpdateUserRequest(user=user, update_mask=mask, current_password=current_password)
        return self._call(self._stub.UpdateUser, request, board_pb2.User, timeout)

    def delete_user(self, user_id: int, *, etag: str = "", timeout: float | None = None) -> None:
        request = board_pb2.DeleteUserRequest(id=user_id, etag=etag)
        self._call(self._stub.DeleteUser, request, empty_pb2.Empty, timeout)

    # posts

    def create_post(
        self,
        user_id: int,
        title: str,
        content: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> board_pb2.Post:
        request = board_pb2.CreatePostRequest(
            user_id=user_id, title=title, content=content, request_id=new_request_id(request_id)
        )
        return self._call(self._stub.CreatePost, request, board_pb2.Post, timeout)

    def get_post(self, post_id: int, *, timeout: float | None = None) -> board_pb2.Post:
        return self._call(self._stub.GetPost, board_pb2.GetPostRequest(id=post_id), board_pb2.Post, timeout)

    def list_posts(
        self,
        user_id: int = 0,
        page_size: int = 0,
        page_token: str = "",
        *,
        label: str = "",
        min_label_fraction: float = 0.0,
        filter: str = "",
        order_by: str = "",
        with_attachments: bool = False,
        timeout: float | None = None,
    ) -> board_pb2.ListPostsResponse:
        """One page of posts; ``filter`` (AIP-160, e.g. ``label.dog >= 0.2``) and ``order_by`` (AIP-132);
        ``with_attachments`` returns each post's attachments with labels and model."""
        request = board_pb2.ListPostsRequest(
            user_id=user_id,
            page_size=page_size,
            page_token=page_token,
            label=label,
            min_label_fraction=min_label_fraction,
            filter=filter,
            order_by=order_by,
            view=board_pb2.POST_VIEW_WITH_ATTACHMENTS if with_attachments else board_pb2.POST_VIEW_BASIC,
        )
        return self._call(self._stub.ListPosts, request, board_pb2.ListPostsResponse, timeout)

    def iter_posts(
        self,
        user_id: int = 0,
        page_size: int = 0,
        *,
        label: str = "",
        min_label_fraction: float = 0.0,
        filter: str = "",
        order_by: str = "",
        with_attachments: bool = False,
    ) -> Iterator[board_pb2.Post]:
        """Every post matching the arguments (see ``list_posts``), following next_page_token."""
        return _follow_pages(
            lambda token: _page(
                self.list_posts(
                    user_id,
                    page_size,
                    token,
                    label=label,
                    min_label_fraction=min_label_fraction,
                    filter=filter,
                    order_by=order_by,
                    with_attachments=with_attachments,
                ),
                "posts",
            )
        )

    def update_post(
        self,
        post_id: int,
        *,
        title: str | None = None,
        content: str | None = None,
        paths: Sequence[str] | None = None,
        etag: str = "",
        timeout: float | None = None,
    ) -> board_pb2.Post:
        """Change the given fields (of the version ``etag`` names, when given)."""
        post = board_pb2.Post(id=post_id, title=title or "", content=content or "", etag=etag)
        mask = _mask(paths, title=title, content=content)
        request = board_pb2.UpdatePostRequest(post=post, update_mask=mask)
        return self._call(self._stub.UpdatePost, request, board_pb2.Post, timeout)

    def delete_post(self, post_id: int, *, etag: str = "", timeout: float | None = None) -> None:
        request = board_pb2.DeletePostRequest(id=post_id, etag=etag)
        self._call(self._stub.DeletePost, request, empty_pb2.Empty, timeout)

    # comments

    def create_comment(
        self,
        post_id: int,
        user_id: int,
        content: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> board_pb2.Comment:
        request = board_pb2.CreateCommentRequest(
            post_id=post_id, user_id=user_id, content=content, request_id=new_request_id(request_id)
        )
        return self._call(self._stub.CreateComment, request, board_pb2.Comment, timeout)

    def get_comment(self, comment_id: int, *, timeout: float | None = None) -> board_pb2.Comment:
        return self._call(
            self._stub.GetComment, board_pb2.GetCommentRequest(id=comment_id), board_pb2.Comment, timeout
        )

    def list_comments(
        self, post_id: int, page_size: int = 0, page_token: str = "", *, timeout: float | None = None
    ) -> board_pb2.ListCommentsResponse:
        request = board_pb2.ListCommentsRequest(post_id=post_id, page_size=page_size, page_token=page_token)
        return self._call(self._stub.ListComments, request, board_pb2.ListCommentsResponse, timeout)

    def iter_comments(self, post_id: int, page_size: int = 0) -> Iterator[board_pb2.Comment]:
        """Every comment of the post, following next_page_token."""
        return _follow_pages(lambda token: _page(self.list_comments(post_id, page_size, token), "comments"))

    def update_comment(
        self,
        comment_id: int,
        *,
        content: str | None = None,
        paths: Sequence[str] | None = None,
        etag: str = "",
        timeout: float | None = None,
    ) -> board_pb2.Comment:
        """Change the content (of the version ``etag`` names, when given)."""
        comment = board_pb2.Comment(id=comment_id, content=content or "", etag=etag)
        mask = _mask(paths, content=content)
        request = board_pb2.UpdateCommentRequest(comment=comment, update_mask=mask)
        return self._call(self._stub.UpdateComment, request, board_pb2.Comment, timeout)

    def delete_comment(self, comment_id: int, *, etag: str = "", timeout: float | None = None) -> None:
        request = board_pb2.DeleteCommentRequest(id=comment_id, etag=etag)
        self._call(self._stub.DeleteComment, request, empty_pb2.Empty, timeout)

    # attachments

    def add_attachment(
        self,
        post_id: int,
        filename: str,
        data: bytes,
        content_type: str = "",
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> board_pb2.Attachment:
        """AddAttachment: an image in one message, so at most about 1 MiB (``upload_attachment`` takes any
        size up to the server's limit); it comes back PENDING and is tagged in the background."""
        request = board_pb2.AddAttachmentRequest(
            post_id=post_id,
            filename=filename,
            content_type=content_type,
            data=data,
            request_id=new_request_id(request_id),
        )
        return self._call(self._stub.AddAttachment, request, board_pb2.Attachment, timeout)

    def upload_attachment(
        self,
        post_id: int,
        filename: str,
        data: bytes,
        content_type: str = "",
        *,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> board_pb2.Attachment:
        """UploadAttachment: the metadata (with the size and a request_id), then ``data`` in chunks of
        ``chunk_bytes``; any size up to the server's attachment limit. It comes back PENDING and is tagged in
        the background. The default deadline is the client's timeout plus 2 s per MiB."""
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be at least 1")
        metadata = board_pb2.UploadAttachmentMetadata(
            post_id=post_id,
            filename=filename,
            content_type=content_type,
            size_bytes=len(data),
            request_id=new_request_id(request_id),
        )

        def messages() -> Iterator[board_pb2.UploadAttachmentRequest]:
            yield board_pb2.UploadAttachmentRequest(metadata=metadata)
            view = memoryview(data)
            for start in range(0, len(data), chunk_bytes):
                yield board_pb2.UploadAttachmentRequest(chunk=bytes(view[start : start + chunk_bytes]))

        if timeout is None:
            timeout = self.timeout + UPLOAD_SECONDS_PER_MIB * len(data) / (1024 * 1024)
        return self._call(self._stub.UploadAttachment, messages(), board_pb2.Attachment, timeout)

    def get_attachment(self, attachment_id: int, *, timeout: float | None = None) -> board_pb2.Attachment:
        request = board_pb2.GetAttachmentRequest(id=attachment_id)
        return self._call(self._stub.GetAttachment, request, board_pb2.Attachment, timeout)

    def list_attachments_page(
        self, post_id: int, page_size: int = 0, page_token: str = "", *, timeout: float | None = None
    ) -> board_pb2.ListAttachmentsResponse:
        request = board_pb2.ListAttachmentsRequest(
            post_id=post_id, page_size=page_size, page_token=page_token
        )
        return self._call(self._stub.ListAttachments, request, board_pb2.ListAttachmentsResponse, timeout)

    def list_attachments(self, post_id: int, *, timeout: float | None = None) -> list[board_pb2.Attachment]:
        """Every attachment of the post, following next_page_token."""
        return list(
            _follow_pages(
                lambda token: _page(
                    self.list_attachments_page(post_id, 0, token, timeout=timeout), "attachments"
                )
            )
        )

    def get_attachment_content(
        self, attachment_id: int, *, timeout: float | None = None
    ) -> board_pb2.GetAttachmentContentResponse:
        request = board_pb2.GetAttachmentContentRequest(id=attachment_id)
        return self._call(
            self._stub.GetAttachmentContent, request, board_pb2.GetAttachmentContentResponse, timeout
        )

    def get_attachment_mask(self, attachment_id: int, *, timeout: float | None = None) -> bytes:
        request = board_pb2.GetAttachmentMaskRequest(id=attachment_id)
        response = self._call(
            self._stub.GetAttachmentMask, request, board_pb2.GetAttachmentMaskResponse, timeout
        )
        return bytes(response.png)

    def delete_attachment(self, attachment_id: int, *, etag: str = "", timeout: float | None = None) -> None:
        request = board_pb2.DeleteAttachmentRequest(id=attachment_id, etag=etag)
        self._call(self._stub.DeleteAttachment, request, empty_pb2.Empty, timeout)

    def retry_attachment(self, attachment_id: int, *, timeout: float | None = None) -> board_pb2.Attachment:
        """Queue a FAILED attachment for tagging again."""
        request = board_pb2.RetryAttachmentRequest(id=attachment_id)
        return self._call(self._stub.RetryAttachment, request, board_pb2.Attachment, timeout)

    def get_attachment_preview(
        self,
        attachment_id: int,
        *,
        max_size: int = 0,
        overlay: bool = False,
        content_type: str = "",
        timeout: float | None = None,
    ) -> board_pb2.GetAttachmentPreviewResponse:
        """A JPEG (or ``content_type="image/webp"``) preview, with the mask blended in if ``overlay``."""
        request = board_pb2.GetAttachmentPreviewRequest(
            id=attachment_id, max_size=max_size, overlay=overlay, content_type=content_type
        )
        return self._call(
            self._stub.GetAttachmentPreview, request, board_pb2.GetAttachmentPreviewResponse, timeout
        )

    def retag_attachments(
        self,
        filter: str = "",
        *,
        timeout: float | None = None,
    ) -> board_pb2.RetagAttachmentsResponse:
        """Queue matching attachments (default: stale ones) for tagging with the served model (admins)."""
        request = board_pb2.RetagAttachmentsRequest(filter=filter)
        return self._call(self._stub.RetagAttachments, request, board_pb2.RetagAttachmentsResponse, timeout)

    def watch_attachment(
        self, attachment_id: int, *, timeout: float = 300.0
    ) -> Iterator[board_pb2.Attachment]:
        """The attachment now and after every change, until TAGGED or FAILED (the server ends the stream)."""
        request = board_pb2.WatchAttachmentRequest(id=attachment_id)
        stream = self._stub.WatchAttachment(request, timeout=timeout, metadata=self.metadata)
        try:
            yield from stream
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            stream.cancel()

    def wait_for_tagging(self, attachment_id: int, *, timeout: float = 120.0) -> board_pb2.Attachment:
        """Watch until the attachment is TAGGED or FAILED; return it. Raises TimeoutError."""
        last: board_pb2.Attachment | None = None
        try:
            for last in self.watch_attachment(attachment_id, timeout=timeout):
                if last.status != board_pb2.ATTACHMENT_STATUS_PENDING and not last.retag_pending:
                    return last
        except DeadlineExceededError:
            pass
        state = "no answer" if last is None else board_pb2.AttachmentStatus.Name(last.status)
        raise TimeoutError(f"attachment {attachment_id} not tagged after {timeout}s ({state})")


Item = TypeVar("Item")


def new_request_id(request_id: str | None = None) -> str:
    """``request_id``, or a fresh UUID4 (AIP-155): what makes a create safe to retry."""
    return str(uuid.uuid4()) if request_id is None else request_id


def _page(response: Any, field: str) -> tuple[Sequence[Any], str]:
    return getattr(response, field), response.next_page_token


def _follow_pages(fetch: Callable[[str], tuple[Sequence[Item], str]]) -> Iterator[Item]:
    """Yield the items of every page, starting with an empty token, until next_page_token is empty."""
    token = ""
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return


def _mask(paths: Sequence[str] | None, **values: str | None) -> field_mask_pb2.FieldMask:
    if paths is None:
        paths = [name for name, value in values.items() if value is not None]
    return field_mask_pb2.FieldMask(paths=list(paths))
