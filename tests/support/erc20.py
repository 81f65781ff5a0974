"""Helpers for the ERC-20 mode tests against anvil: tokens, the SingletonPaymaster's charge and events.

:class:`Erc20Sponsor` does what aNode does for an ERC-20 request without the API (attach, hash,
sign, encode), so a test can check aNode's ``SingletonErc20`` against the deployed contracts.
The rest reads and moves test tokens (``PointsToken``, ``TestToken``: anyone may ``mint``) and
reads what ``postOp`` was given and charged, so a test can compare the treasury's gain with the
contract's formula.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from eth_abi.abi import decode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc, encode_call
from anode.paymasters.base import GasDefaults, ValidityWindow
from anode.paymasters.singleton import SingletonPaymaster
from anode.paymasters.singleton_erc20 import Erc20Terms, SingletonErc20, token_cost
from anode.userop import EntryPointVersion, UserOperation, parse_user_op
from tests.support.onchain import (
    USER_ADDRESS,
    USER_KEY,
    HandleOpsResult,
    UserOp,
    call_contract,
    execute_calldata,
    get_user_op_hash,
    handle_ops,
    sign_user_op_hash,
    simple_account_init,
    user_op_type,
)
from tests.support.wallet import rpc_op

#: the account's stub signature while gas is estimated (a well-formed one that recovers elsewhere)
STUB_ACCOUNT_SIGNATURE = bytes.fromhex(
    "cd91f19f0f19ce862d7bec7b7d9b95457145afc6f639c28fd0360f488937bfa4"
    "1e6eedcd3a46054fd95fcd0e3ef6b0bc0a615c4d975eef55c8a3517257904d5b1c"
)
#: the postOpGas the tests' terms sign (aNode's default ``erc20.post_op_gas``)
POST_OP_GAS = 50_000
MAX_UINT256 = 2**256 - 1
_salts = itertools.count(70_000)  # apart from the salts other test modules use
_addresses = itertools.count(1)
_SPONSORED = keccak(text="UserOperationSponsored(bytes32,address,uint8,address,uint256,uint256)")
_POST_OP = {
    "v0.6": function_signature_to_4byte_selector("postOp(uint8,bytes,uint256)"),
    "v0.7": function_signature_to_4byte_selector("postOp(uint8,bytes,uint256,uint256)"),
    "v0.8": function_signature_to_4byte_selector("postOp(uint8,bytes,uint256,uint256)"),
}


def fresh_address() -> bytes:
    """An address nobody holds tokens at, so a balance is exactly what a test paid in."""
    return keccak(b"anode erc20 test address %d" % next(_addresses))[:20]


@dataclass
class Erc20Sponsor:
    """What aNode will do for an ERC-20 request, without the API: attach, hash, sign, encode."""

    anvil: Anvil
    deployment: Deployment
    version: str
    key: str

    @property
    def paymaster_address(self) -> str:
        return self.deployment.singleton_paymasters[self.version]

    @property
    def entry_point(self) -> str:
        return self.deployment.entry_points[self.version]

    def mode(self, op: UserOp) -> SingletonErc20:
        gas = GasDefaults(op.paymaster_verification_gas_limit, op.paymaster_post_op_gas_limit)
        address = bytes.fromhex(self.paymaster_address[2:])
        return SingletonErc20(SingletonPaymaster(address, EntryPointVersion(self.version), gas))

    def attach(self, op: UserOp, data: bytes) -> UserOp:
        return replace(op, paymaster=self.paymaster_address, paymaster_data=data)

    def model(self, op: UserOp, window: ValidityWindow, terms: Erc20Terms) -> UserOperation:
        """aNode's model of ``op`` with the paymaster and placeholder data attached."""
        mode = self.mode(op)
        parsed = parse_user_op(rpc_op(op, self.version), EntryPointVersion(self.version))
        return mode.paymaster.attach(parsed, mode.placeholder(window, terms))

    def digest(self, op: UserOp, window: ValidityWindow, terms: Erc20Terms) -> bytes:
        return self.mode(op).digest(self.model(op, window, terms), window, terms, self.deployment.chain_id)

    def sponsor(self, op: UserOp, window: ValidityWindow, terms: Erc20Terms) -> UserOp:
        digest = self.digest(op, window, terms)
        signature = Account.sign_message(encode_defunct(primitive=digest), private_key=self.key).signature
        return self.attach(op, self.mode(op).encode(window, terms, bytes(signature)))

    def submit(self, op: UserOp) -> HandleOpsResult:
        op_hash = get_user_op_hash(self.anvil.rpc_url, self.entry_point, self.version, op)
        signed = replace(op, signature=sign_user_op_hash(self.version, op_hash, USER_KEY))
        return handle_ops(self.anvil.rpc_url, self.entry_point, self.version, [signed.to_tuple(self.version)])

    def get_hash(self, op: UserOp) -> bytes:
        tuple_type = user_op_type(self.version)
        (value,) = call_contract(
            self.anvil.rpc_url, self.paymaster_address, f"getHash(uint8,{tuple_type})", ["uint8", tuple_type],
            [1, op.to_tuple(self.version)], ["bytes32"],
        )  # fmt: skip
        return bytes(value)


def new_op(sponsor: Erc20Sponsor, call_data: bytes | None = None) -> UserOp:
    """A new SimpleAccount's first operation (deployed in validation), paymaster gas limits generous."""
    sender, factory, factory_data = simple_account_init(
        sponsor.anvil.rpc_url, sponsor.deployment.factories[sponsor.version], USER_ADDRESS, next(_salts)
    )
    return UserOp(
        sender=sender,
        factory=factory,
        factory_data=factory_data,
        call_data=call_data if call_data is not None else execute_calldata(USER_ADDRESS, 0, b""),
        paymaster_post_op_gas_limit=150_000,
    )


def latest_window(anvil: Anvil, seconds: int = 600) -> ValidityWindow:
    """A window from a minute before the latest block to ``seconds`` after it."""
    with DevRpc(anvil.rpc_url) as rpc:
        now = int(rpc.call("eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    return ValidityWindow(valid_until=now + seconds, valid_after=now - 60)


def approve_paymaster(token: str, paymaster: str, amount: int = MAX_UINT256) -> bytes:
    """SimpleAccount ``execute`` callData: ``token.approve(paymaster, amount)``."""
    approve = encode_call("approve(address,uint256)", ["address", "uint256"], [paymaster, amount])
    return execute_calldata(token, 0, approve)


def approve_from(anvil: Anvil, holder: bytes, token: str, spender: str) -> None:
    """``holder`` (impersonated) approves ``spender`` for all of its ``token``."""
    address = to_checksum_address(holder)
    with DevRpc(anvil.rpc_url) as rpc:
        rpc.call("anvil_impersonateAccount", address)
        rpc.set_balance(address, 10**18)
        approve = encode_call("approve(address,uint256)", ["address", "uint256"], [spender, MAX_UINT256])
        rpc.transact(address, token, approve)
        rpc.call("anvil_stopImpersonatingAccount", address)


def mint(anvil: Anvil, token: str, to: str, amount: int) -> None:
    with DevRpc(anvil.rpc_url) as rpc:
        rpc.transact(
            rpc.accounts()[0], token, encode_call("mint(address,uint256)", ["address", "uint256"], [to, amount])
        )


def balance_of(anvil: Anvil, token: str, holder: bytes | str) -> int:
    address = holder if isinstance(holder, str) else to_checksum_address(holder)
    (value,) = call_contract(anvil.rpc_url, token, "balanceOf(address)", ["address"], [address], ["uint256"])
    return int(value)


@dataclass(frozen=True)
class PostOpCall:
    """What the EntryPoint handed the paymaster's ``postOp``, and the base fee of its block."""

    actual_gas_cost: int
    #: ``actualUserOpFeePerGas`` (V7/V8); V6 passes none, the paymaster computes it
    fee_per_gas: int | None
    base_fee: int


def post_op_call(anvil: Anvil, version: str, tx_hash: str, paymaster: str) -> PostOpCall:
    """The one ``postOp`` call to ``paymaster`` in the transaction (from a call trace), which did not revert."""
    with DevRpc(anvil.rpc_url) as rpc:
        trace = rpc.call("debug_traceTransaction", tx_hash, {"tracer": "callTracer"})
        receipt = rpc.call("eth_getTransactionReceipt", tx_hash)
        block = rpc.call("eth_getBlockByNumber", receipt["blockNumber"], False)
    base_fee = int(block["baseFeePerGas"], 16)
    calls = []
    pending = [trace]
    while pending:
        frame = pending.pop()
        pending.extend(frame.get("calls", []))
        data = bytes.fromhex(frame.get("input", "0x")[2:])
        if frame.get("to", "").lower() == paymaster.lower() and data[:4] == _POST_OP[version] and "error" not in frame:
            calls.append(data)
    (data,) = calls  # one operation, and its postOp did not revert
    if version == "v0.6":
        _, _, actual_gas_cost = decode(["uint8", "bytes", "uint256"], data[4:])
        return PostOpCall(actual_gas_cost, None, base_fee)
    _, _, actual_gas_cost, fee_per_gas = decode(["uint8", "bytes", "uint256", "uint256"], data[4:])
    return PostOpCall(actual_gas_cost, fee_per_gas, base_fee)


def expected_charge(version: str, op: UserOp, terms: Erc20Terms, post_op: PostOpCall) -> int:
    """The contract's postOp charge, computed here from its source (V6/V7/V8 ``_postOp``)."""
    if post_op.fee_per_gas is None:  # V6: _calculateActualUserOpFeePerGas
        fee = (
            op.max_fee_per_gas
            if op.max_fee_per_gas == op.max_priority_fee_per_gas
            else min(op.max_fee_per_gas, op.max_priority_fee_per_gas + post_op.base_fee)
        )
        return token_cost(terms, post_op.actual_gas_cost, fee)
    fee = post_op.fee_per_gas
    penalty = 0
    if version == "v0.7":  # _expectedPenaltyGasCost; V8 leaves the penalty to the EntryPoint
        execution_gas_limit = op.call_gas_limit + op.paymaster_post_op_gas_limit
        pre_op_gas = op.pre_verification_gas + op.verification_gas_limit + terms.paymaster_validation_gas_limit
        actual_gas = post_op.actual_gas_cost // fee + terms.post_op_gas
        used = max(actual_gas - pre_op_gas, 0)
        penalty = (execution_gas_limit - used) * 10 // 100 * fee if execution_gas_limit > used else 0
        assert penalty > 0  # the calls here leave execution gas unused: the penalty is part of the charge
    return token_cost(terms, post_op.actual_gas_cost + penalty, fee)


def sponsored_events(anvil: Anvil, tx_hash: str, paymaster: str) -> list[tuple[int, str, int, int]]:
    """``(mode, token, tokenAmountPaid, exchangeRate)`` of every ``UserOperationSponsored`` in the tx."""
    with DevRpc(anvil.rpc_url) as rpc:
        receipt = rpc.call("eth_getTransactionReceipt", tx_hash)
    events: list[tuple[int, str, int, int]] = []
    for log in receipt["logs"]:
        if log["address"].lower() == paymaster.lower() and bytes.fromhex(log["topics"][0][2:]) == _SPONSORED:
            mode, token, paid, rate = decode(["uint8", "address", "uint256", "uint256"], bytes.fromhex(log["data"][2:]))
            events.append((mode, to_checksum_address(token), paid, rate))
    return events
