"""An index on each API key's unused confirmation tokens: issuing a token trims that key's
surplus (``max_pending_confirmations``) with one range scan of it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_confirmations_key_pending", "confirmations", ["api_key_id", "used_at", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_confirmations_key_pending", table_name="confirmations")
