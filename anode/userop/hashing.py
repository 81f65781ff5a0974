"""UserOperation hashes exactly as each EntryPoint computes ``getUserOpHash``.

Fixed-layout encoders (32-byte words joined) replace a generic ABI encoder on this hot path;
tests prove byte equality against the EntryPoints' own ``getUserOpHash`` on anvil.
"""

from __future__ import annotations

from anode.userop.keccak import keccak as keccak  # re-exported: families hash with it
from anode.userop.models import UserOperation, UserOperationV06, UserOperationV07
from anode.userop.versions import EntryPointVersion


def word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def address_word(address: bytes) -> bytes:
    return b"\x00" * 12 + address


_PACKED_USEROP_TYPEHASH = keccak(
    b"PackedUserOperation(address sender,uint256 nonce,bytes initCode,bytes callData,"
    b"bytes32 accountGasLimits,uint256 preVerificationGas,bytes32 gasFees,bytes paymasterAndData)"
)
_EIP712_DOMAIN_TYPEHASH = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
_DOMAIN_NAME = keccak(b"ERC4337")
_DOMAIN_VERSION = keccak(b"1")


def packed_paymaster_and_data(op: UserOperationV07, paymaster_data: bytes | None = None) -> bytes:
    """``paymaster ‖ pmVerificationGas(16) ‖ pmPostOpGas(16) ‖ paymasterData`` (empty without paymaster)."""
    if op.paymaster is None:
        return b""
    data = op.paymaster_data if paymaster_data is None else paymaster_data
    return (
        op.paymaster
        + (op.paymaster_verification_gas_limit or 0).to_bytes(16, "big")
        + (op.paymaster_post_op_gas_limit or 0).to_bytes(16, "big")
        + data
    )


def _v06_inner(op: UserOperationV06) -> bytes:
    return keccak(
        address_word(op.sender)
        + word(op.nonce)
        + keccak(op.init_code)
        + keccak(op.call_data)
        + word(op.call_gas_limit)
        + word(op.verification_gas_limit)
        + word(op.pre_verification_gas)
        + word(op.max_fee_per_gas)
        + word(op.max_priority_fee_per_gas)
        + keccak(op.paymaster_and_data)
    )


def _v07_struct(op: UserOperationV07, typehash: bytes = b"") -> bytes:
    return keccak(
        typehash
        + address_word(op.sender)
        + word(op.nonce)
        + keccak(op.init_code)
        + keccak(op.call_data)
        + op.account_gas_limits
        + word(op.pre_verification_gas)
        + op.gas_fees
        + keccak(packed_paymaster_and_data(op))
    )


def eip712_domain_separator(entry_point: bytes, chain_id: int) -> bytes:
    return keccak(_EIP712_DOMAIN_TYPEHASH + _DOMAIN_NAME + _DOMAIN_VERSION + word(chain_id) + address_word(entry_point))


def user_op_hash(op: UserOperation, version: EntryPointVersion, entry_point: bytes, chain_id: int) -> bytes:
    """The hash the EntryPoint emits in ``UserOperationEvent`` for this operation.

    EIP-7702 operations on v0.8 (initCode starting with the 0x7702 marker) hash the sender's
    delegate instead of the initCode; that needs chain state and is not computed here.
    """
    if isinstance(op, UserOperationV06):
        return keccak(_v06_inner(op) + address_word(entry_point) + word(chain_id))
    if version is EntryPointVersion.V08:
        struct = _v07_struct(op, _PACKED_USEROP_TYPEHASH)
        return keccak(b"\x19\x01" + eip712_domain_separator(entry_point, chain_id) + struct)
    return keccak(_v07_struct(op) + address_word(entry_point) + word(chain_id))
