"""Sponsorship policies and their usage counters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

from anode.store.tables import Uint256

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "policy_usage",
        sa.Column("counter", sa.String(200), primary_key=True),
        sa.Column("window_start", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("used", Uint256(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_policy_usage_expires_at", "policy_usage", ["expires_at"])


def downgrade() -> None:
    op.drop_table("policy_usage")
    op.drop_table("policies")
