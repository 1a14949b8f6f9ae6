"""accounts (password hashes, admins, access tokens, sign-in failures), deployment secrets, tagging claims
and re-tagging, trace context, preview cache

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Plain ADD COLUMNs, never batch mode: on SQLite a batch "move and copy" of users would drop the
    # expression index on lower(email) and, with foreign keys on, cascade-delete every post when the old
    # table is dropped. Users created before accounts have no password hash: they cannot sign in until an
    # admin sets one.
    op.add_column("users", sa.Column("password_hash", sa.String(255), nullable=True))
    op.add_column("users", sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "access_tokens",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        # SHA-256 of the token (hex): the token itself is never stored.
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_access_tokens_token_hash", "access_tokens", ["token_hash"], unique=True)
    op.create_index("ix_access_tokens_user_id", "access_tokens", ["user_id"])
    op.create_table(
        "sign_in_failures",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        # Lower-cased email as typed (whether or not such a user exists).
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("attempt_time", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sign_in_failures_email_time", "sign_in_failures", ["email", "attempt_time"])
    # Per-deployment secrets (page-token signing key, ...), created on first start, shared by replicas.
    op.create_table(
        "deployment_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_posts_create_time", "posts", ["create_time"])
    # Plain ADD COLUMNs again (see users above: a batch copy of attachments would cascade to its labels).
    # Fencing per claim: results are stored only under the claim token that took the lease.
    op.add_column("attachments", sa.Column("claim_token", sa.String(32), nullable=True))
    # Re-tag queued: the row keeps its labels (and status TAGGED) until the new ones land.
    op.add_column(
        "attachments", sa.Column("retag_pending", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    # Identity of the model behind the labels: SHA-256 of the served TorchScript program.
    op.add_column("attachments", sa.Column("model_archive_sha256", sa.String(64), nullable=True))
    # W3C traceparent of the upload, so that tagging on any replica joins the upload's trace.
    op.add_column("attachments", sa.Column("traceparent", sa.String(64), nullable=True))
    op.create_index("ix_attachments_retag", "attachments", ["retag_pending", "next_attempt_time"])
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
    )


def downgrade() -> None:
    op.drop_table("attachment_previews")
    op.drop_index("ix_attachments_retag", table_name="attachments")
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35 and PostgreSQL), never a batch copy (see upgrade).
    for column in ("traceparent", "model_archive_sha256", "retag_pending", "claim_token"):
        op.execute(f"ALTER TABLE attachments DROP COLUMN {column}")
    op.drop_index("ix_posts_create_time", table_name="posts")
    op.drop_table("deployment_secrets")
    op.drop_table("sign_in_failures")
    op.drop_table("access_tokens")
    for column in ("admin", "password_hash"):
        op.execute(f"ALTER TABLE users DROP COLUMN {column}")
