"""The paymaster's approval and the signer rotation proof: the typed data lives in
``anode/signers/kms_approval.py``, shared with aNode's passkey flow, which signs the approval."""

from __future__ import annotations

from anode.signers.kms_approval import (
    APPROVAL_TYPE,
    DOMAIN_TYPE,
    NAME,
    ROTATION_DOMAIN,
    ROTATION_DOMAIN_TYPE,
    ROTATION_TYPE,
    VERSION,
    approval_digest,
    domain_separator,
    recover,
    rotation_digest,
)

__all__ = [
    "APPROVAL_TYPE",
    "DOMAIN_TYPE",
    "NAME",
    "ROTATION_DOMAIN",
    "ROTATION_DOMAIN_TYPE",
    "ROTATION_TYPE",
    "VERSION",
    "approval_digest",
    "domain_separator",
    "recover",
    "rotation_digest",
]
