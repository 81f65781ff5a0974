"""The sponsorship ledger: one row per paymaster signature that left the server.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

from anode.store.tables import Uint256

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sponsorships",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_op_hash", sa.String(66), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("entry_point", sa.String(42), nullable=False),
        sa.Column("paymaster", sa.String(42), nullable=False),
        sa.Column("sender", sa.String(42), nullable=False),
        sa.Column("nonce", Uint256(), nullable=False),
        sa.Column("max_gas_cost_wei", Uint256(), nullable=False),
        sa.Column("valid_until", sa.BigInteger(), nullable=False),
        sa.Column("valid_after", sa.BigInteger(), nullable=False),
        sa.Column("signer", sa.String(42), nullable=False),
        sa.Column("api_key_id", sa.String(32), nullable=True),
        sa.Column("method", sa.String(64), nullable=False),
    )
    op.create_index("ix_sponsorships_sender_created", "sponsorships", ["sender", "created_at"])
    op.create_index("ix_sponsorships_created", "sponsorships", ["created_at"])
    op.create_index("ix_sponsorships_user_op_hash", "sponsorships", ["user_op_hash"])


def downgrade() -> None:
    op.drop_table("sponsorships")
