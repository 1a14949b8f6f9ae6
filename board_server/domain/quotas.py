"""A user's quotas: writes per minute, and the bytes the attachments of the user's posts hold.

Both are counted in the database (storage/quotas.py), so every process and replica shares them. A write is
counted inside its own transaction (``count_write``, or ``counter`` for a write that is one statement), so a
refused write leaves nothing behind, its count included. The counter is per user and minute (a fixed window:
at most twice the limit across the turn of a minute); on PostgreSQL each connection counts on a row of its
own and the limit is checked against their sum, so one user's concurrent writes never queue for a counter's
lock, and writes of one user in flight together may pass the limit by at most their number. A quota reached
is QuotaExceeded: RESOURCE_EXHAUSTED with QuotaFailure, and RetryInfo for the writes (the seconds until the
minute is over).
"""

from __future__ import annotations

import logging
import math

from sqlalchemy import Connection

from board_server.core.errors import QuotaExceeded, QuotaViolation
from board_server.domain.accounts import Caller
from board_server.domain.clock import now
from board_server.storage import quotas
from board_server.storage.engine import Database

logger = logging.getLogger(__name__)


class Quotas:
    """The quotas of every user; 0 turns one off."""

    def __init__(self, *, writes_per_minute: int, storage_bytes: int) -> None:
        self.writes_per_minute = writes_per_minute
        self.storage_bytes = storage_bytes

    def count_write(self, conn: Connection, caller: Caller) -> None:
        """Count one write by the caller inside its transaction (nothing without a user: auth off, the
        operator); raise QuotaExceeded when it would be more than ``writes_per_minute`` within this minute."""
        user_id, limit = caller.user_id, self.writes_per_minute
        if user_id is None or not limit:
            return
        stamp = now().timestamp()
        if not quotas.count_write(conn, user_id, int(stamp // 60), limit):
            raise _too_many_writes(user_id, limit, stamp)

    def counter(self, caller: Caller) -> dict[str, int] | None:
        """The parameters that count one write by the caller inside a write of one statement
        (storage/quotas.py ``counted``), None when the caller's writes are not counted; when that statement
        admits nothing, ``refused(caller)`` is the error."""
        user_id, limit = caller.user_id, self.writes_per_minute
        if user_id is None or not limit:
            return None
        minute = int(now().timestamp() // 60)
        return {quotas.COUNTER_USER: user_id, quotas.MINUTE: minute, quotas.LIMIT: limit}

    def refused(self, caller: Caller) -> QuotaExceeded:
        """The error of a write that ``counter``'s statement did not admit."""
        assert caller.user_id is not None
        return _too_many_writes(caller.user_id, self.writes_per_minute, now().timestamp())

    def require_storage(self, conn: Connection, owner_id: int, adding: int) -> None:
        """Raise QuotaExceeded when ``adding`` more bytes would take the attachments of ``owner_id``'s posts
        past ``storage_bytes`` (PostgreSQL: the owner's uploads take turns until the transaction ends)."""
        limit = self.storage_bytes
        if not limit:
            return
        used = quotas.storage_used(conn, owner_id)
        if used + adding > limit:
            raise QuotaExceeded(
                f"the attachments of user {owner_id}'s posts hold {used} bytes: {adding} more would pass "
                f"their storage quota of {limit} bytes; delete some first",
                QuotaViolation(f"user:{owner_id}", f"attachments may hold at most {limit} bytes"),
            )

    @staticmethod
    async def housekeeping(db: Database) -> None:
        """Delete the write counters of minutes that are over."""
        minute = int(now().timestamp() // 60)
        deleted = await db.run_write(lambda conn: quotas.delete_old_write_counts(conn, minute))
        if deleted:
            logger.info("housekeeping: %d write counters of past minutes deleted", deleted)


def _too_many_writes(user_id: int, limit: int, stamp: float) -> QuotaExceeded:
    wait = 60 - stamp % 60
    return QuotaExceeded(
        f"more than {limit} writes within a minute; try again in {math.ceil(wait)} s",
        QuotaViolation(f"user:{user_id}", f"at most {limit} writes per minute"),
        wait,
    )
