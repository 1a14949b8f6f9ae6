"""What a failed inference call means for the attachment (docs/attachments.md has the table): fail now,
retry later with the attempt counted, or pause the whole worker and give the attempt back; and the backoff
between tries. The same verdicts serve every inference backend: each raises clients.segment's errors."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from clients.segment import (
    SegmentAuthError,
    SegmentBadAnswerError,
    SegmentCancelledError,
    SegmentRejectedError,
    SegmentServerError,
    SegmentTimeoutError,
    SegmentUnavailableError,
    SegmentWorkerDiedError,
)

BASE_BACKOFF_S = 0.5


@dataclass(frozen=True)
class Verdict:
    """What a failed call means for the attachment.

    ``action``: ``fail`` now; ``retry`` later, the attempt counted; ``pause`` the whole worker and retry, the
    attempt given back (the model server is unusable for every image alike).
    """

    kind: str
    action: Literal["fail", "retry", "pause"]
    reason: str


# In order: the first matching class decides (subclasses before their bases).
_VERDICTS: tuple[tuple[type[Exception], str, Literal["fail", "retry", "pause"], str], ...] = (
    (SegmentBadAnswerError, "bad_answer", "fail", "malformed answer from the model server: "),
    (SegmentAuthError, "auth", "pause", "the model server refused our key: "),
    (SegmentTimeoutError, "timeout", "retry", "timeout: "),
    (SegmentWorkerDiedError, "server_error", "retry", "the model server's worker died during the call: "),
    (SegmentCancelledError, "cancelled", "retry", "the call was cancelled: "),
    (SegmentServerError, "server_error", "retry", "model server error "),
)


def classify(exc: BaseException) -> Verdict:
    """The verdict on a segmentation call that raised ``exc``."""
    if isinstance(exc, SegmentRejectedError):
        return Verdict("rejected", "fail", f"rejected by the model ({exc.status} {exc.code}): {exc.message}")
    if isinstance(exc, SegmentUnavailableError):
        if exc.reached:
            return Verdict("unavailable", "retry", f"the model server failed on the image: {exc}")
        return Verdict("unavailable", "pause", f"the model server is unavailable: {exc}")
    for error_type, kind, action, prefix in _VERDICTS:
        if isinstance(exc, error_type):
            return Verdict(kind, action, f"{prefix}{exc}")
    return Verdict("server_error", "retry", f"{type(exc).__name__}: {exc}")


def backoff_seconds(attempt: int, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half of min(cap, base·2^(attempt-1)) plus a random half."""
    ceiling = min(cap, BASE_BACKOFF_S * 2 ** max(0, min(attempt - 1, 30)))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))
