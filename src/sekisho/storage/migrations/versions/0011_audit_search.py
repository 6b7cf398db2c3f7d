"""Audit search: route and decision columns, a table of denial and failure reasons, and
indexes that give each filter's records in seq order (partial ones for rare records)

Revision ID: 0011
Revises: 0010

Existing records are backfilled from their hashed bodies in batches of `BATCH` (about a
minute per million records on SQLite); the hash chain itself is untouched.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from sekisho.audit.columns import of_body

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BATCH = 5000
_RARE = sa.text("event_type <> 'access.decision'")
_DENY = sa.text("decision = 'deny'")
_OLD_INDEXES = (("ix_audit_events_occurred_at", ["occurred_at"]),
                ("ix_audit_events_event_type", ["event_type"]),
                ("ix_audit_events_actor", ["actor"]))
_NEW_INDEXES: tuple[tuple[str, list[str], Any], ...] = (
    ("ix_audit_events_time_seq", ["occurred_at", "seq"], None),
    ("ix_audit_events_actor_seq", ["actor", "seq"], None),
    ("ix_audit_events_route_seq", ["route", "seq"], None),
    ("ix_audit_events_type_seq", ["event_type", "seq"], _RARE),
    ("ix_audit_events_type_time", ["event_type", "occurred_at"], _RARE),
    ("ix_audit_events_deny_seq", ["seq"], _DENY),
    ("ix_audit_events_deny_time", ["occurred_at", "decision"], _DENY),  # covering
)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("route", sa.String(length=128), nullable=False,
                                            server_default=""))
    op.add_column("audit_events", sa.Column("decision", sa.String(length=8), nullable=False,
                                            server_default=""))
    op.create_table(
        "audit_reasons",
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("seq", _SEQ, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("reason", "seq", name=op.f("pk_audit_reasons")),
        sqlite_with_rowid=False,
    )
    _backfill()
    for name, _columns in _OLD_INDEXES:
        op.drop_index(name, table_name="audit_events")
    for name, columns, where in _NEW_INDEXES:
        op.create_index(name, "audit_events", columns, sqlite_where=where,
                        postgresql_where=where)
    op.create_index("ix_audit_reasons_time", "audit_reasons", ["occurred_at", "event_type"])


def _backfill() -> None:
    """Derive the search columns of every existing record, `BATCH` records per round trip."""
    connection = op.get_bind()
    events = sa.table("audit_events", sa.column("seq", _SEQ),
                      sa.column("occurred_at", sa.DateTime(timezone=True)),
                      sa.column("event_type", sa.String()), sa.column("body", sa.Text()),
                      sa.column("route", sa.String()), sa.column("decision", sa.String()))
    reasons = sa.table("audit_reasons", sa.column("reason", sa.String()),
                       sa.column("occurred_at", sa.DateTime(timezone=True)),
                       sa.column("seq", _SEQ), sa.column("event_type", sa.String()))
    update = (sa.update(events).where(events.c.seq == sa.bindparam("b_seq"))
              .values(route=sa.bindparam("b_route"), decision=sa.bindparam("b_decision")))
    last = 0
    while True:
        rows = connection.execute(
            sa.select(events.c.seq, events.c.occurred_at, events.c.event_type, events.c.body)
            .where(events.c.seq > last).order_by(events.c.seq).limit(BATCH)).all()
        if not rows:
            return
        changed: list[dict[str, Any]] = []
        found: list[dict[str, Any]] = []
        for row in rows:
            columns = of_body(row.body)
            if columns.route or columns.decision:
                changed.append({"b_seq": row.seq, "b_route": columns.route,
                                "b_decision": columns.decision})
            found.extend({"reason": reason, "seq": row.seq, "occurred_at": row.occurred_at,
                          "event_type": row.event_type} for reason in columns.reasons)
        if changed:
            connection.execute(update, changed)
        if found:
            connection.execute(reasons.insert(), found)
        last = int(rows[-1].seq)


def downgrade() -> None:
    op.drop_index("ix_audit_reasons_time", table_name="audit_reasons")
    op.drop_table("audit_reasons")
    for name, _columns, _where in reversed(_NEW_INDEXES):
        op.drop_index(name, table_name="audit_events")
    for name, columns in _OLD_INDEXES:
        op.create_index(name, "audit_events", columns)
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("decision")
        batch.drop_column("route")
