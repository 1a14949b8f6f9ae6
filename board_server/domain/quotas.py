"""A user's quotas: writes per minute, and the bytes the attachments of the user's posts hold.

Both are counted in the database (storage/quotas.py), so every process and replica shares them. The write
counter is one row per user and minute (a fixed window: at most twice the limit across the turn of a
minute). On SQLite a write is counted inside its own transaction (``count_write``: one upsert), so a refused
write leaves nothing behind, its count included. On PostgreSQL it is counted just before its transaction
(``admit_write``), in a transaction of its own committed without waiting for the disk: counted inside, one
user's concurrent writes would each hold the counter row's lock until their commit reached the disk, one
after another. There a write that fails after it was admitted (not found, a stale etag, a repeated
request_id) still counts, and a crash may forget the last counts. A quota reached is QuotaExceeded:
RESOURCE_EXHAUSTED with QuotaFailure, and RetryInfo for the writes (the seconds until the minute is over).
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

    def __init__(self, db: Database, *, writes_per_minute: int, storage_bytes: int) -> None:
        self._db = db
        self.writes_per_minute = writes_per_minute
        self.storage_bytes = storage_bytes
        # PostgreSQL: writes are counted before their transaction (see the module docstring).
        self.writes_counted_apart = db.loop_connections is not None

    async def admit_write(self, caller: Caller) -> None:
        """PostgreSQL: count one write by the caller before its transaction; raise QuotaExceeded when it
        would be more than ``writes_per_minute`` within this minute. Nothing on SQLite (``count_write``)."""
        user_id, limit = caller.user_id, self.writes_per_minute
        if not self.writes_counted_apart or user_id is None or not limit:
            return
        stamp = now().timestamp()
        if not await quotas.admit_write(self._db, user_id, int(stamp // 60), limit):
            raise _too_many_writes(user_id, limit, stamp)

    def count_write(self, conn: Connection, caller: Caller) -> None:
        """Count one write by the caller (nothing without a user: auth off, the operator); raise
        QuotaExceeded when it is more than ``writes_per_minute`` within this minute."""
        user_id, limit = caller.user_id, self.writes_per_minute
        if self.writes_counted_apart or user_id is None or not limit:
            return
        stamp = now().timestamp()
        if quotas.count_write(conn, user_id, int(stamp // 60)) > limit:
            raise _too_many_writes(user_id, limit, stamp)

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
