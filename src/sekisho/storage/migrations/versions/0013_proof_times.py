"""sessions.proofs: when each authentication method was last proven (JSON)

Existing sessions keep what they knew: the primary methods (pwd, oidc) get `auth_time`;
the second factors get `mfa_time` when the session holds one kind of them (a passkey with
or without user verification counts as one kind). A session holding two kinds (a TOTP and
a passkey) never recorded which one `mfa_time` belongs to, so all its second factors get
the older sign-in time: at worst one more step-up, never a proof that looks fresher than
it was. The rule is written out here, not imported, so this migration keeps its meaning
whatever the code does later.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

PRIMARY = frozenset({"pwd", "oidc"})
BATCH = 500

_SESSIONS = sa.table(
    "sessions",
    sa.column("id", sa.String()),
    sa.column("auth_time", sa.DateTime(timezone=True)),
    sa.column("auth_methods", sa.String()),
    sa.column("mfa_time", sa.DateTime(timezone=True)),
    sa.column("proofs", sa.Text()),
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def proofs_of(methods: str, auth_time: datetime, mfa_time: datetime | None) -> str:
    """The JSON text for one existing session (the rule in the module docstring)."""
    names = [name for name in methods.split(",") if name]
    seconds = [name for name in names if name not in PRIMARY]
    kinds = {"webauthn" if name == "webauthn_uv" else name for name in seconds}
    second = auth_time if mfa_time is None or len(kinds) > 1 else mfa_time
    when = {name: _utc(second if name in seconds else auth_time) for name in names}
    return json.dumps({name: moment.isoformat() for name, moment in sorted(when.items())},
                      separators=(",", ":"))


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("proofs", sa.Text(), nullable=False, server_default="{}"))
    connection = op.get_bind()
    last = ""
    while True:
        rows = connection.execute(
            sa.select(_SESSIONS.c.id, _SESSIONS.c.auth_methods, _SESSIONS.c.auth_time,
                      _SESSIONS.c.mfa_time)
            .where(_SESSIONS.c.id > last).order_by(_SESSIONS.c.id).limit(BATCH)).all()
        if not rows:
            break
        connection.execute(
            sa.update(_SESSIONS).where(_SESSIONS.c.id == sa.bindparam("key"))
            .values(proofs=sa.bindparam("value")),
            [{"key": row[0], "value": proofs_of(row[1], row[2], row[3])} for row in rows])
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("proofs")
