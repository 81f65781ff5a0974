"""ERC-20 mode on the ledger: which mode each signature was given in, and the token terms it carries.

``sponsorships`` gains ``mode`` (``verifying``: the sponsor pays the gas; ``erc20``: the sender pays
the sponsor in a token), and for ERC-20 signatures the ``token``, the signed ``exchange_rate``
(token units per 10^18 wei, up to 2^256) and ``max_token_amount`` (the most the op can be charged).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from anode.store.tables import Uint256

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sponsorships") as batch:
        batch.add_column(sa.Column("mode", sa.String(16), nullable=False, server_default="verifying"))
        batch.add_column(sa.Column("token", sa.String(42), nullable=True))
        batch.add_column(sa.Column("exchange_rate", Uint256(), nullable=True))
        batch.add_column(sa.Column("max_token_amount", Uint256(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sponsorships") as batch:
        for column in ("max_token_amount", "exchange_rate", "token", "mode"):
            batch.drop_column(column)
