"""Creates that are safe to retry (AIP-155): a create that carries a request_id is remembered, in the same
transaction as what it created, so that a repeat returns that resource instead of making a second one.

- The key is the caller and the request_id: the signed-in user's id, or 0 for an anonymous caller (sign-up,
  and every caller while auth is off), where the request_id alone identifies the request and the digest,
  which holds the email (and, with auth off, the author), tells requests apart.
- A repeat within the TTL that asks for the same (a SHA-256 digest of the request's fields) gets the resource
  as it is now and writes nothing; one that asks for something else is INVALID_ARGUMENT; after the TTL the
  id starts a new request. A request that failed left nothing behind, so its retry runs afresh.
- The first try of a create does not look for an earlier one: it creates and remembers, and the key (the
  table's primary key) refuses a repeat. Then that transaction is rolled back with what it created, and the
  next try looks the key up and answers from it. Repeats are rare; the lookup they need is kept off the hot
  path of every create. A first try that fails (a repeat of a sign-up finds its email taken, of an upload its
  post full) is tried once more, looking up first: a repeat is answered, anything else fails as before.
  Concurrent duplicates race the same way to one resource: on SQLite the writes take turns, on PostgreSQL the
  loser's INSERT waits for the winner's transaction and fails once it commits.
- Stored in the database, so every process and replica sees every request_id; a crash between the COMMIT
  and the reply is covered because the reply is not needed to remember it. ``housekeeping`` sweeps what is
  past the TTL.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol, TypeVar

from sqlalchemy import Connection

from board_server.core.errors import BoardError, FieldViolation, InvalidArgument
from board_server.domain.accounts import Caller
from board_server.domain.clock import now
from board_server.storage import request_ids as request_rows
from board_server.storage.engine import Database

logger = logging.getLogger(__name__)

ANONYMOUS_CALLER_ID = 0
# A repeat can lose the race at most once per competitor that commits first; this many is beyond any.
_RACES = 5


class Created(Protocol):
    @property
    def id(self) -> int: ...


R = TypeVar("R", bound=Created)


@dataclass(frozen=True)
class RequestKey:
    """Who sent a request_id, the id (lower-cased) and the digest of what the request asked for."""

    caller_id: int
    request_id: str
    digest: str


def request_key(caller: Caller, request_id: str, kind: str, *fields: str | int | None) -> RequestKey | None:
    """The key of a create (``kind``: what it creates, e.g. ``post``) asking for ``fields``; None when the
    request carries no request_id. The request_id must have passed ``Violations.request_id``."""
    if not request_id:
        return None
    # Each field with its length in front: no two different requests give the same text.
    text = "".join(f"{len(field)}:{field}" for field in map(str, (kind, *fields)))
    digest = hashlib.sha256(text.encode()).hexdigest()
    caller_id = caller.user_id if caller.user_id is not None else ANONYMOUS_CALLER_ID
    return RequestKey(caller_id, request_id.lower(), digest)


def reused_for_another_request() -> InvalidArgument:
    """The error of a request_id that its caller already used for a different request."""
    violation = "was already used by you for a different request; send a new UUID4 for a new request"
    return InvalidArgument([FieldViolation("request_id", violation)])


class RequestIds:
    """Runs creates once per (caller, request_id) within ``ttl`` (see the module docstring)."""

    def __init__(self, db: Database, ttl: timedelta) -> None:
        self._db = db
        self._ttl = ttl

    async def once(
        self,
        key: RequestKey | None,
        create: Callable[[Connection], R],
        read: Callable[[Connection, int], R],
    ) -> tuple[R, bool]:
        """``create`` in one transaction that also remembers ``key``; for a repeat of ``key`` within the TTL,
        ``read`` of what the first call created instead, and nothing written. Returns (the resource, whether
        this call created it).

        Raises InvalidArgument when the caller used the request_id for a different request, and whatever
        ``create`` or ``read`` raise (``read``: e.g. PostNotFound when the created post was deleted since).
        """
        if key is None:
            return await self._db.run_write(create), True

        def attempt(conn: Connection, look_up: bool) -> tuple[R, bool]:
            earlier = self._earlier(conn, key) if look_up else None
            if earlier is not None:
                return read(conn, earlier), False
            made = create(conn)
            request_rows.remember(
                conn, key.caller_id, key.request_id, digest=key.digest, resource_id=made.id, now=now()
            )
            return made, True

        for tries in range(_RACES):
            look_up = tries > 0
            try:
                return await self._db.run_write(partial(attempt, look_up=look_up))
            except request_rows.RequestIdTaken:
                # A repeat, or a concurrent duplicate that committed first: this transaction was rolled back
                # with what it created. Run again, looking the key up: it answers from the first one's row.
                logger.debug("request_id %s of caller %d is taken", key.request_id, key.caller_id)
            except BoardError:
                if look_up:
                    raise
                # Perhaps a repeat that cannot be made again (its email is taken by now): the lookup tells.
        raise RuntimeError(f"request_id {key.request_id}: lost {_RACES} races in a row")

    def _earlier(self, conn: Connection, key: RequestKey) -> int | None:
        """The id of what an earlier request with ``key`` created, or None (none, or past the TTL: that
        one is forgotten now); raise InvalidArgument when it asked for something else."""
        found = request_rows.earlier(conn, key.caller_id, key.request_id)
        if found is None:
            return None
        if found.create_time <= now() - self._ttl:
            request_rows.forget(conn, key.caller_id, key.request_id)
            return None
        if found.digest != key.digest:
            raise reused_for_another_request()
        return found.resource_id

    async def housekeeping(self, at: datetime | None = None) -> int:
        """Forget the request_ids older than the TTL (every process may run it: the delete is idempotent);
        how many were forgotten."""
        before = (at or now()) - self._ttl
        swept = await self._db.run_write(lambda conn: request_rows.sweep(conn, before))
        if swept:
            logger.info("housekeeping: %d request_ids older than %s forgotten", swept, self._ttl)
        return swept
