"""Wire shapes of sponsorship results (ERC-7677 and the pm_sponsorUserOperation family)."""

from __future__ import annotations

from typing import Any

from anode.sponsorship import Sponsored
from anode.userop.codec import checksum, to_hex
from anode.userop.models import UserOperationV06


def paymaster_fields(result: Sponsored) -> dict[str, Any]:
    op = result.op
    if isinstance(op, UserOperationV06):
        return {"paymasterAndData": to_hex(op.paymaster_and_data)}
    assert op.paymaster is not None
    return {
        "paymaster": checksum(op.paymaster),
        "paymasterData": to_hex(op.paymaster_data),
        "paymasterVerificationGasLimit": hex(op.paymaster_verification_gas_limit or 0),
        "paymasterPostOpGasLimit": hex(op.paymaster_post_op_gas_limit or 0),
    }


def gas_fields(result: Sponsored) -> dict[str, Any]:
    op = result.op
    return {
        "preVerificationGas": hex(op.pre_verification_gas),
        "verificationGasLimit": hex(op.verification_gas_limit),
        "callGasLimit": hex(op.call_gas_limit),
    }


def sponsor_info(name: str, icon: str | None) -> dict[str, str]:
    info = {"name": name}
    if icon:
        info["icon"] = icon
    return info


def signed_extras(result: Sponsored) -> dict[str, Any]:
    extras: dict[str, Any] = {
        "validUntil": hex(result.window.valid_until),
        "validAfter": hex(result.window.valid_after),
    }
    if result.user_op_hash is not None:
        extras["userOpHash"] = to_hex(result.user_op_hash)
    return extras
