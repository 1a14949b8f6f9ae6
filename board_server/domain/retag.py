"""Re-tagging when the served model changes: ask the inference server which model it serves, queue what
another model labelled.

``RetagAttachments`` (admins) and ``board-server retag`` both describe the served model (no image, no
forward), record it for every replica, then mark the attachments the filter selects ``retag_pending``. The
filter is AIP-160 over attachments (query/filter.py's ``ATTACHMENTS`` schema, translated by query/sql.py);
empty means ``stale``: TAGGED by another model than the served one. It chooses among the attachments that
are TAGGED or FAILED and not queued already (PENDING ones are queued for their first tagging). A re-tagged
attachment keeps its status and labels until the new labels replace them in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from board_server.core.errors import FailedPrecondition
from board_server.core.records import ServedModel
from board_server.domain.accounts import Accounts, Caller
from board_server.domain.clock import now
from board_server.domain.served_models import ServedModels
from board_server.query import sql
from board_server.query.filter import ATTACHMENTS, FieldCompare, Node, canonical_filter, parse_filter
from board_server.storage import tagging_queue as queue
from board_server.storage.engine import Database
from board_server.tagging.backend import InferenceBackend

logger = logging.getLogger(__name__)
audit = logging.getLogger("board.audit")


def parse_retag_filter(text: str, class_names: Sequence[str]) -> Node:
    """The tree of a RetagAttachments filter ("" means ``stale``); InvalidArgument (field ``filter``) naming
    the column and what was expected, unknown labels listing ``class_names``."""
    return parse_filter(text, class_names, ATTACHMENTS) or FieldCompare("stale", "=", True)


class Retagging:
    """Find out which model is served and queue re-tags of attachments labelled by another."""

    def __init__(
        self, db: Database, accounts: Accounts, models: ServedModels, backend: InferenceBackend | None
    ) -> None:
        self._db = db
        self._accounts = accounts
        self._models = models
        self._backend = backend

    async def refresh(self) -> ServedModel:
        """Describe the served model and record it for every replica; FailedPrecondition without it."""
        if self._backend is None:
            raise FailedPrecondition(
                "this server has no segmentation target: it cannot ask which model is served"
            )
        try:
            model = await asyncio.get_running_loop().run_in_executor(None, self._backend.describe)
        except Exception as exc:
            logger.warning("describing the served model failed: %s", exc)
            raise FailedPrecondition(
                f"the inference server did not describe its model: {type(exc).__name__}"
            ) from exc
        await self._models.record(model)
        return model

    async def retag(self, caller: Caller, filter_text: str) -> tuple[int, ServedModel]:
        """Queue re-tags of the TAGGED or FAILED attachments the filter selects (admins; "" means ``stale``);
        their count and the served model. Raises Unauthenticated, PermissionDenied, InvalidArgument (the
        filter), FailedPrecondition (no segmentation target, or the model was not described)."""
        self._accounts.require_admin(caller, "queue re-tags")
        known = await self._models.class_names()
        node = parse_retag_filter(filter_text, known)  # a mistake is reported without asking the server
        model = await self.refresh()
        if model.class_names != known:
            node = parse_retag_filter(filter_text, model.class_names)
        where = sql.where_clause(node, sql.attachments(model.identity.archive_sha256))
        count = await self._db.run_write(lambda conn: queue.request_retag(conn, now(), where=where))
        audit.info(
            "Re-tag queued; count=%d; filter=%s; model=%s/%s; by=%s",
            count,
            canonical_filter(node),
            model.identity.arch,
            (model.identity.archive_sha256 or "unknown")[:12],
            caller.actor,
        )
        return count, model
