"""Pimlico ``SingletonPaymaster`` V6 / V7 / V8, verifying mode.

Layout after the paymaster address (V7/V8: after the two 16-byte gas limits as well)::

    mode << 1 | allowAllBundlers   1 byte   (verifying mode = 0; aNode sets allowAllBundlers)
    validUntil                     6 bytes
    validAfter                     6 bytes
    signature                      65 bytes

``getHash(mode, userOp)`` hashes the operation with every paymaster byte but the signature, then
binds the chain id. Some V8 builds additionally bind the EIP-7702 initCode override (zero for
ordinary accounts); the build in ``@pimlico/mock-paymaster`` does not. Which one a deployed contract
uses is found at start-up by comparing with its own ``getHash`` (see ``pipeline/selfcheck.py``).
The contract accepts any address in its ``signers`` set.
"""

from __future__ import annotations

from anode.paymasters.base import GasDefaults, PaymasterFamily, ValidityWindow, abi_call, user_op_abi
from anode.userop.hashing import address_word, keccak, packed_paymaster_and_data, word
from anode.userop.models import UserOperation, UserOperationV06
from anode.userop.versions import EntryPointVersion

VERIFYING_MODE = 0
_ALLOW_ALL_BUNDLERS = 1
_CONFIG_LENGTH = 1 + 6 + 6
_ZERO_WORD = b"\x00" * 32


class SingletonPaymaster(PaymasterFamily):
    name = "singleton"
    versions = frozenset({EntryPointVersion.V06, EntryPointVersion.V07, EntryPointVersion.V08})

    def __init__(
        self, address: bytes, version: EntryPointVersion, gas: GasDefaults, *, bind_7702_override: bool = False
    ) -> None:
        super().__init__(address, version, gas)
        #: V8 builds that wrap the V7 hash with the EIP-7702 initCode override (zero for ordinary accounts)
        self.bind_7702_override = bind_7702_override and version is EntryPointVersion.V08

    def alternatives(self) -> list[PaymasterFamily]:
        if self.version is not EntryPointVersion.V08:
            return []
        return [
            SingletonPaymaster(self.address, self.version, self.gas, bind_7702_override=not self.bind_7702_override)
        ]

    def get_hash_call(self, op: UserOperation, window: ValidityWindow) -> bytes:
        kind, value = user_op_abi(op)
        return abi_call(f"getHash(uint8,{kind})", ["uint8", kind], [VERIFYING_MODE, value])

    def encode(self, window: ValidityWindow, signature: bytes) -> bytes:
        return (
            bytes([VERIFYING_MODE << 1 | _ALLOW_ALL_BUNDLERS])
            + window.valid_until.to_bytes(6, "big")
            + window.valid_after.to_bytes(6, "big")
            + signature
        )

    def digest(self, op: UserOperation, window: ValidityWindow, chain_id: int, sender_nonce: int) -> bytes:
        if isinstance(op, UserOperationV06):
            return self.hash_with_prefix(op, op.paymaster_and_data[: 20 + _CONFIG_LENGTH], chain_id)
        return self.hash_with_prefix(op, packed_paymaster_and_data(op)[: 52 + _CONFIG_LENGTH], chain_id)

    def hash_with_prefix(self, op: UserOperation, paymaster_prefix: bytes, chain_id: int) -> bytes:
        """The contract's ``_getHash`` of ``op`` given the signed part of its ``paymasterAndData``.

        ``paymaster_prefix`` is ``paymasterAndData`` up to the signature: address and config (V6);
        address, the two 16-byte gas limits and config (V7/V8). Both modes hash this way.
        """
        if isinstance(op, UserOperationV06):
            inner = keccak(
                address_word(op.sender)
                + word(op.nonce)
                + word(op.call_gas_limit)
                + word(op.verification_gas_limit)
                + word(op.pre_verification_gas)
                + word(op.max_fee_per_gas)
                + word(op.max_priority_fee_per_gas)
                + keccak(op.call_data)
                + keccak(op.init_code)
                + keccak(paymaster_prefix)
            )
            return keccak(inner + word(chain_id))
        inner = keccak(
            address_word(op.sender)
            + word(op.nonce)
            + op.account_gas_limits
            + word(op.pre_verification_gas)
            + op.gas_fees
            + keccak(op.init_code)
            + keccak(op.call_data)
            + keccak(paymaster_prefix)
        )
        hashed = keccak(inner + word(chain_id))
        if self.bind_7702_override:
            return keccak(hashed + _ZERO_WORD)
        return hashed
