"""Identity and permissions: who is calling (access tokens), passwords (argon2id), sign-in and its limit.

- Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommendation); a hash made
  with older parameters is upgraded at the next successful sign-in. Hashing runs on a small thread pool
  (argon2 releases the GIL), never on the event loop. Passwords are never logged.
- Access tokens are 256 random bits (``secrets.token_urlsafe(32)``); the database keeps only their SHA-256,
  with an expiry. Revoking deletes the row, so every replica refuses the token at its next call: each
  authenticated call looks the token up (one indexed read).
- Failed sign-ins are counted per email in the database (shared by replicas): after 5 within 15 minutes,
  sign-in for that email answers RESOURCE_EXHAUSTED with RetryInfo until the oldest of them ages out.
- A wrong email and a wrong password fail alike (same message, a password hash computed either way).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection

from board_server.core.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from board_server.storage import sessions
from board_server.storage.engine import Database

logger = logging.getLogger(__name__)

SIGN_IN_FAILURE_LIMIT = 5
SIGN_IN_WINDOW = timedelta(minutes=15)
BAD_CREDENTIALS = "wrong email or password"
_BEARER = "bearer "
_MAX_TOKEN_CHARS = 512

T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    """Who is calling. ``unrestricted`` is the whole world when the server runs with ``--auth off``."""

    user_id: int | None = None
    admin: bool = False
    token_id: int | None = None
    unrestricted: bool = False
    # The audit log's name for a caller without a user (the `board-server` commands are the "operator").
    label: str = "anonymous"

    @property
    def signed_in(self) -> bool:
        return self.user_id is not None

    @property
    def actor(self) -> str:
        """How the audit log names the caller: ``user:7``, ``admin:1`` or ``anonymous``."""
        if self.user_id is None:
            return self.label
        return f"{'admin' if self.admin else 'user'}:{self.user_id}"

    def is_or_admin(self, user_id: int) -> bool:
        """May act on behalf of ``user_id`` (that user, an admin, or anyone with auth off)."""
        return self.unrestricted or self.admin or (self.user_id is not None and self.user_id == user_id)


ANONYMOUS = Caller()
UNRESTRICTED = Caller(unrestricted=True)
OPERATOR = Caller(unrestricted=True, label="operator")


def token_digest(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored; the token itself never is."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewSession:
    token: str
    user_id: int
    admin: bool
    expire_time: datetime


class Accounts:
    """Authentication and the account rules every use case asks about."""

    def __init__(
        self, db: Database, *, auth: bool, reads_need_sign_in: bool, token_lifetime: timedelta
    ) -> None:
        self._db = db
        self.auth = auth
        self.reads_need_sign_in = reads_need_sign_in
        self._token_lifetime = token_lifetime
        self._hasher = PasswordHasher()
        self._hash_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="board-argon2")
        # A real hash to verify against when the email is unknown, so that both failures cost the same.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        self._hash_pool.shutdown(wait=False, cancel_futures=True)

    # --- who is calling -----------------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller named by an ``authorization`` metadata value; raise Unauthenticated for a bad token.

        No token: anonymous (or unrestricted with auth off). A token that is malformed, unknown, revoked or
        expired is refused even where anonymous callers would be let in, so that a client notices.
        """
        fallback = ANONYMOUS if self.auth else UNRESTRICTED
        if authorization is None:
            return fallback
        if not authorization[: len(_BEARER)].lower() == _BEARER:
            raise Unauthenticated("the authorization metadata must be 'Bearer <access_token>'")
        token = authorization[len(_BEARER) :].strip()
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthenticated("the access token is malformed; sign in again")
        digest = token_digest(token)
        row = await self._db.run_read(lambda conn: sessions.token_identity(conn, digest))
        if row is None:
            raise Unauthenticated("the access token is unknown or revoked; sign in again")
        if row.expire_time <= datetime.now(UTC):
            raise Unauthenticated("the access token has expired; sign in again")
        return Caller(int(row.user_id), bool(row.admin), int(row.id), unrestricted=not self.auth)

    def require_signed_in(self, caller: Caller, action: str) -> int:
        """The caller's user id; raise Unauthenticated for an anonymous caller (with auth on)."""
        if caller.user_id is None:
            raise Unauthenticated(f"{action} needs a signed-in caller: sign in and send the access token")
        return caller.user_id

    def require_reader(self, caller: Caller) -> None:
        """With ``--read-access signed-in``, reads need a token too."""
        if self.reads_need_sign_in and not caller.signed_in and not caller.unrestricted:
            raise Unauthenticated("this server lets only signed-in users read: sign in first")

    def author_for_new(self, caller: Caller, requested_user_id: int, field: str) -> int:
        """The author of something new: the caller (``0`` means the caller); anyone else is refused.

        With auth off the request names the author as before (and must).
        """
        if caller.unrestricted and caller.user_id is None:
            return requested_user_id
        user_id = self.require_signed_in(caller, "writing")
        if requested_user_id not in (0, user_id):
            raise PermissionDenied(
                f"{field} must be your own id ({user_id}) or 0: you cannot write as another user"
            )
        return user_id

    @staticmethod
    def require_admin(caller: Caller, action: str) -> None:
        """Only an admin (or anyone with auth off) may do ``action``: Unauthenticated for an anonymous
        caller, PermissionDenied for anyone else."""
        if caller.admin or caller.unrestricted:
            return
        if not caller.signed_in:
            raise Unauthenticated(f"{action} needs an admin's access token: sign in as an admin")
        raise PermissionDenied(f"only admins may {action}")

    @staticmethod
    def require_owner(caller: Caller, owner_id: int, what: str) -> None:
        """Only the owner (author, or the user themself) or an admin may change ``what``."""
        if not caller.is_or_admin(owner_id):
            if caller.user_id is None:
                raise Unauthenticated(f"changing {what} needs a signed-in caller: sign in first")
            raise PermissionDenied(f"only its author or an admin may change {what}")

    # --- passwords and sessions ---------------------------------------------------------------------------

    async def _off_loop(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._hash_pool, work)

    async def hash_password(self, password: str) -> str:
        return await self._off_loop(lambda: self._hasher.hash(password))

    async def sign_in(self, email: str, password: str) -> NewSession:
        """Check the password and open a session; raise Unauthenticated or ResourceExhausted (too many)."""
        email_lower = email.strip().lower()
        now = datetime.now(UTC)
        # The attempt is counted as a failure BEFORE the password is checked (and forgiven when it matches):
        # counting after the check let guesses sent all at once pass the limit together.
        counted, oldest = await self._db.run_write(
            lambda conn: sessions.count_attempt(
                conn, email_lower, now, now - SIGN_IN_WINDOW, SIGN_IN_FAILURE_LIMIT
            )
        )
        if not counted:
            wait = (
                (oldest + SIGN_IN_WINDOW - now).total_seconds() if oldest else SIGN_IN_WINDOW.total_seconds()
            )
            logger.warning("sign-in refused: too many failures for one email (retry in %.0f s)", wait)
            raise ResourceExhausted(
                f"too many failed sign-ins for this email; try again in {max(1, round(wait))} s", wait
            )
        row = await self._db.run_read(lambda conn: sessions.credentials(conn, email_lower))
        stored = row.password_hash if row is not None and row.password_hash else None
        verified = await self._off_loop(lambda: self._verify(stored or self._decoy, password))
        if row is None or stored is None or not verified:
            raise Unauthenticated(BAD_CREDENTIALS)  # the attempt counted above stays a failure
        assert stored is not None
        user_id, admin = int(row.id), bool(row.admin)
        rehashed = await self._off_loop(lambda: self._rehash_if_needed(stored, password))
        token = secrets.token_urlsafe(32)
        expire = now + self._token_lifetime
        digest = token_digest(token)

        def open_session(conn: Connection) -> None:
            sessions.add_token(conn, user_id, digest, now, expire)
            sessions.clear_failures(conn, email_lower)
            if rehashed is not None:
                sessions.set_password_hash(conn, user_id, rehashed)

        await self._db.run_write(open_session)
        return NewSession(token=token, user_id=user_id, admin=admin, expire_time=expire)

    async def password_matches(self, email: str, password: str) -> bool:
        """Whether ``password`` is the password of the account with ``email`` (a check only: no session,
        no failure counted)."""
        row = await self._db.run_read(lambda conn: sessions.credentials(conn, email.strip().lower()))
        stored: str | None = row.password_hash if row is not None else None
        if not stored:
            return False
        return await self._off_loop(lambda: self._verify(stored, password))

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _rehash_if_needed(self, stored: str, password: str) -> str | None:
        """A hash with today's parameters when ``stored`` was made with others (upgrade at sign-in)."""
        try:
            return self._hasher.hash(password) if self._hasher.check_needs_rehash(stored) else None
        except InvalidHashError:
            return None

    async def housekeeping(self) -> None:
        """Delete expired sessions and failed sign-ins older than the window (they only cost space)."""
        now = datetime.now(UTC)

        def sweep(conn: Connection) -> tuple[int, int]:
            tokens = sessions.delete_expired_tokens(conn, now)
            return tokens, sessions.delete_old_failures(conn, now - SIGN_IN_WINDOW)

        tokens, failures = await self._db.run_write(sweep)
        if tokens or failures:
            logger.info(
                "housekeeping: %d expired sessions and %d old failed sign-ins deleted", tokens, failures
            )

    async def sign_out(self, caller: Caller) -> None:
        """Revoke the token of this call; raise Unauthenticated when the call carried none."""
        token_id = caller.token_id
        if token_id is None:
            raise Unauthenticated("sign-out needs the access token to revoke")
        await self._db.run_write(lambda conn: sessions.delete_token(conn, token_id))
