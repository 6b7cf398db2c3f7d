"""Connectors: one-time enrolment tokens (hashed, expiring, single use) and the registry

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "connector_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("expires_at", _UTC, nullable=False),
        sa.Column("used_at", _UTC, nullable=True),
        sa.Column("connector_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_connector_tokens")),
    )
    op.create_table(
        "connectors",
        sa.Column("connector_id", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cert_serial", sa.String(length=64), nullable=False),
        sa.Column("cert_not_after", _UTC, nullable=False),
        sa.Column("enrolled_at", _UTC, nullable=False),
        sa.Column("last_seen", _UTC, nullable=True),
        sa.Column("revoked_at", _UTC, nullable=True),
        sa.PrimaryKeyConstraint("connector_id", name=op.f("pk_connectors")),
        sa.UniqueConstraint("cert_serial", name=op.f("uq_connectors_cert_serial")),
    )
    op.create_index(op.f("ix_connectors_site"), "connectors", ["site"])


def downgrade() -> None:
    op.drop_index(op.f("ix_connectors_site"), table_name="connectors")
    op.drop_table("connectors")
    op.drop_table("connector_tokens")
