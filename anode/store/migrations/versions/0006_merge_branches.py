"""One head again: 0002-0005 each branched from 0001; this merge joins them.

A database at the four old heads (every earlier aNode upgraded to "heads") upgrades to this
revision without any schema change, and so does a database at 0001 only (it first gets 0002-0005).
New migrations descend from here, one after another.

Revision ID: 0006
Revises: 0002, 0003, 0004, 0005
Create Date: 2026-11-28
"""

revision = "0006"
down_revision = ("0002", "0003", "0004", "0005")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
