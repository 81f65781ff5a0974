"""Sponsorship answers counted per hour, accepted and refused by reason, for the dashboard.

``sponsorship_outcomes`` holds one row per (hour, method, result): ``result`` is ``ok`` or the
refusal's stable code (``ANODE_…``). Each server process counts in memory and adds its counts
here every few seconds (``store/dashboard.py``), so a refusal costs a dictionary increment on the
request path and the table grows by at most (methods × results) rows an hour.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sponsorship_outcomes",
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("method", sa.String(64), primary_key=True),
        sa.Column("result", sa.String(64), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sponsorship_outcomes")
