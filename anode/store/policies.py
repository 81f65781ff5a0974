"""The policy engine's tables, on the shared ``MetaData`` (migration ``0002``).

They live in the store, the bottom layer, so that the schema (``store/schema.py``) is assembled
without reaching up into ``anode/policy``; the policy repository and the SQL limiter import them.

``policies`` holds each policy as one JSON document (webhook secret included: it signs webhook
bodies, so it cannot be hashed); ``source`` says whether the row came from the settings file or
the API. ``policy_usage`` holds one counter per (policy, limit, window, wallet): ``used`` is wei
or a count, exact to 2**256 (``Uint256``: NUMERIC on PostgreSQL, decimal text on SQLite).
"""

from __future__ import annotations

import sqlalchemy as sa

from anode.store.tables import Uint256, metadata

policies = sa.Table(
    "policies",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("document", sa.JSON(), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

policy_usage = sa.Table(
    "policy_usage",
    metadata,
    sa.Column("counter", sa.String(200), primary_key=True),
    sa.Column("window_start", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("used", Uint256(), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=True),
    # the actual cost inside ``used`` (reconciled by the follower); ``used - spent`` is reserved
    sa.Column("spent", Uint256(), nullable=False, server_default="0"),
    sa.Index("ix_policy_usage_expires_at", "expires_at"),
)

#: the reconciliation adjustments (``limit_adjustments.id``) the SQL limiter has applied, so each applies once
policy_usage_applied = sa.Table(
    "policy_usage_applied",
    metadata,
    sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.BigInteger(), nullable=False),
)
