"""Paymaster deposits over time, and the claims that let one server process alert about a low one.

``deposit_samples``: (chain_id, entry_point, paymaster, deposit_wei, sampled_at), one row per
sampling interval, kept for ``deposits.retention_days``. ``deposit_watch``: one row per paymaster,
``sampled_at`` and ``alerted_at`` claimed by atomic updates (``anode/store/deposits.py``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from anode.store.tables import Uint256

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deposit_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("entry_point", sa.String(42), nullable=False),
        sa.Column("paymaster", sa.String(42), nullable=False),
        sa.Column("deposit_wei", Uint256(), nullable=False),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_deposit_samples_paymaster_time", "deposit_samples", ["chain_id", "paymaster", "sampled_at"])
    op.create_index("ix_deposit_samples_time", "deposit_samples", ["sampled_at"])
    op.create_table(
        "deposit_watch",
        sa.Column("chain_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("entry_point", sa.String(42), primary_key=True),
        sa.Column("paymaster", sa.String(42), primary_key=True),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("deposit_watch")
    op.drop_index("ix_deposit_samples_time", table_name="deposit_samples")
    op.drop_index("ix_deposit_samples_paymaster_time", table_name="deposit_samples")
    op.drop_table("deposit_samples")
