"""Re-tagging when the served model changes: ask TorchServe which model it serves, queue what another made.

``RetagAttachments`` (admins) and ``board-server retag --stale`` both: describe the served model (the
handler answers a ``describe`` request without running the network), record it in ``served_models`` for
every replica, then mark the matching TAGGED attachments ``retag_pending``. The tagging worker takes new
uploads first and re-tags after; a re-tagged attachment keeps its status and labels until the new labels
replace them in one transaction, so a search never loses or repeats a post meanwhile.

The filter of RetagAttachments selects among TAGGED attachments: ``stale`` (labelled by a model other than
the served one, or by an unknown one), optionally with ``post_id = N`` (AND); empty means ``stale``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from board_server import served_model
from board_server import tagging_queue as queue
from board_server.accounts import Caller
from board_server.config import Settings
from board_server.database import Database
from board_server.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from board_server.served_model import ServedModel, ServedModels
from board_server.validation import MAX_ID

logger = logging.getLogger(__name__)
audit = logging.getLogger("board.audit")

Describe = Callable[[], Mapping[str, Any]]
_TERM = re.compile(r"^\s*(?:(stale)|post_id\s*=\s*(\d{1,19}))\s*$", re.IGNORECASE)


def make_segment_client(settings: Settings) -> Any:
    """A SegmentClient for TorchServe's gRPC inference API of ``settings`` (tagging and describe)."""
    from clients.segment import SegmentClient, ServingEndpoints, TokenSource

    endpoints = ServingEndpoints(
        inference_url="",
        management_url="",
        grpc_inference_target=settings.segmentation_target,
        model_name=settings.segmentation_model,
    )
    token_file = settings.segmentation_token_file
    tokens = TokenSource.from_key_file(token_file) if token_file else TokenSource()
    return SegmentClient(
        endpoints,
        tokens,
        timeout_s=settings.segmentation_timeout_s,
        # Reconnect within ~2 s after TorchServe comes back (gRPC's default backoff grows to 120 s).
        channel_options=[("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)],
    )


def parse_retag_filter(text: str) -> int | None:
    """The post id a RetagAttachments filter restricts to (None: every post); InvalidArgument otherwise.

    Accepted: "", ``stale``, ``post_id = N``, ``stale AND post_id = N`` (either order).
    """
    if len(text) > 200:
        raise InvalidArgument([FieldViolation("filter", "must be at most 200 characters")])
    post_id: int | None = None
    terms = (
        [t for t in re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE) if t] if text.strip() else []
    )
    for term in terms:
        match = _TERM.match(term)
        if match is None:
            raise InvalidArgument(
                [FieldViolation("filter", "expected `stale`, `post_id = N` or both joined by AND")]
            )
        if match.group(2) is not None:
            post_id = int(match.group(2))
            if not 1 <= post_id <= MAX_ID:
                raise InvalidArgument([FieldViolation("filter", "post_id must be a positive id")])
    return post_id


class Retagging:
    """Find out which model TorchServe serves and queue re-tags of attachments labelled by another."""

    def __init__(self, db: Database, models: ServedModels, describe: Describe | None) -> None:
        self._db = db
        self._models = models
        self._describe = describe

    async def refresh(self) -> ServedModel:
        """Describe the served model and record it for every replica; FailedPrecondition without it."""
        if self._describe is None:
            raise FailedPrecondition(
                "this server has no segmentation target: it cannot ask which model is served"
            )
        describe = self._describe
        try:
            answer = await asyncio.get_running_loop().run_in_executor(None, describe)
        except Exception as exc:
            logger.warning("describing the served model failed: %s", exc)
            raise FailedPrecondition(f"TorchServe did not describe its model: {type(exc).__name__}") from exc
        model = ServedModel.from_answer(answer)
        await self._db.run_write(lambda conn: served_model.store(conn, self._models.name, model))
        self._models.forget()
        return model

    async def retag(self, caller: Caller, filter_text: str) -> tuple[int, ServedModel]:
        """Queue re-tags of the stale TAGGED attachments the filter selects (admins); their count and the
        served model. Raises Unauthenticated, PermissionDenied, InvalidArgument, FailedPrecondition."""
        if not (caller.admin or caller.unrestricted):
            if not caller.signed_in:
                raise Unauthenticated("re-tagging needs an admin's access token")
            raise PermissionDenied("only admins queue re-tags")
        post_id = parse_retag_filter(filter_text)
        model = await self.refresh()
        count = await self._db.run_write(
            lambda conn: queue.request_retag(
                conn, datetime.now(UTC), post_id=post_id, unless_archive_sha256=model.archive_sha256
            )
        )
        audit.info(
            "Re-tag queued; count=%d; model=%s/%s; by=%s",
            count,
            model.arch,
            (model.archive_sha256 or "unknown")[:12],
            caller.actor,
        )
        return count, model
