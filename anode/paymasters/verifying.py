"""eth-infinitism ``VerifyingPaymaster`` (samples/VerifyingPaymaster.sol), v0.6 and v0.7.

Layout after the paymaster address (v0.7: after the two 16-byte gas limits as well)::

    abi.encode(uint48 validUntil, uint48 validAfter)   64 bytes
    signature                                          65 bytes

``getHash`` differs by version. v0.6 hashes ``pack(userOp)`` - the operation's ABI calldata up
to ``paymasterAndData`` - with the paymaster's per-sender ``senderNonce``; v0.7 hashes the
fields, the paymaster gas limits and the window.
"""

from __future__ import annotations

from anode.paymasters.base import PaymasterFamily, ValidityWindow, abi_call, user_op_abi
from anode.userop.hashing import address_word, keccak, word
from anode.userop.models import UserOperation, UserOperationV06
from anode.userop.versions import EntryPointVersion

_SIGNATURE_LENGTH = 65
_DATA_LENGTH = 64 + _SIGNATURE_LENGTH


def _padded(data: bytes) -> bytes:
    """ABI tail of a ``bytes`` value: length word, then data right-padded to 32 bytes."""
    return word(len(data)) + data + b"\x00" * (-len(data) % 32)


def pack_v06(op: UserOperationV06, paymaster_and_data_length: int) -> bytes:
    """The calldata copy ``VerifyingPaymaster.pack`` makes (v0.6), under standard ABI encoding."""
    init_tail = _padded(op.init_code)
    call_tail = _padded(op.call_data)
    init_offset = 11 * 32
    call_offset = init_offset + len(init_tail)
    pnd_offset = call_offset + len(call_tail)
    sig_offset = pnd_offset + 32 + paymaster_and_data_length + (-paymaster_and_data_length % 32)
    head = (
        address_word(op.sender)
        + word(op.nonce)
        + word(init_offset)
        + word(call_offset)
        + word(op.call_gas_limit)
        + word(op.verification_gas_limit)
        + word(op.pre_verification_gas)
        + word(op.max_fee_per_gas)
        + word(op.max_priority_fee_per_gas)
        + word(pnd_offset)
        + word(sig_offset)
    )
    return head + init_tail + call_tail


class VerifyingPaymaster(PaymasterFamily):
    name = "verifying"
    versions = frozenset({EntryPointVersion.V06, EntryPointVersion.V07})

    @property
    def needs_sender_nonce(self) -> bool:  # type: ignore[override]
        return self.version is EntryPointVersion.V06

    def get_hash_call(self, op: UserOperation, window: ValidityWindow) -> bytes:
        kind, value = user_op_abi(op)
        return abi_call(
            f"getHash({kind},uint48,uint48)",
            [kind, "uint48", "uint48"],
            [value, window.valid_until, window.valid_after],
        )

    def encode(self, window: ValidityWindow, signature: bytes) -> bytes:
        return word(window.valid_until) + word(window.valid_after) + signature

    def digest(self, op: UserOperation, window: ValidityWindow, chain_id: int, sender_nonce: int) -> bytes:
        if isinstance(op, UserOperationV06):
            packed = pack_v06(op, 20 + _DATA_LENGTH)
            return keccak(
                word(6 * 32)
                + word(chain_id)
                + address_word(self.address)
                + word(sender_nonce)
                + word(window.valid_until)
                + word(window.valid_after)
                + word(len(packed))
                + packed
            )
        pm_gas = (op.paymaster_verification_gas_limit or 0) << 128 | (op.paymaster_post_op_gas_limit or 0)
        return keccak(
            address_word(op.sender)
            + word(op.nonce)
            + keccak(op.init_code)
            + keccak(op.call_data)
            + op.account_gas_limits
            + word(pm_gas)
            + word(op.pre_verification_gas)
            + op.gas_fees
            + word(chain_id)
            + address_word(self.address)
            + word(window.valid_until)
            + word(window.valid_after)
        )
