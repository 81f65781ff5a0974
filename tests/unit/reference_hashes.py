"""Reference hashes for the unit tests, written from the contracts' Solidity with ``eth_abi``.

Nothing here imports ``anode``: each function follows the contract source (``abi.encode`` of the
same fields, in the same order) so that a test comparing aNode's fixed-layout encoders with these
compares two independent implementations. Operations are read through attributes only
(``sender``, ``nonce``, ``call_data`` ...), so any object with those fields will do.
"""

from __future__ import annotations

from typing import Any

from eth_abi import encode
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

# -- userOp hashes -----------------------------------------------------------------------------


def ref_hash_v06(op: Any, entry_point: bytes, chain_id: int) -> bytes:
    inner = keccak(
        encode(
            ["address", "uint256", "bytes32", "bytes32"] + ["uint256"] * 5 + ["bytes32"],
            [
                op.sender,
                op.nonce,
                keccak(op.init_code),
                keccak(op.call_data),
                op.call_gas_limit,
                op.verification_gas_limit,
                op.pre_verification_gas,
                op.max_fee_per_gas,
                op.max_priority_fee_per_gas,
                keccak(op.paymaster_and_data),
            ],
        )
    )
    return keccak(encode(["bytes32", "address", "uint256"], [inner, entry_point, chain_id]))


def _packed_fields(op: Any) -> dict[str, Any]:
    """PackedUserOperation fields, packed here from the RPC values (not with anode's helpers)."""
    init_code = b"" if op.factory is None else op.factory + op.factory_data
    pnd = b""
    if op.paymaster is not None:
        pnd = (
            op.paymaster
            + (op.paymaster_verification_gas_limit or 0).to_bytes(16, "big")
            + (op.paymaster_post_op_gas_limit or 0).to_bytes(16, "big")
            + op.paymaster_data
        )
    return {
        "sender": op.sender,
        "nonce": op.nonce,
        "initCode": init_code,
        "callData": op.call_data,
        "accountGasLimits": ((op.verification_gas_limit << 128) | op.call_gas_limit).to_bytes(32, "big"),
        "preVerificationGas": op.pre_verification_gas,
        "gasFees": ((op.max_priority_fee_per_gas << 128) | op.max_fee_per_gas).to_bytes(32, "big"),
        "paymasterAndData": pnd,
    }


def ref_hash_v07(op: Any, entry_point: bytes, chain_id: int) -> bytes:
    f = _packed_fields(op)
    inner = keccak(
        encode(
            ["address", "uint256", "bytes32", "bytes32", "bytes32", "uint256", "bytes32", "bytes32"],
            [
                f["sender"],
                f["nonce"],
                keccak(f["initCode"]),
                keccak(f["callData"]),
                f["accountGasLimits"],
                f["preVerificationGas"],
                f["gasFees"],
                keccak(f["paymasterAndData"]),
            ],
        )
    )
    return keccak(encode(["bytes32", "address", "uint256"], [inner, entry_point, chain_id]))


_PACKED_USER_OPERATION_TYPE = [
    {"name": "sender", "type": "address"},
    {"name": "nonce", "type": "uint256"},
    {"name": "initCode", "type": "bytes"},
    {"name": "callData", "type": "bytes"},
    {"name": "accountGasLimits", "type": "bytes32"},
    {"name": "preVerificationGas", "type": "uint256"},
    {"name": "gasFees", "type": "bytes32"},
    {"name": "paymasterAndData", "type": "bytes"},
]


def ref_hash_v08(op: Any, entry_point: bytes, chain_id: int) -> bytes:
    """EIP-712 through eth-account's typed-data encoder (domain ERC4337 / 1)."""
    fields = _packed_fields(op)
    fields["sender"] = to_checksum_address(fields["sender"])
    message = encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "PackedUserOperation": _PACKED_USER_OPERATION_TYPE,
            },
            "primaryType": "PackedUserOperation",
            "domain": {
                "name": "ERC4337",
                "version": "1",
                "chainId": chain_id,
                "verifyingContract": to_checksum_address(entry_point),
            },
            "message": fields,
        }
    )
    return bytes(_hash_eip191_message(message))


# -- paymaster getHash --------------------------------------------------------------------------

V06_USER_OP_TUPLE = "(address,uint256,bytes,bytes,uint256,uint256,uint256,uint256,uint256,bytes,bytes)"


def ref_verifying_pack_v06(op: Any) -> bytes:
    """``VerifyingPaymaster.pack``: the ABI-encoded UserOperation, cut where paymasterAndData starts."""
    encoded = encode(
        [V06_USER_OP_TUPLE],
        [
            (
                op.sender,
                op.nonce,
                op.init_code,
                op.call_data,
                op.call_gas_limit,
                op.verification_gas_limit,
                op.pre_verification_gas,
                op.max_fee_per_gas,
                op.max_priority_fee_per_gas,
                op.paymaster_and_data,
                op.signature,
            )
        ],
    )
    tuple_data = encoded[32:]  # skip the offset of the (dynamic) tuple itself
    pnd_offset = int.from_bytes(tuple_data[9 * 32 : 10 * 32], "big")
    # pack() copies up to pnd.offset - 32: the length word of paymasterAndData is excluded
    return tuple_data[:pnd_offset]


def ref_verifying_hash_v06(
    op: Any, paymaster: bytes, valid_until: int, valid_after: int, chain_id: int, sender_nonce: int
) -> bytes:
    return keccak(
        encode(
            ["bytes", "uint256", "address", "uint256", "uint48", "uint48"],
            [ref_verifying_pack_v06(op), chain_id, paymaster, sender_nonce, valid_until, valid_after],
        )
    )


def ref_verifying_hash_v07(op: Any, paymaster: bytes, valid_until: int, valid_after: int, chain_id: int) -> bytes:
    f = _packed_fields(op)
    return keccak(
        encode(
            [
                "address",
                "uint256",
                "bytes32",
                "bytes32",
                "bytes32",
                "uint256",
                "uint256",
                "bytes32",
                "uint256",
                "address",
                "uint48",
                "uint48",
            ],
            [
                f["sender"],
                f["nonce"],
                keccak(f["initCode"]),
                keccak(f["callData"]),
                f["accountGasLimits"],
                int.from_bytes(f["paymasterAndData"][20:52], "big"),
                f["preVerificationGas"],
                f["gasFees"],
                chain_id,
                paymaster,
                valid_until,
                valid_after,
            ],
        )
    )


_SINGLETON_CONFIG = 1 + 6 + 6  # mode byte, validUntil, validAfter


def ref_singleton_hash_v06(op: Any, chain_id: int) -> bytes:
    inner = keccak(
        encode(
            ["address", "uint256"] + ["uint256"] * 5 + ["bytes32"] * 3,
            [
                op.sender,
                op.nonce,
                op.call_gas_limit,
                op.verification_gas_limit,
                op.pre_verification_gas,
                op.max_fee_per_gas,
                op.max_priority_fee_per_gas,
                keccak(op.call_data),
                keccak(op.init_code),
                keccak(op.paymaster_and_data[: 20 + _SINGLETON_CONFIG]),
            ],
        )
    )
    return keccak(encode(["bytes32", "uint256"], [inner, chain_id]))


def ref_singleton_hash_v07(op: Any, chain_id: int) -> bytes:
    f = _packed_fields(op)
    inner = keccak(
        encode(
            ["address", "uint256", "bytes32", "uint256", "bytes32", "bytes32", "bytes32", "bytes32"],
            [
                f["sender"],
                f["nonce"],
                f["accountGasLimits"],
                f["preVerificationGas"],
                f["gasFees"],
                keccak(f["initCode"]),
                keccak(f["callData"]),
                keccak(f["paymasterAndData"][: 52 + _SINGLETON_CONFIG]),
            ],
        )
    )
    return keccak(encode(["bytes32", "uint256"], [inner, chain_id]))


def ref_singleton_hash_v08_7702(op: Any, chain_id: int) -> bytes:
    return keccak(encode(["bytes32", "bytes32"], [ref_singleton_hash_v07(op, chain_id), b"\x00" * 32]))
