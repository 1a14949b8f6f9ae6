"""Queries of accounts: password hashes, admin flags, access tokens (kept as SHA-256) and failed sign-ins.

Like every row module (storage/users.py): each function takes a Connection inside the caller's transaction,
never commits, and returns plain rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, bindparam, delete, func, insert, select, text, update

from board_server.storage.lean import LeanQuery
from board_server.storage.tables import AccessToken, SignInFailure, User

_USERS, _TOKENS, _FAILURES = (cast(Table, m.__table__) for m in (User, AccessToken, SignInFailure))

_CREDENTIALS = select(_USERS.c.id, _USERS.c.password_hash, _USERS.c.admin).where(
    func.lower(_USERS.c.email) == bindparam("email")
)
# One indexed lookup per authenticated call: the token's row joined with its user's admin flag.
_IDENTITY = LeanQuery(
    select(_TOKENS.c.id, _TOKENS.c.user_id, _TOKENS.c.expire_time, _USERS.c.admin)
    .join(_USERS, _USERS.c.id == _TOKENS.c.user_id)
    .where(_TOKENS.c.token_hash == bindparam("token_hash"))
)
_INSERT_TOKEN = insert(_TOKENS)
_FAILURES_SINCE = select(func.count(), func.min(_FAILURES.c.attempt_time)).where(
    _FAILURES.c.email == bindparam("email"), _FAILURES.c.attempt_time >= bindparam("since")
)


def credentials(conn: Connection, email_lower: str) -> Row[Any] | None:
    """(id, password_hash, admin) of the user with this email (any case), or None."""
    return cast("Row[Any] | None", conn.execute(_CREDENTIALS, {"email": email_lower}).first())


def set_password_hash(conn: Connection, user_id: int, password_hash: str) -> bool:
    """Store a new password hash; False when the user does not exist."""
    statement = update(_USERS).where(_USERS.c.id == user_id).values(password_hash=password_hash)
    return conn.execute(statement).rowcount == 1


def set_admin(conn: Connection, email_lower: str, admin: bool) -> int | None:
    """Grant or revoke admin by email; the user's id, or None when there is no such user."""
    statement = (
        update(_USERS)
        .where(func.lower(_USERS.c.email) == email_lower)
        .values(admin=admin, version=_USERS.c.version + 1)  # the admin flag shows: a new etag
        .returning(_USERS.c.id)
    )
    row = conn.execute(statement).first()
    return None if row is None else int(row.id)


def add_token(conn: Connection, user_id: int, token_hash: str, now: datetime, expire: datetime) -> None:
    values = {"user_id": user_id, "token_hash": token_hash, "create_time": now, "expire_time": expire}
    conn.execute(_INSERT_TOKEN, values)


def token_identity(conn: Connection, token_hash: str) -> Row[Any] | None:
    """(id, user_id, expire_time, admin) of the token with this hash, or None (unknown or revoked)."""
    return cast("Row[Any] | None", _IDENTITY.first(conn, {"token_hash": token_hash}))


def delete_token(conn: Connection, token_id: int) -> None:
    conn.execute(delete(_TOKENS).where(_TOKENS.c.id == token_id))


def delete_tokens_of(conn: Connection, user_id: int, keep_token_id: int | None = None) -> int:
    """Revoke every session of the user except ``keep_token_id``; the number revoked."""
    statement = delete(_TOKENS).where(_TOKENS.c.user_id == user_id)
    if keep_token_id is not None:
        statement = statement.where(_TOKENS.c.id != keep_token_id)
    return int(conn.execute(statement).rowcount)


def delete_expired_tokens(conn: Connection, now: datetime) -> int:
    return int(conn.execute(delete(_TOKENS).where(_TOKENS.c.expire_time < now)).rowcount)


def delete_old_failures(conn: Connection, before: datetime) -> int:
    """Forget failed sign-ins older than the limit's window, for every email (sprayed ones included)."""
    return int(conn.execute(delete(_FAILURES).where(_FAILURES.c.attempt_time < before)).rowcount)


def failures_since(conn: Connection, email_lower: str, since: datetime) -> tuple[int, datetime | None]:
    """How many failed sign-ins for the email since ``since``, and when the oldest of them was."""
    row = conn.execute(_FAILURES_SINCE, {"email": email_lower, "since": since}).one()
    return int(row[0]), row[1]


def count_attempt(
    conn: Connection, email_lower: str, now: datetime, since: datetime, limit: int
) -> tuple[bool, datetime | None]:
    """Count a sign-in attempt as a failure (until a matching password clears it) unless the email already has
    ``limit`` failures since ``since``: (counted, when the oldest of them was). Forgets older failures.

    Attempts for one email take turns (SQLite: the one writer; PostgreSQL: an advisory lock on the email until
    the transaction ends), so that attempts arriving together cannot all pass the limit.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(4242002, hashtext(:email))"), {"email": email_lower})
    count, oldest = failures_since(conn, email_lower, since)
    if count >= limit:
        return False, oldest
    conn.execute(delete(_FAILURES).where(_FAILURES.c.email == email_lower, _FAILURES.c.attempt_time < since))
    conn.execute(insert(_FAILURES), {"email": email_lower, "attempt_time": now})
    return True, oldest


def clear_failures(conn: Connection, email_lower: str) -> None:
    conn.execute(delete(_FAILURES).where(_FAILURES.c.email == email_lower))


def user_ids_without_password(conn: Connection) -> Sequence[int]:
    return [int(r.id) for r in conn.execute(select(_USERS.c.id).where(_USERS.c.password_hash.is_(None)))]
