"""What happened to each signed operation on chain, and the follower's own state.

``sponsorships`` gains the outcome the EntryPoint follower (``anode/watch/``) records: ``status``
(``signed``, ``included``, ``expired``), the inclusion's transaction, block, success and actual
gas. ``watch_cursors`` / ``watch_blocks`` hold each chain's last processed block and the hashes of
recent blocks (a changed hash is a reorg); ``watch_lease`` lets one follower work per database;
``unknown_operations`` holds inclusions for the configured paymasters that no ledger row signed.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from anode.store.tables import Uint256

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sponsorships") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="signed"))
        batch.add_column(sa.Column("tx_hash", sa.String(66), nullable=True))
        batch.add_column(sa.Column("block_number", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("success", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("actual_gas_cost_wei", Uint256(), nullable=True))
        batch.add_column(sa.Column("actual_gas_used", Uint256(), nullable=True))
    op.create_index("ix_sponsorships_chain_status", "sponsorships", ["chain_id", "status", "valid_until"])
    op.create_index("ix_sponsorships_chain_block", "sponsorships", ["chain_id", "block_number"])
    op.create_table(
        "watch_cursors",
        sa.Column("chain_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("last_block", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "watch_blocks",
        sa.Column("chain_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("number", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(66), nullable=False),
    )
    op.create_table(
        "watch_lease",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "unknown_operations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("user_op_hash", sa.String(66), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("entry_point", sa.String(42), nullable=False),
        sa.Column("paymaster", sa.String(42), nullable=False),
        sa.Column("sender", sa.String(42), nullable=False),
        sa.Column("nonce", Uint256(), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("actual_gas_cost_wei", Uint256(), nullable=False),
        sa.Column("actual_gas_used", Uint256(), nullable=False),
        sa.UniqueConstraint("chain_id", "user_op_hash", "tx_hash", name="uq_unknown_operations_op_tx"),
    )


def downgrade() -> None:
    op.drop_table("unknown_operations")
    op.drop_table("watch_lease")
    op.drop_table("watch_blocks")
    op.drop_table("watch_cursors")
    op.drop_index("ix_sponsorships_chain_block", table_name="sponsorships")
    op.drop_index("ix_sponsorships_chain_status", table_name="sponsorships")
    with op.batch_alter_table("sponsorships") as batch:
        for column in ("actual_gas_used", "actual_gas_cost_wei", "success", "block_number", "tx_hash", "status"):
            batch.drop_column(column)
