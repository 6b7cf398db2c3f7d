"""OIDC federation: transactions, replay ledger, IdP identities, group links, session links

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "oidc_transactions",
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("browser_hash", sa.String(length=64), nullable=False),
        sa.Column("idp", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("code_verifier", sa.String(length=128), nullable=False),
        sa.Column("redirect_uri", sa.String(length=1024), nullable=False),
        sa.Column("rd", sa.Text(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("expires_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("state_hash", name=op.f("pk_oidc_transactions")),
    )
    op.create_index(op.f("ix_oidc_transactions_expires_at"), "oidc_transactions",
                    ["expires_at"])
    op.create_table(
        "oidc_replay",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("expires_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("kind", "digest", name=op.f("pk_oidc_replay")),
    )
    op.create_index(op.f("ix_oidc_replay_expires_at"), "oidc_replay", ["expires_at"])
    op.create_table(
        "oidc_identities",
        sa.Column("idp", sa.String(length=64), nullable=False),
        sa.Column("sub", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("last_login_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_oidc_identities_user_id_users")),
        sa.PrimaryKeyConstraint("idp", "sub", name=op.f("pk_oidc_identities")),
    )
    op.create_index(op.f("ix_oidc_identities_user_id"), "oidc_identities", ["user_id"])
    op.create_table(
        "oidc_group_links",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("idp", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_oidc_group_links_user_id_users")),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], ondelete="CASCADE",
                                name=op.f("fk_oidc_group_links_group_id_groups")),
        sa.PrimaryKeyConstraint("user_id", "group_id", "idp", name=op.f("pk_oidc_group_links")),
    )
    op.create_table(
        "oidc_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("flow_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("idp", sa.String(length=64), nullable=False),
        sa.Column("sub", sa.String(length=255), nullable=False),
        sa.Column("sid", sa.String(length=255), nullable=False),
        sa.Column("id_token", sa.Text(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("expires_at", _UTC, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_oidc_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oidc_sessions")),
    )
    op.create_index(op.f("ix_oidc_sessions_session_id"), "oidc_sessions", ["session_id"])
    op.create_index("ix_oidc_sessions_idp_sub", "oidc_sessions", ["idp", "sub"])
    op.create_index("ix_oidc_sessions_idp_sid", "oidc_sessions", ["idp", "sid"])


def downgrade() -> None:
    op.drop_table("oidc_sessions")
    op.drop_table("oidc_group_links")
    op.drop_table("oidc_identities")
    op.drop_table("oidc_replay")
    op.drop_table("oidc_transactions")
