"""request ids of creates (AIP-155: a retry returns what the first call created); a version per user (its
etag, AIP-154)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_ids",
        # The signed-in caller (0: anonymous, i.e. sign-up) and the UUID4 they chose, lower-cased: the key
        # that makes concurrent duplicates race to one row (and so to one resource).
        sa.Column("caller_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("request_id", sa.String(36), primary_key=True),
        # SHA-256 (hex) of what the request asked for: a repeat must ask for the same.
        sa.Column("digest", sa.String(64), nullable=False),
        # What the first request created (no foreign key: one table serves users, posts, comments and
        # attachments, and the row only lives until the sweep).
        sa.Column("resource_id", sa.BigInteger(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_request_ids_create_time", "request_ids", ["create_time"])
    # A plain ADD COLUMN (see 0003 on why never a batch copy of users); existing users start at version 1.
    op.add_column("users", sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")))


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN version")
    op.drop_index("ix_request_ids_create_time", table_name="request_ids")
    op.drop_table("request_ids")
