"""The database schema, as SQLAlchemy Core tables. Alembic migrations create and upgrade it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class Uint256(sa.types.TypeDecorator[int]):
    """An unsigned 256-bit integer: ``NUMERIC(78, 0)`` where exact, decimal text on SQLite.

    SQLite's NUMERIC affinity would turn values past 2**63 into floats; text keeps them exact.
    """

    impl = sa.Numeric(78, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(78))
        return dialect.type_descriptor(sa.Numeric(78, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return str(value) if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


sponsorships = sa.Table(
    "sponsorships",
    metadata,
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
    # the outcome on chain, written by the EntryPoint follower (anode/watch/): signed, included, expired
    sa.Column("status", sa.String(16), nullable=False, server_default="signed"),
    sa.Column("tx_hash", sa.String(66), nullable=True),
    sa.Column("block_number", sa.BigInteger(), nullable=True),
    sa.Column("success", sa.Boolean(), nullable=True),
    sa.Column("actual_gas_cost_wei", Uint256(), nullable=True),
    sa.Column("actual_gas_used", Uint256(), nullable=True),
    # verifying (the sponsor pays) or erc20 (the sender pays the sponsor in `token` at `exchange_rate`)
    sa.Column("mode", sa.String(16), nullable=False, server_default="verifying"),
    sa.Column("token", sa.String(42), nullable=True),
    sa.Column("exchange_rate", Uint256(), nullable=True),
    sa.Column("max_token_amount", Uint256(), nullable=True),
    # SingletonPaymaster's UserOperationSponsored.tokenAmountPaid (ERC-20 mode), and when the relay sent it
    sa.Column("token_amount_paid", Uint256(), nullable=True),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_sponsorships_sender_created", "sender", "created_at"),
    sa.Index("ix_sponsorships_created", "created_at"),
    sa.Index("ix_sponsorships_user_op_hash", "user_op_hash"),
    sa.Index("ix_sponsorships_chain_status", "chain_id", "status", "valid_until"),
    sa.Index("ix_sponsorships_chain_block", "chain_id", "block_number"),
)

# what the signer manager went through (``anode/signers/manager.py``): a failover from one backend to
# the next, counted per flush (``count``), and a backend's health or circuit changing; each server
# process writes its own (``process``), off the signing path (``store/signer_events.py``)
signer_events = sa.Table(
    "signer_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    # failover, unhealthy, healthy, circuit_open, circuit_closed
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("backend", sa.String(64), nullable=False),
    sa.Column("address", sa.String(42), nullable=False),
    # a failover's next backend
    sa.Column("to_backend", sa.String(64), nullable=True),
    sa.Column("to_address", sa.String(42), nullable=True),
    sa.Column("count", sa.BigInteger(), nullable=False),
    sa.Column("detail", sa.String(200), nullable=True),
    sa.Column("process", sa.String(64), nullable=False),
    sa.Index("ix_signer_events_at", "at"),
)
