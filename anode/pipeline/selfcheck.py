"""Start-up self-check: aNode's hash for each paymaster must equal the contract's own ``getHash``.

A probe operation is hashed locally and by the deployed contract (``eth_call``). Where a family
knows several deployed variants (SingletonPaymaster V8 with or without the EIP-7702 binding), the
matching one is chosen; where none matches, the server refuses to start rather than hand out
signatures the contract would reject (AA34).
"""

from __future__ import annotations

from typing import Any

from anode.errors import ConfigError
from anode.paymasters.base import PaymasterFamily, ValidityWindow, dummy_signature
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


async def _matches(route: Route, family: PaymasterFamily) -> bool:
    op = family.attach(_probe(route), family.encode(_PROBE_WINDOW, dummy_signature()))
    sender_nonce = 0
    if family.needs_sender_nonce:
        sender_nonce = await route.chain.sender_nonce(family.address, op.sender)
    local = family.digest(op, _PROBE_WINDOW, route.chain_id, sender_nonce)
    onchain = await route.chain.call(family.address, family.get_hash_call(op, _PROBE_WINDOW))
    return onchain[:32] == local


async def verified_family(route: Route) -> PaymasterFamily:
    """The family variant whose hash the deployed contract agrees with; ``ConfigError`` if none."""
    for candidate in [route.paymaster, *route.paymaster.alternatives()]:
        if await _matches(route, candidate):
            return candidate
    raise ConfigError(
        f"paymaster {checksum(route.paymaster.address)} on chain {route.chain_id}: its getHash() does not "
        f"match aNode's {route.paymaster.name} hash for EntryPoint {route.version.value}; check `contract:` and "
        "the address (is it the contract you think it is?)"
    )
