"""Users and sessions: sign-up, read, list, update (name, email, password), delete, sign in and out.

Every create/update/delete is written to the audit logger ``board.audit`` at INFO after its commit, naming
the actor (``by=user:7``); reads never are, so no read can push history out of the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from board_server.core.emails import canonical_email
from board_server.core.limits import EMAIL_MAX, NAME_MAX
from board_server.core.records import UserRecord
from board_server.domain import etags
from board_server.domain.accounts import Accounts, Caller
from board_server.domain.clock import now
from board_server.domain.idempotency import RequestIds, request_key, reused_for_another_request
from board_server.domain.paging import Page, PageTokens
from board_server.domain.quotas import Quotas
from board_server.domain.validation import Violations, check_id
from board_server.storage import sessions
from board_server.storage import users as user_rows
from board_server.storage.engine import Database

audit = logging.getLogger("board.audit")


@dataclass(frozen=True)
class UserView:
    """A user as this caller may see them: email and admin flag only for the user and for admins."""

    id: int
    name: str
    email: str
    admin: bool
    create_time: datetime
    etag: str

    @classmethod
    def of(cls, user: UserRecord, caller: Caller) -> UserView:
        private = caller.is_or_admin(user.id)
        return cls(
            user.id,
            user.name,
            user.email if private else "",
            user.admin and private,
            user.create_time,
            etags.of_version(user.version),
        )


# --- users -------------------------------------------------------------------------------------------------


class UserService:
    """Sign-up, read, list, update (name, email, password) and delete users."""

    MUTABLE = frozenset({"name", "email", "password"})

    def __init__(
        self,
        db: Database,
        accounts: Accounts,
        tokens: PageTokens,
        quotas: Quotas,
        requests: RequestIds,
        *,
        sign_up_open: bool,
    ) -> None:
        self._db = db
        self._accounts = accounts
        self._tokens = tokens
        self._quotas = quotas
        self._requests = requests
        self._sign_up_open = sign_up_open

    async def create_user(
        self, caller: Caller, name: str, email: str, password: str, *, request_id: str = ""
    ) -> UserView:
        """Create a user (once per ``request_id``, see domain/idempotency.py); raise InvalidArgument,
        AlreadyExists (an email with the same canonical form), PermissionDenied (sign-up closed),
        ResourceExhausted (too many sign-ups from the caller's address)."""
        if not self._sign_up_open:
            self._accounts.require_admin(caller, "creating accounts (sign-up is closed on this server)")
        violations = Violations()
        violations.text("name", name, NAME_MAX)
        violations.email("email", email)
        if password or self._accounts.auth:
            violations.password("password", password, email)
        violations.request_id("request_id", request_id)
        violations.raise_if_any()
        # Counted before the hash is computed: refused sign-ups cost the server nothing.
        await self._accounts.count_sign_up(caller)
        password_hash = await self._accounts.hash_password(password) if password else None
        # The password stays out of the digest (nothing but its argon2 hash is ever stored): a repeat's
        # password is checked against the account's instead.
        key = request_key(caller, request_id, "user", name, email)
        user, created = await self._requests.once(
            key,
            lambda conn: user_rows.add_user(
                conn,
                name=name,
                email=email,
                email_canonical=canonical_email(email),
                now=now(),
                password_hash=password_hash,
            ),
            user_rows.read_user,
        )
        if created:
            audit.info("User created; id=%d; by=%s", user.id, caller.actor)
        elif password and not await self._accounts.password_matches(user.email, password):
            raise reused_for_another_request()
        return UserView.of(user, Caller(user.id))  # whoever created it sees the email they sent

    async def get_user(self, caller: Caller, user_id: int) -> UserView:
        """Return the user (``0``: the signed-in caller); raise InvalidArgument, UserNotFound,
        Unauthenticated (``0`` without a token)."""
        self._accounts.require_reader(caller)
        if user_id == 0 and not (caller.unrestricted and caller.user_id is None):
            user_id = self._accounts.require_signed_in(caller, "asking who you are")
        check_id("id", user_id)
        user = await self._db.run_read(lambda conn: user_rows.read_user(conn, user_id))
        return UserView.of(user, caller)

    async def list_users(self, caller: Caller, page_size: int, page_token: str) -> Page[UserView]:
        """One page of users ordered by id; raise InvalidArgument on a bad size or token."""
        self._accounts.require_reader(caller)
        request = self._tokens.id_page("users", "", page_size, page_token)
        rows = await self._db.run_read(
            lambda conn: user_rows.list_users(conn, request.after_id, request.size + 1)
        )
        page = self._tokens.cut("users", "", rows, request, lambda u: u.id)
        return Page([UserView.of(u, caller) for u in page.items], page.next_page_token)

    async def update_user(
        self,
        caller: Caller,
        user_id: int,
        paths: Sequence[str],
        *,
        name: str,
        email: str,
        password: str,
        current_password: str = "",
        etag: str = "",
    ) -> UserView:
        """Change the masked fields (of the version ``etag`` names, when given); a new password revokes the
        user's other sessions. A new password or email takes ``current_password``
        (Accounts.needs_current_password).

        Raises InvalidArgument, UserNotFound, AlreadyExists, PermissionDenied (also a wrong current
        password), ResourceExhausted (too many wrong ones), QuotaExceeded, StaleEtag.
        """
        violations = Violations()
        violations.row_id("user.id", user_id)
        paths = violations.mask("update_mask", paths, self.MUTABLE)
        if "name" in paths:
            violations.text("user.name", name, NAME_MAX)
        if "email" in paths:
            violations.email("user.email", email)
        if "password" in paths:
            violations.password("user.password", password, email)
        violations.raise_if_any()
        self._accounts.require_owner(caller, user_id, "this account")
        if "password" in paths and "email" not in paths:
            # Nor may the new password be the email the account keeps (the request's email is not set).
            current = await self._db.run_read(lambda conn: user_rows.read_user(conn, user_id))
            violations.password("user.password", password, current.email)
            violations.raise_if_any()
        # Last of the checks: only a request that would be carried out costs a password attempt.
        if self._accounts.needs_current_password(caller, user_id, paths):
            await self._accounts.confirm_password(caller, user_id, current_password)
        values: dict[str, object] = {
            path: {"name": name, "email": email}[path] for path in paths if path != "password"
        }
        if "email" in paths:
            values["email_canonical"] = canonical_email(email)
        if "password" in paths:
            values["password_hash"] = await self._accounts.hash_password(password)
        # The caller's own session survives their password change; every other one ends now.
        keep = caller.token_id if caller.user_id == user_id else None

        def change(conn: Connection) -> tuple[UserRecord, int]:
            self._require_version(conn, user_id, etag)
            self._quotas.count_write(conn, caller)
            user = user_rows.update_user(conn, user_id, values)
            revoked = sessions.delete_tokens_of(conn, user_id, keep) if "password" in paths else 0
            return user, revoked

        user, revoked = await self._db.run_write(change)
        if revoked:
            self._accounts.sessions_changed(frozenset({user.id}))
        audit.info("User updated; id=%d; fields=%s; by=%s", user.id, ",".join(paths), caller.actor)
        if revoked:
            audit.info("Sessions revoked; user_id=%d; count=%d; by=%s", user.id, revoked, caller.actor)
        return UserView.of(user, caller)

    async def delete_user(self, caller: Caller, user_id: int, *, etag: str = "") -> None:
        """Delete the user with their posts, comments and sessions (only the version ``etag`` names, when
        given); raise InvalidArgument, UserNotFound, PermissionDenied, StaleEtag, QuotaExceeded."""
        check_id("id", user_id)
        self._accounts.require_owner(caller, user_id, "this account")

        def remove(conn: Connection) -> None:
            self._require_version(conn, user_id, etag)
            self._quotas.count_write(conn, caller)
            user_rows.delete_user(conn, user_id)

        await self._db.run_write(remove)
        self._accounts.sessions_changed(frozenset({user_id}))
        audit.info("User deleted; id=%d; by=%s", user_id, caller.actor)

    @staticmethod
    def _require_version(conn: Connection, user_id: int, etag: str) -> None:
        """In a write: raise StaleEtag unless ``etag`` is empty or the user's current one (the row is locked
        until the write commits); UserNotFound."""
        if etag:
            current = user_rows.read_user(conn, user_id, for_update=True)
            etags.require_current(etag, etags.of_version(current.version), f"user {user_id}")

    async def sign_in(self, caller: Caller, email: str, password: str) -> tuple[str, datetime, UserView]:
        """Open a session: (access token, expiry, user); raise InvalidArgument, Unauthenticated,
        ResourceExhausted (too many failures from the caller's address)."""
        violations = Violations()
        violations.text("email", email, EMAIL_MAX)
        violations.email_key("email", email)
        if not password:
            violations.add("password", "must not be empty")
        violations.raise_if_any()
        session = await self._accounts.sign_in(caller, email, password)
        user = await self._db.run_read(lambda conn: user_rows.read_user(conn, session.user_id))
        caller = Caller(session.user_id, session.admin)
        audit.info("Signed in; user_id=%d; by=%s", session.user_id, caller.actor)
        return session.token, session.expire_time, UserView.of(user, caller)

    async def sign_out(self, caller: Caller) -> None:
        await self._accounts.sign_out(caller)
        audit.info("Signed out; user_id=%d; by=%s", caller.user_id or 0, caller.actor)
