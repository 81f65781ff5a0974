"""Start-up self-check: aNode's hash for each paymaster must equal the contract's own ``getHash``.

A probe operation is hashed locally and by the deployed contract (``eth_call``). Where a family
knows several deployed variants (SingletonPaymaster V8 with or without the EIP-7702 binding), the
matching one is chosen; where none matches, the server refuses to start rather than hand out
signatures the contract would reject (AA34).
"""

from __future__ import annotations

from typing import Any

from anode.errors import ConfigError, UpstreamRejected
from anode.paymasters.base import PaymasterFamily, ValidityWindow, dummy_signature
from anode.paymasters.registry import FAMILIES
from anode.pipeline.routes import Route
from anode.userop.codec import checksum
from anode.userop.models import UserOperation, UserOperationV06, UserOperationV07

_PROBE_SENDER = bytes.fromhex("a11ce0000000000000000000000000000000a11c")
_PROBE_WINDOW = ValidityWindow(valid_until=0xFFFFFFFFFFFF, valid_after=1)


def _probe(route: Route) -> UserOperation:
    fields: dict[str, Any] = {
        "sender": _PROBE_SENDER,
        "nonce": 7,
        "call_data": b"\x01\x02\x03",
        "call_gas_limit": 100_000,
        "verification_gas_limit": 200_000,
        "pre_verification_gas": 50_000,
        "max_fee_per_gas": 3,
        "max_priority_fee_per_gas": 2,
    }
    if route.version.packed:
        return UserOperationV07.model_construct(**fields)
    return UserOperationV06.model_construct(**fields)


async def _disagreement(route: Route, family: PaymasterFamily) -> str | None:
    """``None`` when the deployed contract hashes the probe as ``family`` does; else what it did."""
    op = family.attach(_probe(route), family.encode(_PROBE_WINDOW, dummy_signature()))
    try:
        onchain = await route.chain.call(family.address, family.get_hash_call(op, _PROBE_WINDOW))
    except UpstreamRejected as exc:  # another family's contract reverts this family's call: a mismatch
        return f"its getHash() reverted ({exc.message})"
    if not onchain:
        return "its getHash() returned nothing (is a contract deployed at this address on this chain?)"
    sender_nonce = 0
    if family.needs_sender_nonce:
        try:
            sender_nonce = await route.chain.sender_nonce(family.address, op.sender)
        except UpstreamRejected as exc:
            return f"its senderNonce() reverted ({exc.message})"
    if onchain[:32] != family.digest(op, _PROBE_WINDOW, route.chain_id, sender_nonce):
        return "its getHash() returned another hash"
    return None


async def verified_family(route: Route) -> PaymasterFamily:
    """The family variant whose hash the deployed contract agrees with; ``ConfigError`` if none.

    A call the contract reverts counts as a mismatch; a node that cannot be reached raises
    ``ChainUnavailable``.
    """
    first: str | None = None
    for candidate in [route.paymaster, *route.paymaster.alternatives()]:
        reason = await _disagreement(route, candidate)
        if reason is None:
            return candidate
        first = first or reason
    families = " or ".join(sorted(FAMILIES))
    raise ConfigError(
        f"paymaster {checksum(route.paymaster.address)} on chain {route.chain_id} does not hash like a "
        f"`contract: {route.paymaster.name}` paymaster for EntryPoint {route.version.value}: {first}. "
        f"Check `contract:` for this paymaster ({families}) and its address (is it the contract you think it is?)"
    )
