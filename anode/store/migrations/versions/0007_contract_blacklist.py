"""Contracts blacklisted through the admin API, per chain (``chain_id`` NULL: every chain).

``id`` is the entry's scope, ``"<chainId>:<address>"`` or ``"*:<address>"`` (address lower-case
hex): one row per address and scope on SQLite and PostgreSQL alike, which a unique constraint
over a nullable ``chain_id`` would not give (NULLs are distinct there).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contract_blacklist",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("chain_id", sa.BigInteger(), nullable=True),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(32), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("contract_blacklist")
