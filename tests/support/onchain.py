"""Helpers for tests that run against anvil and a :class:`~anode.devchain.deploy.Deployment`.

They are written independently of ``anode.userop`` on purpose: a test that builds a userOp here,
hashes it with the EntryPoint's own ``getUserOpHash`` and submits it with :func:`handle_ops`
checks aNode's code against the contracts, not against itself.

Accounts (anvil's default mnemonic): account 0 deploys and owns the paymasters, account 1
(:data:`USER_KEY`) owns the test SimpleAccounts, account 2 (:data:`BUNDLER`) submits ``handleOps``
and is the beneficiary, account 9 (``tests/integration/conftest.py``) signs for the paymasters.

Signatures (read from each version's ``SimpleAccount.sol``): v0.6 and v0.7 accounts recover the
owner from the EIP-191 form ``toEthSignedMessageHash(userOpHash)``; the v0.8 account recovers from
the raw ``userOpHash``, which is already an EIP-712 digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from eth_abi.abi import decode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS
from anode.devchain.rpc import DevRpc, RpcError, encode_call

DEPLOYER_KEY = DEFAULT_ACCOUNT_KEYS[0]
USER_KEY = DEFAULT_ACCOUNT_KEYS[1]
USER_ADDRESS = Account.from_key(USER_KEY).address
BUNDLER_KEY = DEFAULT_ACCOUNT_KEYS[2]
BUNDLER = Account.from_key(BUNDLER_KEY).address

V06_USER_OP = "(address,uint256,bytes,bytes,uint256,uint256,uint256,uint256,uint256,bytes,bytes)"
PACKED_USER_OP = "(address,uint256,bytes,bytes,bytes32,uint256,bytes32,bytes,bytes)"
_FAILED_OP = function_signature_to_4byte_selector("FailedOp(uint256,string)")
_FAILED_OP_WITH_REVERT = function_signature_to_4byte_selector("FailedOpWithRevert(uint256,string,bytes)")
_ERROR_STRING = function_signature_to_4byte_selector("Error(string)")
USER_OPERATION_EVENT = keccak(text="UserOperationEvent(bytes32,address,address,uint256,bool,uint256,uint256)")
USER_OPERATION_REVERT_REASON = keccak(text="UserOperationRevertReason(bytes32,address,uint256,bytes)")


def user_op_type(version: str) -> str:
    """The ABI tuple type of a userOp for an EntryPoint version."""
    return V06_USER_OP if version == "v0.6" else PACKED_USER_OP


def pack_uint128s(high: int, low: int) -> bytes:
    """``high(16) ‖ low(16)``: accountGasLimits (verification, call) and gasFees (priority, max)."""
    return high.to_bytes(16, "big") + low.to_bytes(16, "big")


@dataclass(frozen=True)
class UserOp:
    """A userOp in the unpacked (RPC) form of v0.7+, which packs into any version's ABI tuple.

    For v0.6 ``paymaster_and_data`` is ``paymaster ‖ paymaster_data`` (no paymaster gas fields).
    """

    sender: str
    nonce: int = 0
    factory: str | None = None
    factory_data: bytes = b""
    call_data: bytes = b""
    call_gas_limit: int = 200_000
    verification_gas_limit: int = 1_000_000
    pre_verification_gas: int = 60_000
    max_fee_per_gas: int = 2 * 10**9
    max_priority_fee_per_gas: int = 10**9
    paymaster: str | None = None
    paymaster_verification_gas_limit: int = 300_000
    paymaster_post_op_gas_limit: int = 100_000
    paymaster_data: bytes = b""
    signature: bytes = field(default=b"", repr=False)

    def init_code(self) -> bytes:
        return b"" if self.factory is None else bytes.fromhex(self.factory[2:]) + self.factory_data

    def paymaster_and_data(self, version: str) -> bytes:
        if self.paymaster is None:
            return b""
        head = bytes.fromhex(self.paymaster[2:])
        if version != "v0.6":
            head += pack_uint128s(self.paymaster_verification_gas_limit, self.paymaster_post_op_gas_limit)
        return head + self.paymaster_data

    def to_tuple(self, version: str) -> tuple[Any, ...]:
        """The ABI tuple ``handleOps`` / ``getUserOpHash`` / paymasters' ``getHash`` take."""
        if version == "v0.6":
            return (
                self.sender, self.nonce, self.init_code(), self.call_data, self.call_gas_limit,
                self.verification_gas_limit, self.pre_verification_gas, self.max_fee_per_gas,
                self.max_priority_fee_per_gas, self.paymaster_and_data(version), self.signature,
            )  # fmt: skip
        return (
            self.sender, self.nonce, self.init_code(), self.call_data,
            pack_uint128s(self.verification_gas_limit, self.call_gas_limit), self.pre_verification_gas,
            pack_uint128s(self.max_priority_fee_per_gas, self.max_fee_per_gas),
            self.paymaster_and_data(version), self.signature,
        )  # fmt: skip


@dataclass(frozen=True)
class UserOperationEvent:
    user_op_hash: bytes
    sender: str
    paymaster: str
    nonce: int
    success: bool
    actual_gas_cost: int
    actual_gas_used: int
    revert_reason: bytes | None = None


@dataclass(frozen=True)
class HandleOpsResult:
    """``success``: mined and every op succeeded; ``reason``: "AA34 signature error" and the like."""

    success: bool
    reason: str | None = None
    events: tuple[UserOperationEvent, ...] = ()
    tx_hash: str | None = None
    revert_data: bytes | None = None


def eth_call(rpc_url: str, to: str, data: bytes) -> bytes:
    with DevRpc(rpc_url) as rpc:
        return rpc.eth_call(to, data)


def call_contract(
    rpc_url: str,
    to: str,
    fn_signature: str,
    arg_types: Sequence[str] = (),
    args: Sequence[Any] = (),
    return_types: Sequence[str] = (),
) -> tuple[Any, ...]:
    """Call ``fn_signature`` (canonical form, e.g. ``"getHash((address,...),uint48,uint48)"``)."""
    with DevRpc(rpc_url) as rpc:
        return rpc.call_function(to, fn_signature, arg_types, args, return_types)


def get_deposit(rpc_url: str, entry_point: str, address: str) -> int:
    (balance,) = call_contract(rpc_url, entry_point, "balanceOf(address)", ["address"], [address], ["uint256"])
    return int(balance)


def get_nonce(rpc_url: str, entry_point: str, sender: str, key: int = 0) -> int:
    types = ["address", "uint192"]
    (nonce,) = call_contract(rpc_url, entry_point, "getNonce(address,uint192)", types, [sender, key], ["uint256"])
    return int(nonce)


def set_balance(rpc_url: str, address: str, wei: int) -> None:
    with DevRpc(rpc_url) as rpc:
        rpc.set_balance(address, wei)


def get_user_op_hash(rpc_url: str, entry_point: str, version: str, op: UserOp) -> bytes:
    """The EntryPoint's own ``getUserOpHash`` for ``op``."""
    op_type = user_op_type(version)
    fn = f"getUserOpHash({op_type})"
    (digest,) = call_contract(rpc_url, entry_point, fn, [op_type], [op.to_tuple(version)], ["bytes32"])
    return bytes(digest)


def simple_account_init(rpc_url: str, factory: str, owner_address: str, salt: int = 0) -> tuple[str, str, bytes]:
    """``(sender, factory, factory_data)`` for a counterfactual SimpleAccount of ``owner_address``."""
    (sender,) = call_contract(
        rpc_url,
        factory,
        "getAddress(address,uint256)",
        ["address", "uint256"],
        [owner_address, salt],
        ["address"],
    )
    factory_data = encode_call("createAccount(address,uint256)", ["address", "uint256"], [owner_address, salt])
    return to_checksum_address(sender), to_checksum_address(factory), factory_data


def execute_calldata(dest: str, value: int, data: bytes) -> bytes:
    """``SimpleAccount.execute(dest, value, data)`` calldata."""
    return encode_call("execute(address,uint256,bytes)", ["address", "uint256", "bytes"], [dest, value, data])


def sign_user_op_hash(version: str, user_op_hash: bytes, owner_private_key: str) -> bytes:
    """65-byte ``r ‖ s ‖ v`` signature the version's SimpleAccount accepts."""
    if version == "v0.8":
        signed = Account.unsafe_sign_hash(user_op_hash, owner_private_key)
    else:
        signed = Account.sign_message(encode_defunct(primitive=user_op_hash), owner_private_key)
    return bytes(signed.signature)


def decode_entry_point_error(data: bytes) -> str:
    """A readable reason for ``handleOps`` revert data: "AA23 reverted (or OOG) [inner 0x…]"."""
    selector, body = data[:4], data[4:]
    if selector == _FAILED_OP:
        _, reason = decode(["uint256", "string"], body)
        return str(reason)
    if selector == _FAILED_OP_WITH_REVERT:
        _, reason, inner = decode(["uint256", "string", "bytes"], body)
        return f"{reason} [inner 0x{bytes(inner).hex()}]"
    if selector == _ERROR_STRING:
        (message,) = decode(["string"], body)
        return f"reverted: {message}"
    return f"reverted: 0x{data.hex()}"


def handle_ops(
    rpc_url: str,
    entry_point: str,
    version: str,
    ops: Sequence[tuple[Any, ...]],
    beneficiary: str = BUNDLER,
    bundler: str = BUNDLER,
    gas: int = 15_000_000,
) -> HandleOpsResult:
    """Simulate ``handleOps`` with ``eth_call`` (decoding FailedOp), then send it from ``bundler``."""
    ops_type = f"{user_op_type(version)}[]"
    data = encode_call(f"handleOps({ops_type},address)", [ops_type, "address"], [list(ops), beneficiary])
    simulation = {"from": bundler, "to": entry_point, "data": "0x" + data.hex(), "gas": hex(gas)}
    with DevRpc(rpc_url) as rpc:
        try:
            # "pending", not "latest": anvil mines only when a transaction comes, so after a quiet
            # minute the latest block's timestamp is a minute old and a window that starts
            # (valid_after) a minute before now would look "not due" (AA32) in the simulation
            # though the transaction's own block would accept it
            rpc.call("eth_call", simulation, "pending")
        except RpcError as exc:
            if exc.data is None:
                raise
            return HandleOpsResult(False, decode_entry_point_error(exc.data), revert_data=exc.data)
        receipt = rpc.transact(bundler, entry_point, data, gas=gas)
    events = _user_operation_events(receipt["logs"], entry_point)
    failed = [event for event in events if not event.success]
    reason = None if not failed else f"{len(failed)} op(s) reverted in execution"
    return HandleOpsResult(not failed and bool(events), reason, tuple(events), receipt["transactionHash"])


def _user_operation_events(logs: Sequence[dict[str, Any]], entry_point: str) -> list[UserOperationEvent]:
    reasons: dict[bytes, bytes] = {}
    events: list[UserOperationEvent] = []
    for log in logs:
        if log["address"].lower() != entry_point.lower():
            continue
        topics = [bytes.fromhex(topic[2:]) for topic in log["topics"]]
        payload = bytes.fromhex(log["data"][2:])
        if topics[0] == USER_OPERATION_REVERT_REASON:
            _, reason = decode(["uint256", "bytes"], payload)
            reasons[topics[1]] = bytes(reason)
        elif topics[0] == USER_OPERATION_EVENT:
            nonce, success, cost, used = decode(["uint256", "bool", "uint256", "uint256"], payload)
            sender = to_checksum_address(topics[2][12:])
            paymaster = to_checksum_address(topics[3][12:])
            events.append(UserOperationEvent(topics[1], sender, paymaster, nonce, success, cost, used))
    return [replace(event, revert_reason=reasons.get(event.user_op_hash)) for event in events]
