"""Signer events for the dashboard: failovers and backends' health, from every server process.

``signer_events`` holds one row per event a process's signer manager reports: ``failover`` (a
request moved on from ``backend`` to ``to_backend``; ``count`` failovers between the same two
backends in the same hour since the process's last write), ``unhealthy`` and ``healthy`` (a
health probe's result changed), ``circuit_open`` and ``circuit_closed`` (``count`` 1). ``process``
names the writer (host and process id). Indexed by time (``ix_signer_events_at``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signer_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("to_backend", sa.String(64), nullable=True),
        sa.Column("to_address", sa.String(42), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.String(200), nullable=True),
        sa.Column("process", sa.String(64), nullable=False),
    )
    op.create_index("ix_signer_events_at", "signer_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_signer_events_at", table_name="signer_events")
    op.drop_table("signer_events")
