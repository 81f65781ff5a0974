"""Every table aNode keeps, gathered on one ``MetaData`` (Alembic's comparison target).

Packages that own tables define them on ``anode.store.tables.metadata`` in their own module and
are imported here, one line each. Their migrations branch from ``0001`` (``down_revision =
"0001"``) and the schema is upgraded to all heads.
"""

from __future__ import annotations

from anode.policy.tables import policies, policy_usage
from anode.store.api_keys import api_keys
from anode.store.audit import audit_head, audit_log
from anode.store.confirmations import confirmations
from anode.store.tables import metadata, sponsorships

__all__ = [
    "api_keys",
    "audit_head",
    "audit_log",
    "confirmations",
    "metadata",
    "policies",
    "policy_usage",
    "sponsorships",
]
