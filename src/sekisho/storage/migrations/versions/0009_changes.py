"""The change feed: revocations, disablings and suspensions announced to running gateways

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_changes")),
        sqlite_autoincrement=True,  # ids never reused after pruning: readers keep the last id
    )
    op.create_index(op.f("ix_changes_occurred_at"), "changes", ["occurred_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_changes_occurred_at"), table_name="changes")
    op.drop_table("changes")
