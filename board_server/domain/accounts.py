"""Identity and permissions: who is calling (access tokens), passwords (argon2id), sign-in, sign-up and
their limits.

- Passwords are hashed with argon2id, by default with RFC 9106's second recommendation (argon2-cffi's
  defaults: 64 MiB, 3 passes, ~0.3 s of CPU); ``PASSWORD_HASHINGS`` names the parameter sets an operator
  may choose (``cheapest`` is for test suites, as Django's tests use a fast hasher, and refused off
  loopback). A hash made with other parameters is upgraded at the next successful sign-in. Hashing runs on
  a small thread pool (argon2 releases the GIL), never on the event loop. Passwords are never logged.
- Access tokens are 256 random bits (``secrets.token_urlsafe(32)``); the database keeps only their SHA-256,
  with an expiry. Revoking deletes the row and tells every replica (domain/session_cache.py): on SQLite each
  authenticated call looks the token up (one indexed read); on PostgreSQL each process remembers who a token
  names while it hears every revocation, and forgets the user's tokens when one comes.
- Failed sign-ins are counted in the database (shared by replicas) per email and client address, and per
  address: after 5 for one email from one address, or ``failures_per_peer`` from one address, within 15
  minutes, that email from that address (or that address) is answered RESOURCE_EXHAUSTED with RetryInfo
  until the oldest failure ages out. Guesses from elsewhere never lock the owner out of their account.
- A wrong current password in UpdateUser is a failed sign-in too.
- A wrong email and a wrong password fail alike (same message, a password hash computed either way).
- Sign-ups are counted per address in the database: ``sign_ups_per_peer`` an hour.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection

from board_server.core.emails import canonical_email
from board_server.core.errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    UserNotFound,
)
from board_server.core.limits import PEER_MAX
from board_server.domain.session_cache import Identity, SessionCache
from board_server.storage import sessions
from board_server.storage.engine import Database

# The argon2id parameter sets of --password-hashing; the first is the default.
PASSWORD_HASHINGS = {
    "rfc9106-low-memory": profiles.RFC_9106_LOW_MEMORY,
    "rfc9106-high-memory": profiles.RFC_9106_HIGH_MEMORY,
    "cheapest": profiles.CHEAPEST,
}
DEFAULT_PASSWORD_HASHING = next(iter(PASSWORD_HASHINGS))
TEST_PASSWORD_HASHING = "cheapest"  # noqa: S105 - a parameter set's name


def password_hasher(name: str = DEFAULT_PASSWORD_HASHING) -> PasswordHasher:
    """The hasher of the parameter set ``name`` (a key of PASSWORD_HASHINGS)."""
    return PasswordHasher.from_parameters(PASSWORD_HASHINGS[name])


logger = logging.getLogger(__name__)

# Failed sign-ins for one email from one client address.
SIGN_IN_FAILURE_LIMIT = 5
SIGN_IN_WINDOW = timedelta(minutes=15)
SIGN_UP_WINDOW = timedelta(hours=1)
BAD_CREDENTIALS = "wrong email or password"
WRONG_CURRENT = "current_password is wrong"
_KEPT_ADDRESSES = 4096
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
    # The client's address, as the limits per address key it ("" when not known, e.g. the operator).
    peer: str = ""

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
        self,
        db: Database,
        *,
        auth: bool,
        reads_need_sign_in: bool,
        token_lifetime: timedelta,
        sign_in_failures_per_peer: int = 0,
        sign_ups_per_peer: int = 0,
        hasher: PasswordHasher | None = None,
        sessions: SessionCache | None = None,
    ) -> None:
        """``sign_in_failures_per_peer``, ``sign_ups_per_peer``: the limits per client address (0: none);
        ``hasher``: how new password hashes are made (``password_hasher()`` by default); ``sessions``: who
        tokens name, remembered (None: every authenticated call reads its token's row)."""
        self._db = db
        self.auth = auth
        self.reads_need_sign_in = reads_need_sign_in
        self._token_lifetime = token_lifetime
        self._failures_per_peer = sign_in_failures_per_peer
        self._sign_ups_per_peer = sign_ups_per_peer
        self._callers_without_token: dict[str, Caller] = {}
        self._hasher = hasher or password_hasher()
        self._sessions = sessions
        self._hash_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="board-argon2")
        # A real hash to verify against when the email is unknown, so that both failures cost the same.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        self._hash_pool.shutdown(wait=False, cancel_futures=True)

    # --- who is calling -----------------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, peer: str = "") -> Caller:
        """The caller named by an ``authorization`` metadata value, calling from ``peer``; raise
        Unauthenticated for a bad token.

        No token: anonymous (or unrestricted with auth off). A token that is malformed, unknown, revoked or
        expired is refused even where anonymous callers would be let in, so that a client notices.
        """
        if authorization is None:
            caller = self._callers_without_token.get(peer)
            if caller is None:  # one per address, made once: most calls carry no token
                if len(self._callers_without_token) >= _KEPT_ADDRESSES:
                    self._callers_without_token.clear()
                caller = Caller(unrestricted=not self.auth, peer=peer)
                self._callers_without_token[peer] = caller
            return caller
        if not authorization[: len(_BEARER)].lower() == _BEARER:
            raise Unauthenticated("the authorization metadata must be 'Bearer <access_token>'")
        token = authorization[len(_BEARER) :].strip()
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthenticated("the access token is malformed; sign in again")
        digest = token_digest(token)
        cache = self._sessions
        identity = cache.get(digest) if cache is not None else None
        if identity is None:
            generation = cache.generation if cache is not None else 0
            row = await self._db.run_read(lambda conn: sessions.token_identity(conn, digest))
            if row is None:
                raise Unauthenticated("the access token is unknown or revoked; sign in again")
            identity = Identity(int(row.id), int(row.user_id), bool(row.admin), row.expire_time)
            if cache is not None:
                cache.put(digest, identity, generation)
        if identity.expire_time <= datetime.now(UTC):
            raise Unauthenticated("the access token has expired; sign in again")
        return Caller(
            identity.user_id, identity.admin, identity.token_id, unrestricted=not self.auth, peer=peer
        )

    def sessions_changed(self, user_ids: frozenset[int] | None) -> None:
        """Tokens of ``user_ids`` (None: anyone's) were revoked, or their admin flag changed: forget what
        this process remembered of them (told by the change listener, and by this process's own changes
        as soon as they commit)."""
        if self._sessions is not None:
            self._sessions.changed(user_ids)

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

    async def sign_in(self, caller: Caller, email: str, password: str) -> NewSession:
        """Check the password and open a session; raise Unauthenticated or ResourceExhausted (too many
        failures for this email from the caller's address, or from the address)."""
        key, peer = canonical_email(email), _peer_key(caller)
        now = datetime.now(UTC)
        await self._count_attempt(key, peer, now)
        row = await self._db.run_read(lambda conn: sessions.credentials(conn, key))
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
            sessions.clear_failures(conn, key, peer)
            if rehashed is not None:
                sessions.set_password_hash(conn, user_id, rehashed)

        await self._db.run_write(open_session)
        return NewSession(token=token, user_id=user_id, admin=admin, expire_time=expire)

    async def password_matches(self, email: str, password: str) -> bool:
        """Whether ``password`` is the password of the account with ``email`` (a check only: no session,
        no failure counted)."""
        row = await self._db.run_read(lambda conn: sessions.credentials(conn, canonical_email(email)))
        stored: str | None = row.password_hash if row is not None else None
        if not stored:
            return False
        return await self._off_loop(lambda: self._verify(stored, password))

    async def confirm_password(self, caller: Caller, user_id: int, password: str) -> None:
        """Check ``password`` against the user's own, as a sign-in from the caller's address (a wrong one
        counts as a failed sign-in of the user's email). Raises InvalidArgument (empty), PermissionDenied
        (wrong), ResourceExhausted (too many failures), UserNotFound."""
        if not password:
            raise InvalidArgument(
                [FieldViolation("current_password", "is required to change the password or the email")]
            )
        row = await self._db.run_read(lambda conn: sessions.credentials_of(conn, user_id))
        if row is None:
            raise UserNotFound(user_id)
        key, peer, stored = str(row.email_canonical), _peer_key(caller), row.password_hash
        await self._count_attempt(key, peer, datetime.now(UTC))
        if not await self._off_loop(lambda: self._verify(stored or self._decoy, password)) or not stored:
            raise PermissionDenied(WRONG_CURRENT)
        await self._db.run_write(lambda conn: sessions.clear_failures(conn, key, peer))

    def needs_current_password(self, caller: Caller, user_id: int, paths: Collection[str]) -> bool:
        """Changing the password or the email takes the current password, except for an admin changing
        another user (and with auth off): a stolen token alone cannot take the account over."""
        if not {"password", "email"} & set(paths) or caller.unrestricted:
            return False
        return not (caller.admin and caller.user_id != user_id)

    async def _count_attempt(self, email: str, peer: str, now: datetime) -> None:
        """Count a sign-in attempt as a failure until the password matches; raise ResourceExhausted when
        the email has too many from ``peer``, or ``peer`` has."""
        counted, oldest = await self._db.run_write(
            lambda conn: sessions.count_attempt(
                conn,
                email,
                peer,
                now,
                now - SIGN_IN_WINDOW,
                per_email=SIGN_IN_FAILURE_LIMIT,
                per_peer=self._failures_per_peer,
            )
        )
        if not counted:
            wait = _seconds_until(oldest, SIGN_IN_WINDOW, now)
            logger.warning("sign-in refused: too many failures from %s (retry in %.0f s)", peer or "?", wait)
            raise ResourceExhausted(
                f"too many failed sign-ins from your address; try again in {max(1, round(wait))} s", wait
            )

    async def count_sign_up(self, caller: Caller) -> None:
        """Count a sign-up from the caller's address; raise ResourceExhausted when it made
        ``sign_ups_per_peer`` within the hour. Admins creating accounts are not counted."""
        if caller.admin or not self._sign_ups_per_peer:
            return
        peer, now = _peer_key(caller), datetime.now(UTC)
        counted, oldest = await self._db.run_write(
            lambda conn: sessions.count_sign_up(
                conn, peer, now, now - SIGN_UP_WINDOW, self._sign_ups_per_peer
            )
        )
        if not counted:
            wait = _seconds_until(oldest, SIGN_UP_WINDOW, now)
            logger.warning("sign-up refused: too many from %s (retry in %.0f s)", peer or "?", wait)
            raise ResourceExhausted(
                f"too many sign-ups from your address; try again in {max(1, round(wait))} s", wait
            )

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
        """Delete expired sessions, failed sign-ins and sign-ups older than their window (they only cost
        space)."""
        now = datetime.now(UTC)

        def sweep(conn: Connection) -> tuple[int, int, int]:
            tokens = sessions.delete_expired_tokens(conn, now)
            failures = sessions.delete_old_failures(conn, now - SIGN_IN_WINDOW)
            return tokens, failures, sessions.delete_old_sign_ups(conn, now - SIGN_UP_WINDOW)

        tokens, failures, sign_ups = await self._db.run_write(sweep)
        if tokens or failures or sign_ups:
            logger.info(
                "housekeeping: %d expired sessions, %d old failed sign-ins and %d old sign-ups deleted",
                tokens,
                failures,
                sign_ups,
            )

    async def sign_out(self, caller: Caller) -> None:
        """Revoke the token of this call; raise Unauthenticated when the call carried none."""
        token_id = caller.token_id
        if token_id is None:
            raise Unauthenticated("sign-out needs the access token to revoke")
        await self._db.run_write(lambda conn: sessions.delete_token(conn, token_id))
        if caller.user_id is not None:
            self.sessions_changed(frozenset({caller.user_id}))


def _peer_key(caller: Caller) -> str:
    return caller.peer[:PEER_MAX]


def _seconds_until(oldest: datetime | None, window: timedelta, now: datetime) -> float:
    """Seconds until the oldest counted event leaves the window (and makes room for one more)."""
    return (oldest + window - now).total_seconds() if oldest is not None else window.total_seconds()
