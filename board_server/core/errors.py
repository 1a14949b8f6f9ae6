"""The board's errors: what went wrong, in the domain's words; api/status.py maps each to its status code."""

from __future__ import annotations

from dataclasses import dataclass


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


class StaleEtag(BoardError):  # noqa: N818 - domain names, as in the house style
    """The request carried an etag that no longer matches: the resource changed since the caller read it,
    and nothing was changed (read it again, then decide)."""


class DatabaseBusy(BoardError):  # noqa: N818 - domain names, as in the house style
    """The database could not take the write in time (lock contention beyond the busy timeout); retryable."""


class DatabaseTimeout(BoardError):  # noqa: N818 - domain names, as in the house style
    """The database ended a statement at its time limit (the call's deadline, or the statement timeout)."""


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


@dataclass(frozen=True)
class QuotaViolation:
    """The quota a request would break: its subject (``user:7``) and what it allows (a QuotaFailure)."""

    subject: str
    description: str


class QuotaExceeded(ResourceExhausted):
    """A user's quota (attachment storage, writes per minute) would be exceeded; ``violation`` names it."""

    def __init__(self, message: str, violation: QuotaViolation, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s)
        self.violation = violation


def excerpt(value: str, limit: int = 40) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters: input is never echoed whole."""
    return repr(value if len(value) <= limit else value[:limit] + "…")
