"""Every table aNode keeps, gathered on one ``MetaData`` (Alembic's comparison target).

Each table is defined on ``anode.store.tables.metadata`` in a module of the store (the bottom of
the line ``api → pipeline → … → store``, so nothing here reaches up) and imported here, one line
each. Migrations form one line of revisions (``0006`` merged the branches 0002-0005 had from
``0001``): a new one names the current head as its ``down_revision``.
"""

from __future__ import annotations

from anode.store.api_keys import api_keys
from anode.store.audit import audit_head, audit_log
from anode.store.blacklist import contract_blacklist
from anode.store.confirmations import confirmations
from anode.store.dashboard import sponsorship_outcomes
from anode.store.deposits import deposit_samples, deposit_watch
from anode.store.policies import policies, policy_usage, policy_usage_applied
from anode.store.reconcile import limit_adjustments, limit_reservations
from anode.store.tables import metadata, signer_events, sponsorships
from anode.store.watch import unknown_operations, watch_blocks, watch_cursors, watch_lease

__all__ = [
    "api_keys",
    "audit_head",
    "audit_log",
    "confirmations",
    "contract_blacklist",
    "deposit_samples",
    "deposit_watch",
    "limit_adjustments",
    "limit_reservations",
    "metadata",
    "policies",
    "policy_usage",
    "policy_usage_applied",
    "signer_events",
    "sponsorship_outcomes",
    "sponsorships",
    "unknown_operations",
    "watch_blocks",
    "watch_cursors",
    "watch_lease",
]
