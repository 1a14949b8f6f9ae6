"""Queries of accounts: password hashes, admin flags, access tokens (kept as SHA-256), failed sign-ins and
sign-ups (counted per client address for their limits).

Like every row module (storage/users.py): each function takes a Connection inside the caller's transaction,
never commits, and returns plain rows. Emails here are canonical (core/emails.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Connection,
    Row,
    Table,
    TextClause,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)

from board_server.storage.lean import LeanQuery
from board_server.storage.notifications import notify_sessions_changed
from board_server.storage.tables import AccessToken, SignInFailure, SignUp, User

_USERS, _TOKENS, _FAILURES, _SIGN_UPS = (
    cast(Table, m.__table__) for m in (User, AccessToken, SignInFailure, SignUp)
)

_CREDENTIALS = select(_USERS.c.id, _USERS.c.password_hash, _USERS.c.admin).where(
    _USERS.c.email_canonical == bindparam("email")
)
_CREDENTIALS_OF = select(_USERS.c.email_canonical, _USERS.c.password_hash).where(
    _USERS.c.id == bindparam("id")
)
# One indexed lookup per authenticated call: the token's row joined with its user's admin flag.
_IDENTITY = LeanQuery(
    select(_TOKENS.c.id, _TOKENS.c.user_id, _TOKENS.c.expire_time, _USERS.c.admin)
    .join(_USERS, _USERS.c.id == _TOKENS.c.user_id)
    .where(_TOKENS.c.token_hash == bindparam("token_hash"))
)
_INSERT_TOKEN = insert(_TOKENS)
_SINCE: BindParameter[datetime] = bindparam("since")
_FAILURES_OF_PAIR = select(func.count(), func.min(_FAILURES.c.attempt_time)).where(
    _FAILURES.c.email == bindparam("email"),
    _FAILURES.c.peer == bindparam("peer"),
    _FAILURES.c.attempt_time >= _SINCE,
)
_FAILURES_OF_PEER = select(func.count(), func.min(_FAILURES.c.attempt_time)).where(
    _FAILURES.c.peer == bindparam("peer"), _FAILURES.c.attempt_time >= _SINCE
)
_SIGN_UPS_OF_PEER = select(func.count(), func.min(_SIGN_UPS.c.attempt_time)).where(
    _SIGN_UPS.c.peer == bindparam("peer"), _SIGN_UPS.c.attempt_time >= _SINCE
)
# PostgreSQL advisory locks (a fixed first key, the address's hash): one address's attempts take turns.
_SIGN_IN_LOCK = text("SELECT pg_advisory_xact_lock(4242002, hashtext(:peer))")
_SIGN_UP_LOCK = text("SELECT pg_advisory_xact_lock(4242004, hashtext(:peer))")


def credentials(conn: Connection, email_canonical: str) -> Row[Any] | None:
    """(id, password_hash, admin) of the user with this canonical email, or None."""
    return cast("Row[Any] | None", conn.execute(_CREDENTIALS, {"email": email_canonical}).first())


def credentials_of(conn: Connection, user_id: int) -> Row[Any] | None:
    """(email_canonical, password_hash) of the user, or None."""
    return cast("Row[Any] | None", conn.execute(_CREDENTIALS_OF, {"id": user_id}).first())


def set_password_hash(conn: Connection, user_id: int, password_hash: str) -> bool:
    """Store a new password hash; False when the user does not exist."""
    statement = update(_USERS).where(_USERS.c.id == user_id).values(password_hash=password_hash)
    return conn.execute(statement).rowcount == 1


def set_admin(conn: Connection, email_canonical: str, admin: bool) -> int | None:
    """Grant or revoke admin by canonical email; the user's id, or None when there is no such user."""
    statement = (
        update(_USERS)
        .where(_USERS.c.email_canonical == email_canonical)
        .values(admin=admin, version=_USERS.c.version + 1)  # the admin flag shows: a new etag
        .returning(_USERS.c.id)
    )
    row = conn.execute(statement).first()
    if row is None:
        return None
    notify_sessions_changed(conn, [int(row.id)])
    return int(row.id)


def add_token(conn: Connection, user_id: int, token_hash: str, now: datetime, expire: datetime) -> None:
    values = {"user_id": user_id, "token_hash": token_hash, "create_time": now, "expire_time": expire}
    conn.execute(_INSERT_TOKEN, values)


def token_identity(conn: Connection, token_hash: str) -> Row[Any] | None:
    """(id, user_id, expire_time, admin) of the token with this hash, or None (unknown or revoked)."""
    return cast("Row[Any] | None", _IDENTITY.first(conn, {"token_hash": token_hash}))


def delete_token(conn: Connection, token_id: int) -> None:
    """Revoke one session (every replica hears of it: storage/notifications.py)."""
    row = conn.execute(delete(_TOKENS).where(_TOKENS.c.id == token_id).returning(_TOKENS.c.user_id)).first()
    if row is not None:
        notify_sessions_changed(conn, [int(row.user_id)])


def delete_tokens_of(conn: Connection, user_id: int, keep_token_id: int | None = None) -> int:
    """Revoke every session of the user except ``keep_token_id``; the number revoked."""
    statement = delete(_TOKENS).where(_TOKENS.c.user_id == user_id)
    if keep_token_id is not None:
        statement = statement.where(_TOKENS.c.id != keep_token_id)
    revoked = int(conn.execute(statement).rowcount)
    if revoked:
        notify_sessions_changed(conn, [user_id])
    return revoked


def delete_expired_tokens(conn: Connection, now: datetime) -> int:
    return int(conn.execute(delete(_TOKENS).where(_TOKENS.c.expire_time < now)).rowcount)


def delete_old_failures(conn: Connection, before: datetime) -> int:
    """Forget failed sign-ins older than the limit's window, for every email (sprayed ones included)."""
    return int(conn.execute(delete(_FAILURES).where(_FAILURES.c.attempt_time < before)).rowcount)


def delete_old_sign_ups(conn: Connection, before: datetime) -> int:
    """Forget sign-ups older than the limit's window."""
    return int(conn.execute(delete(_SIGN_UPS).where(_SIGN_UPS.c.attempt_time < before)).rowcount)


def _take_turns(conn: Connection, lock: TextClause, peer: str) -> None:
    """On PostgreSQL, wait until no other transaction counts for ``peer`` (an advisory lock held until this
    one ends); SQLite's one writer already takes turns."""
    if conn.dialect.name == "postgresql":
        conn.execute(lock, {"peer": peer})


def count_attempt(
    conn: Connection,
    email: str,
    peer: str,
    now: datetime,
    since: datetime,
    *,
    per_email: int,
    per_peer: int,
) -> tuple[bool, datetime | None]:
    """Count a sign-in attempt as a failure (until a matching password clears it) unless ``email`` already has
    ``per_email`` failures from ``peer`` since ``since``, or ``peer`` has ``per_peer`` (0: no such limit):
    (counted, when the oldest failure of the limit reached was).

    The attempts of one address take turns, so that attempts arriving together cannot all pass a limit.
    """
    _take_turns(conn, _SIGN_IN_LOCK, peer)
    count, oldest = conn.execute(_FAILURES_OF_PAIR, {"email": email, "peer": peer, "since": since}).one()
    if count >= per_email:
        return False, oldest
    if per_peer:
        count, oldest = conn.execute(_FAILURES_OF_PEER, {"peer": peer, "since": since}).one()
        if count >= per_peer:
            return False, oldest
    conn.execute(insert(_FAILURES), {"email": email, "peer": peer, "attempt_time": now})
    return True, None


def clear_failures(conn: Connection, email: str, peer: str) -> None:
    """Forget the failures of ``email`` from ``peer`` (its other addresses' stay, and so do the address's
    failures for other emails)."""
    conn.execute(delete(_FAILURES).where(_FAILURES.c.email == email, _FAILURES.c.peer == peer))


def count_sign_up(
    conn: Connection, peer: str, now: datetime, since: datetime, limit: int
) -> tuple[bool, datetime | None]:
    """Count a sign-up from ``peer`` unless it already made ``limit`` since ``since``: (counted, when the
    oldest of them was). The sign-ups of one address take turns, like sign-ins."""
    _take_turns(conn, _SIGN_UP_LOCK, peer)
    count, oldest = conn.execute(_SIGN_UPS_OF_PEER, {"peer": peer, "since": since}).one()
    if count >= limit:
        return False, oldest
    conn.execute(insert(_SIGN_UPS), {"peer": peer, "attempt_time": now})
    return True, None


def user_ids_without_password(conn: Connection) -> Sequence[int]:
    return [int(r.id) for r in conn.execute(select(_USERS.c.id).where(_USERS.c.password_hash.is_(None)))]
