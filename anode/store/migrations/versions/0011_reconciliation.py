"""Reconciliation: what each signature reserved in the amount limits, and what became of it.

``limit_reservations``: one row per amount-limit counter a signature reserved in, found by the
ledger row's (chain_id, user_op_hash): the counter, its window, the amount reserved (the
operation's maximum cost), its ``state`` (``reserved``, ``settled`` at the actual cost, or
``released`` on expiry) and ``spent``. ``limit_adjustments``: the changes the follower owes the
limiter store (an outbox, applied once by id), written in the same transaction as the outcome.
``policy_usage_applied``: the adjustments a SQL limiter has applied (its idempotency record).
``policy_usage.spent``: the actual cost inside ``used`` (the rest is reserved). ``sponsorships``
gains ``token_amount_paid`` (SingletonPaymaster's ``UserOperationSponsored``) and ``sent_at``
(the relay passed the operation to a bundler).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from anode.store.tables import Uint256

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("sponsorships") as batch:
        batch.add_column(sa.Column("token_amount_paid", Uint256(), nullable=True))
        batch.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("policy_usage") as batch:
        batch.add_column(sa.Column("spent", Uint256(), nullable=False, server_default="0"))
    op.create_table(
        "limit_reservations",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("user_op_hash", sa.String(66), nullable=False),
        sa.Column("counter", sa.String(200), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("amount", Uint256(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="reserved"),
        sa.Column("spent", Uint256(), nullable=True),
    )
    op.create_index("ix_limit_reservations_op", "limit_reservations", ["chain_id", "user_op_hash"])
    op.create_table(
        "limit_adjustments",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("counter", sa.String(200), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("used_delta", sa.String(80), nullable=False),
        sa.Column("spent_delta", sa.String(80), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_limit_adjustments_pending", "limit_adjustments", ["applied", "id"])
    op.create_table(
        "policy_usage_applied",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("applied_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("policy_usage_applied")
    op.drop_index("ix_limit_adjustments_pending", table_name="limit_adjustments")
    op.drop_table("limit_adjustments")
    op.drop_index("ix_limit_reservations_op", table_name="limit_reservations")
    op.drop_table("limit_reservations")
    with op.batch_alter_table("policy_usage") as batch:
        batch.drop_column("spent")
    with op.batch_alter_table("sponsorships") as batch:
        batch.drop_column("sent_at")
        batch.drop_column("token_amount_paid")
