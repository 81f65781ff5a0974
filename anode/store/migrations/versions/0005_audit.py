"""The hash-chained audit log and its chain head (one row, the genesis until the first record).

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("backend", sa.String(64), nullable=True),
        sa.Column("signer", sa.String(42), nullable=True),
        sa.Column("user_op_hash", sa.String(66), nullable=True),
        sa.Column("chain_id", sa.BigInteger(), nullable=True),
        sa.Column("paymaster", sa.String(42), nullable=True),
        sa.Column("api_key_id", sa.String(32), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("record_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_log_record_hash", "audit_log", ["record_hash"], unique=True)
    op.create_index("ix_audit_log_user_op_hash", "audit_log", ["user_op_hash"])
    op.create_index("ix_audit_log_kind_seq", "audit_log", ["kind", "seq"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("record_hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "record_hash": GENESIS}])


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_table("audit_log")
