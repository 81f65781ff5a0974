"""The calls an operation makes: what ``contract`` policies and ``function``/``target``/``value`` conditions see.

The calls are decoded by one decoder whichever modules run: the security filter's
(``anode.pipeline.security.decode``: SimpleAccount ``execute``/``executeBatch`` in the v0.6, v0.7
and v0.8 forms, ERC-7579 single, batch and delegatecall). The policy engine module and the dry run
(``pm_validateSponsorshipPolicies``) both call ``anode.pipeline.modules.policy_engine.calls_of``,
which brings that decoder's calls into this module's form. Empty callData makes no call (``()``);
anything the decoder does not understand is ``None``: the calls are unknown, so no contract
policy applies and call conditions fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from eth_hash.auto import keccak

#: the selector of a call that carries no data (a plain transfer)
NO_FUNCTION = "0x"


@dataclass(frozen=True, slots=True)
class Call:
    target: str  # checksum address
    value: int
    selector: str  # "0xa9059cbb", or "0x" for no data


@lru_cache(maxsize=65_536)
def checksum_of(address: bytes) -> str:
    """EIP-55 checksum of a 20-byte address; cached, since the same senders and contracts recur."""
    lower = address.hex()
    digest = keccak(lower.encode()).hex()
    return "0x" + "".join(c.upper() if c > "9" and digest[i] >= "8" else c for i, c in enumerate(lower))
