"""the served model as TorchServe last described it (for re-tagging and filters); the label index the
ListPosts search reads

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "served_models",
        # TorchServe's model name (e.g. deeplabv3): one row per model the board tags with.
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("arch", sa.String(100), nullable=False),
        sa.Column("weights", sa.String(500), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("archive_sha256", sa.String(64), nullable=True),
        sa.Column("untrained", sa.Boolean(), nullable=False),
        # JSON list of class names, index = the value in the mask.
        sa.Column("class_names", sa.Text(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )
    # ListPosts filters: a per-post index lookup for each label predicate (covering: no table reads).
    op.create_index(
        "ix_attachment_labels_post_name_fraction",
        "attachment_labels",
        ["post_id", "name", "fraction", "attachment_id"],
    )
    # Its prefix serves every lookup by post_id (the cascade from posts included).
    op.drop_index("ix_attachment_labels_post_id", table_name="attachment_labels")


def downgrade() -> None:
    op.create_index("ix_attachment_labels_post_id", "attachment_labels", ["post_id"])
    op.drop_index("ix_attachment_labels_post_name_fraction", table_name="attachment_labels")
    op.drop_table("served_models")
