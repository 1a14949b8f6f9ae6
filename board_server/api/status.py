"""Domain errors as statuses: the ONE table from error class to canonical code, and the rich details
(BadRequest field violations, RetryInfo, QuotaFailure) that travel with it. Every transport renders the same
``google.rpc.Status``: gRPC in its trailers, Connect and gRPC-Web in their error bodies."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from board_server.core.errors import (
    AlreadyExists,
    BoardError,
    DatabaseBusy,
    DatabaseTimeout,
    DatabaseUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    ResourceExhausted,
    StaleEtag,
    Unauthenticated,
)

# The one mapping from domain errors to canonical codes; the most specific class wins (MRO order).
STATUS_CODES: dict[type[BoardError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    DatabaseBusy: grpc.StatusCode.UNAVAILABLE,
    DatabaseTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    DatabaseUnavailable: grpc.StatusCode.UNAVAILABLE,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StaleEtag: grpc.StatusCode.ABORTED,
}


def status_code(error: BoardError) -> grpc.StatusCode:
    """Return the gRPC code for ``error``; unknown subclasses of BoardError are INTERNAL."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def rich_status(error: BoardError) -> status_pb2.Status:
    """The google.rpc.Status of ``error``: code, message; BadRequest for InvalidArgument, RetryInfo when
    known, QuotaFailure for a user's quota."""
    code = status_code(error)
    details: list[any_pb2.Any] = []
    if isinstance(error, ResourceExhausted) and error.retry_after_s is not None:
        seconds = max(1, int(error.retry_after_s + 0.999))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))
        details.append(detail)
    if isinstance(error, QuotaExceeded):
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=error.violation.subject, description=error.violation.description
        )
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.QuotaFailure(violations=[violation]))
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
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=details)


def to_grpc_status(error: BoardError) -> grpc.Status:
    """The rich status of ``error`` as gRPC sends it (details in ``grpc-status-details-bin``)."""
    return rpc_status.to_status(rich_status(error))
