"""canonical emails (unique); the client address of failed sign-ins; sign-ups and writes counted for their
limits; a preview cache on a ladder of sizes with a budget (size and last use of each preview)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from board_server.core.emails import canonical_email
from board_server.core.limits import EMAIL_MAX, PEER_MAX
from board_server.storage.errors import MigrationRefusedError

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_USERS = sa.table(
    "users", sa.column("id", BigId), sa.column("email", sa.String), sa.column("email_canonical", sa.String)
)


def upgrade() -> None:
    _canonical_emails()
    # The client address of a failed sign-in: the limits count per (email, address) and per address. Rows
    # from before keep "" and the lower-cased email; they age out within the sign-in window.
    op.add_column(
        "sign_in_failures", sa.Column("peer", sa.String(PEER_MAX), nullable=False, server_default="")
    )
    op.create_index("ix_sign_in_failures_peer_time", "sign_in_failures", ["peer", "attempt_time"])
    op.create_table(
        "sign_ups",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("peer", sa.String(PEER_MAX), nullable=False),
        sa.Column("attempt_time", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sign_ups_peer_time", "sign_ups", ["peer", "attempt_time"])
    op.create_table(
        "write_counts",
        sa.Column("user_id", BigId, primary_key=True, autoincrement=False),
        # Seconds since the epoch // 60: one row per user and minute, swept once it is over.
        sa.Column("minute", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("writes", sa.Integer(), nullable=False),
    )
    # The preview cache starts again empty: its rows were of any size (the ladder keeps a few), and a cache
    # dropped costs only renders.
    op.drop_table("attachment_previews")
    _create_previews(budgeted=True)
    op.create_index("ix_attachment_previews_last_use", "attachment_previews", ["last_use_time", "size_bytes"])


def _canonical_emails() -> None:
    """Add users.email_canonical, computed in Python for every row, and make it the unique key; stop, with
    nothing changed, when two accounts would share one (never merge or drop an account)."""
    # A plain ADD COLUMN (never a batch copy of users: see 0003); NOT NULL needs the default on SQLite.
    op.add_column(
        "users", sa.Column("email_canonical", sa.String(EMAIL_MAX), nullable=False, server_default="")
    )
    conn = op.get_bind()
    groups: dict[str, list[Any]] = {}
    for row in conn.execute(sa.select(_USERS.c.id, _USERS.c.email).order_by(_USERS.c.id)):
        groups.setdefault(canonical_email(row.email), []).append(row)
    problems = [_same_account(rows) for rows in groups.values() if len(rows) > 1]
    problems += [
        f"user {rows[0].id} {rows[0].email!r}: its canonical form is longer than {EMAIL_MAX} characters"
        for canonical, rows in groups.items()
        if len(canonical) > EMAIL_MAX
    ]
    if problems:
        raise MigrationRefusedError(
            "cannot give every account a canonical email (trimmed, Unicode NFKC, case-folded): "
            + "; ".join(problems)
            + ". Nothing was changed. Change the email of all but one account of each group (with the "
            "previous board-server release, UpdateUser, or SQL), or delete the accounts you do not want, "
            "then migrate again."
        )
    if groups:
        conn.execute(
            sa.update(_USERS)
            .where(_USERS.c.id == sa.bindparam("user_id"))
            .values(email_canonical=sa.bindparam("canonical")),
            [{"user_id": rows[0].id, "canonical": canonical} for canonical, rows in groups.items()],
        )
    op.create_index("ix_users_email_canonical", "users", ["email_canonical"], unique=True)
    op.drop_index("ix_users_email_lower", table_name="users")


def _same_account(rows: Sequence[Any]) -> str:
    named = ", ".join(f"user {row.id} {row.email!r}" for row in rows)
    return f"{named} have the same canonical email"


def _create_previews(*, budgeted: bool) -> None:
    budget: list[sa.Column[Any]] = (
        [
            sa.Column("size_bytes", sa.Integer(), nullable=False),
            sa.Column("last_use_time", sa.DateTime(timezone=True), nullable=False),
        ]
        if budgeted
        else []
    )
    op.create_table(
        "attachment_previews",
        sa.Column(
            "attachment_id",
            BigId,
            sa.ForeignKey("attachments.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("max_size", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("overlay", sa.Boolean(), primary_key=True),
        sa.Column("content_type", sa.String(32), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        *budget,
    )


def downgrade() -> None:
    op.drop_table("attachment_previews")
    _create_previews(budgeted=False)
    op.drop_table("write_counts")
    op.drop_table("sign_ups")
    op.drop_index("ix_sign_in_failures_peer_time", table_name="sign_in_failures")
    op.execute("ALTER TABLE sign_in_failures DROP COLUMN peer")
    op.create_index("ix_users_email_lower", "users", [sa.text("lower(email)")], unique=True)
    op.drop_index("ix_users_email_canonical", table_name="users")
    op.execute("ALTER TABLE users DROP COLUMN email_canonical")
