"""Administration on the database itself (``board-server admin ...``): who is an admin, setting a password.
Emails name accounts by their canonical form (core/emails.py), as sign-in does.

These run without the gRPC server, as the operator of the database; every change is audited like a call's,
with ``by=operator``.
"""

from __future__ import annotations

import logging

from argon2 import PasswordHasher
from sqlalchemy import Connection

from board_server.core.emails import canonical_email
from board_server.domain.validation import Violations
from board_server.storage import sessions
from board_server.storage.engine import Database

audit = logging.getLogger("board.audit")


def grant_admin(db: Database, email: str, *, admin: bool) -> int:
    """Grant (or revoke) admin; the user's id. Raises ValueError when no user has this email."""
    user_id = db.write(lambda conn: sessions.set_admin(conn, canonical_email(email), admin))
    if user_id is None:
        raise ValueError(f"no user with email {email!r}")
    audit.info("Admin %s; user_id=%d; by=operator", "granted" if admin else "revoked", user_id)
    return user_id


def set_password(db: Database, email: str, password: str) -> int:
    """Set the user's password and end their sessions; the user's id. Raises ValueError (unknown email, a
    password that breaks the rules)."""
    violations = Violations()
    violations.password("password", password, email)
    if violations.items:
        raise ValueError("; ".join(f"{v.field} {v.description}" for v in violations.items))
    row = db.query(lambda conn: sessions.credentials(conn, canonical_email(email)))
    if row is None:
        raise ValueError(f"no user with email {email!r}")
    user_id = int(row.id)
    password_hash = PasswordHasher().hash(password)

    def store(conn: Connection) -> int:
        sessions.set_password_hash(conn, user_id, password_hash)
        return sessions.delete_tokens_of(conn, user_id)

    revoked = db.write(store)
    audit.info("Password set; user_id=%d; sessions_revoked=%d; by=operator", user_id, revoked)
    return user_id
