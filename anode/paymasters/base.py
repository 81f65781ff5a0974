"""What every paymaster contract family provides, and the types that cross between them.

A family module (``verifying.py``, ``singleton.py``) knows its contract's byte layout and its
``getHash``; the sponsorship service knows nothing of layouts. Adding a family is one module plus
one line in ``registry.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from anode.errors import InvalidRequest
from anode.signers.base import eip191_digest as eip191_digest  # the one EIP-191 prefix is the signers'
from anode.userop.hashing import keccak
from anode.userop.models import UserOperation, UserOperationV06, UserOperationV07
from anode.userop.versions import EntryPointVersion


@dataclass(frozen=True, slots=True)
class ValidityWindow:
    valid_until: int
    valid_after: int


@dataclass(frozen=True, slots=True)
class GasDefaults:
    """v0.7+ paymaster gas limits used when the userOp does not carry its own."""

    verification_gas_limit: int
    post_op_gas_limit: int


class PaymasterFamily(ABC):
    """One deployed paymaster contract of a family, bound to its EntryPoint version."""

    #: the family's name in configuration (``contract: verifying``)
    name: str
    #: versions the family's contracts exist for
    versions: frozenset[EntryPointVersion]
    #: whether ``digest`` needs the on-chain ``senderNonce(sender)`` of the paymaster
    needs_sender_nonce: bool = False

    def __init__(self, address: bytes, version: EntryPointVersion, gas: GasDefaults) -> None:
        if version not in self.versions:
            supported = ", ".join(sorted(v.value for v in self.versions))
            raise ValueError(f"{self.name} paymasters exist for EntryPoint {supported}, not {version.value}")
        self.address = address
        self.version = version
        self.gas = gas

    @abstractmethod
    def encode(self, window: ValidityWindow, signature: bytes) -> bytes:
        """The paymaster's own bytes: ``paymasterData`` (v0.7+) or what follows the address (v0.6)."""

    @abstractmethod
    def digest(self, op: UserOperation, window: ValidityWindow, chain_id: int, sender_nonce: int) -> bytes:
        """The contract's ``getHash`` for ``op`` as it will be submitted (paymaster fields set)."""

    @abstractmethod
    def get_hash_call(self, op: UserOperation, window: ValidityWindow) -> bytes:
        """Calldata for the contract's own ``getHash`` on ``op`` (start-up self-check; not a hot path)."""

    def alternatives(self) -> list[PaymasterFamily]:
        """Other hash variants deployed contracts of this family are known to use."""
        return []

    def attach(self, op: UserOperation, paymaster_data: bytes) -> UserOperation:
        """``op`` carrying this paymaster and ``paymaster_data``, as the wallet will submit it."""
        if isinstance(op, UserOperationV06):
            return op.model_copy(update={"paymaster_and_data": self.address + paymaster_data})
        return op.model_copy(
            update={
                "paymaster": self.address,
                "paymaster_verification_gas_limit": _or_default(
                    op.paymaster_verification_gas_limit, self.gas.verification_gas_limit
                ),
                "paymaster_post_op_gas_limit": _or_default(op.paymaster_post_op_gas_limit, self.gas.post_op_gas_limit),
                "paymaster_data": paymaster_data,
            }
        )

    def check(self, op: UserOperation) -> None:
        """Refuse what this contract would refuse, before anything is signed."""
        if isinstance(op, UserOperationV07) and op.factory == _EIP7702:
            raise InvalidRequest("EIP-7702 operations (factory 0x7702) are not supported yet", field="userOp.factory")


_EIP7702 = bytes.fromhex("7702") + b"\x00" * 18


def user_op_abi(op: UserOperation) -> tuple[str, tuple[object, ...]]:
    """The ABI type and value of ``op`` as contracts take it (v0.6 struct or PackedUserOperation)."""
    from anode.userop.hashing import packed_paymaster_and_data

    if isinstance(op, UserOperationV06):
        kind = "(address,uint256,bytes,bytes,uint256,uint256,uint256,uint256,uint256,bytes,bytes)"
        value: tuple[object, ...] = (
            op.sender, op.nonce, op.init_code, op.call_data, op.call_gas_limit, op.verification_gas_limit,
            op.pre_verification_gas, op.max_fee_per_gas, op.max_priority_fee_per_gas, op.paymaster_and_data,
            op.signature,
        )  # fmt: skip
        return kind, value
    kind = "(address,uint256,bytes,bytes,bytes32,uint256,bytes32,bytes,bytes)"
    value = (
        op.sender, op.nonce, op.init_code, op.call_data, op.account_gas_limits, op.pre_verification_gas,
        op.gas_fees, packed_paymaster_and_data(op), op.signature,
    )  # fmt: skip
    return kind, value


def abi_call(signature: str, types: list[str], values: list[object]) -> bytes:
    from eth_abi.abi import encode
    from eth_utils.crypto import keccak as _keccak

    return _keccak(text=signature)[:4] + encode(types, values)


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value


def dummy_signature() -> bytes:
    """A well-formed 65-byte signature with no zero byte, for stub data.

    It recovers to an unrelated address, so a paymaster validating it returns
    SIG_VALIDATION_FAILED instead of reverting: bundlers can estimate gas with it, and it is never
    shorter or has more zero bytes than a real signature (ERC-7677).
    """
    return _DUMMY_SIGNATURE


def _make_dummy_signature() -> bytes:
    from coincurve import PrivateKey

    key = PrivateKey(keccak(b"anode stub signer"))
    counter = 0
    while True:
        sig = key.sign_recoverable(keccak(b"anode stub %d" % counter), hasher=None)
        candidate = sig[:64] + bytes([sig[64] + 27])
        if 0 not in candidate:
            return candidate
        counter += 1


_DUMMY_SIGNATURE = _make_dummy_signature()
