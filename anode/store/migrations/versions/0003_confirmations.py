"""Confirmation tokens: one row per token the security filter issued (its SHA-256, never the token).

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "confirmations",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("op_digest", sa.String(66), nullable=False),
        sa.Column("api_key_id", sa.String(32), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_confirmations_expires", "confirmations", ["expires_at"])


def downgrade() -> None:
    op.drop_table("confirmations")
