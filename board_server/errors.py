"""Domain exceptions of the board and the ONE table that maps them to gRPC status codes and details."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path (e.g. ``user.email``) and what is wrong with it."""

    field: str
    description: str


class BoardError(Exception):
    """Base of every error the board reports to its callers."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# At most this many field violations travel in an error (message and BadRequest): a request with a thousand
# bad mask paths must not get a thousand lines back (the answer would grow with the input).
MAX_VIOLATIONS = 10


class InvalidArgument(BoardError):  # noqa: N818 - domain names, as in the house style
    """The request is malformed; ``violations`` names each offending field (repeats dropped, at most
    MAX_VIOLATIONS of them; the message says how many more there were)."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        unique = list(dict.fromkeys(violations))
        kept = unique[:MAX_VIOLATIONS]
        message = "; ".join(f"{v.field}: {v.description}" for v in kept) or "invalid argument"
        if len(unique) > len(kept):
            message += f"; and {len(unique) - len(kept)} more"
        super().__init__(message)
        self.violations = kept


class NotFound(BoardError):  # noqa: N818 - domain names, as in the house style
    """A row the request refers to does not exist."""

    resource = "Resource"

    def __init__(self, row_id: int) -> None:
        super().__init__(f"{self.resource} not found; id={row_id}")
        self.row_id = row_id


class UserNotFound(NotFound):
    resource = "User"


class PostNotFound(NotFound):
    resource = "Post"


class CommentNotFound(NotFound):
    resource = "Comment"


class AttachmentNotFound(NotFound):
    resource = "Attachment"


class FailedPrecondition(BoardError):  # noqa: N818 - domain names, as in the house style
    """The resource is not in the state the call needs (e.g. the mask of an attachment not yet TAGGED)."""


class AlreadyExists(BoardError):  # noqa: N818 - domain names, as in the house style
    """A unique constraint (e.g. the case-insensitive email) would be violated."""


class DatabaseBusy(BoardError):  # noqa: N818 - domain names, as in the house style
    """The database could not take the write in time (lock contention beyond the busy timeout); retryable."""


class DatabaseUnavailable(BoardError):  # noqa: N818 - domain names, as in the house style
    """The database cannot be reached right now; retryable."""


class Unauthenticated(BoardError):  # noqa: N818 - domain names, as in the house style
    """The call needs a valid access token: none was given, or it is unknown, expired or revoked."""


class PermissionDenied(BoardError):  # noqa: N818 - domain names, as in the house style
    """The caller is known but may not do this (not the author, not an admin)."""


class ResourceExhausted(BoardError):  # noqa: N818 - domain names, as in the house style
    """A limit was reached (a quota, the sign-in limit); ``retry_after_s``: when to try again, if known."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def excerpt(value: str, limit: int = 40) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters: input is never echoed whole."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


# The one mapping from domain errors to canonical codes; the most specific class wins (MRO order).
STATUS_CODES: dict[type[BoardError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    DatabaseBusy: grpc.StatusCode.UNAVAILABLE,
    DatabaseUnavailable: grpc.StatusCode.UNAVAILABLE,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_code(error: BoardError) -> grpc.StatusCode:
    """Return the gRPC code for ``error``; unknown subclasses of BoardError are INTERNAL."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_grpc_status(error: BoardError) -> grpc.Status:
    """Build the rich status (code, message; BadRequest for InvalidArgument, RetryInfo when known)."""
    code = status_code(error)
    details: list[any_pb2.Any] = []
    if isinstance(error, ResourceExhausted) and error.retry_after_s is not None:
        seconds = max(1, int(error.retry_after_s + 0.999))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))
        details.append(detail)
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        details.append(detail)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=details)
    return rpc_status.to_status(status)
