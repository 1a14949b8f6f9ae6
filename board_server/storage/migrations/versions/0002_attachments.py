"""attachments (image bytes, mask, tagging queue lease) and their labels

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "attachments",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("post_id", BigId, sa.ForeignKey("posts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        # Bytes in the database: every replica reads the same images and masks, nothing on local disk.
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("mask_png", sa.LargeBinary(), nullable=True),
        sa.Column("model_arch", sa.String(100), nullable=True),
        sa.Column("model_weights", sa.String(500), nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column("model_untrained", sa.Boolean(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(100), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_attachments_post_id", "attachments", ["post_id"])
    op.create_index("ix_attachments_queue", "attachments", ["status", "next_attempt_time"])
    op.create_table(
        "attachment_labels",
        sa.Column(
            "attachment_id",
            BigId,
            sa.ForeignKey("attachments.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("post_id", BigId, sa.ForeignKey("posts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("fraction", sa.Float(), nullable=False),
        sa.Column("pixels", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_attachment_labels_post_id", "attachment_labels", ["post_id"])
    op.create_index(
        "ix_attachment_labels_name_fraction", "attachment_labels", ["name", "fraction", "post_id"]
    )


def downgrade() -> None:
    op.drop_table("attachment_labels")
    op.drop_table("attachments")
