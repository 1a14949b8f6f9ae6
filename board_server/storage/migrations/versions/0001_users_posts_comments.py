"""users, posts, comments; unique index on lower(email)

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    # Case-insensitive uniqueness is the database's job, so that concurrent creates cannot both win.
    op.create_index("ix_users_email_lower", "users", [sa.text("lower(email)")], unique=True)
    op.create_table(
        "posts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        # Never reuse the id of a deleted row: keyset pages and old references stay unambiguous.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_posts_user_id", "posts", ["user_id"])
    op.create_table(
        "comments",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("post_id", BigId, sa.ForeignKey("posts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        # Never reuse the id of a deleted row: keyset pages and old references stay unambiguous.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_comments_post_id", "comments", ["post_id"])
    op.create_index("ix_comments_user_id", "comments", ["user_id"])


def downgrade() -> None:
    op.drop_table("comments")
    op.drop_table("posts")
    op.drop_index("ix_users_email_lower", table_name="users")
    op.drop_table("users")
