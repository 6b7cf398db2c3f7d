"""Device posture: the latest verified report per device and single-use report nonces

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "device_posture",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("reported_at", _UTC, nullable=False),
        sa.Column("received_at", _UTC, nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_device_posture")),
    )
    op.create_table(
        "posture_nonces",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("device_id", "nonce", name=op.f("pk_posture_nonces")),
    )
    op.create_index(op.f("ix_posture_nonces_expires_at"), "posture_nonces", ["expires_at"])


def downgrade() -> None:
    op.drop_table("posture_nonces")
    op.drop_table("device_posture")
