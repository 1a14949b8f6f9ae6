"""write counters per connection (write_tallies): a write is counted inside its own transaction on its own
connection's row, so one user's concurrent writes never queue for one counter row's lock

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # A new table rather than a new key on write_counts: the previous release keeps counting there (its upsert
    # needs the (user_id, minute) key) while a rolling update replaces it. Across that window each release
    # sees only its own counts, so a user may write up to twice the limit for a minute or two; a later
    # migration drops write_counts.
    op.create_table(
        "write_tallies",
        sa.Column("user_id", BigId, primary_key=True, autoincrement=False),
        # Seconds since the epoch // 60: swept once it is over.
        sa.Column("minute", sa.BigInteger(), primary_key=True, autoincrement=False),
        # The counting connection: PostgreSQL's backend pid (0 on SQLite, which has one writer).
        sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("writes", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("write_tallies")
