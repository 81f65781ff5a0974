"""SingletonPaymaster V6 / V7 / V8 in ERC-20 mode, against the deployed contracts and EntryPoints on anvil.

aNode's ``SingletonErc20`` builds the paymaster data and the digest; the test signs that digest
with the paymaster key (EIP-191, as the contract recovers it) and checks:

- the digest is byte-equal to the contract's own ``getHash(1, userOp)`` for every optional-field
  combination the flags byte allows;
- an operation paying in a test ERC-20 (PointsToken, approving the paymaster in its own
  callData) goes through ``handleOps``: the treasury gains exactly the ``tokenAmountPaid`` of
  ``UserOperationSponsored``, and that equals the contract's formula evaluated on the
  ``actualGasCost`` and gas price the EntryPoint passed to ``postOp`` (read from a call trace);
  a second operation with a prefund, a constant fee and a recipient charges the prefund in
  validation, the rest in postOp, and pays the recipient the unused prefund;
- a prefund above the charge is refunded from the treasury, which must have approved the
  paymaster (what happens when it has not is pinned down too);
- a signed exchange rate changed afterwards gives AA34, an expired window AA32;
- Alto estimates an ERC-20 stub (the placeholder with its failing signature) with limits that
  carry the real operation, postOp included; a prefund is invisible to that estimate, and
  what goes wrong without a margin for it is pinned down.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from eth_abi.abi import decode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from anode.devchain.alto import ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, Alto
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc, encode_call
from anode.paymasters.base import GasDefaults, ValidityWindow
from anode.paymasters.singleton import SingletonPaymaster
from anode.paymasters.singleton_erc20 import Erc20Terms, SingletonErc20, max_token_cost, token_cost
from anode.userop import EntryPointVersion, UserOperation, parse_user_op
from tests.contracts.solidity import compiled
from tests.support.onchain import (
    USER_ADDRESS,
    USER_KEY,
    HandleOpsResult,
    UserOp,
    call_contract,
    eth_call,
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
VERSIONS = ["v0.6", "v0.7", "v0.8"]
EXCHANGE_RATE = 3000 * 10**18  # 3000 PNT (18 decimals) per ETH
POST_OP_GAS = 50_000
TOKENS_MINTED = 1000 * 10**18
_MAX_UINT256 = 2**256 - 1
_salts = itertools.count(70_000)  # apart from the salts other test modules use
_addresses = itertools.count(1)
_SPONSORED = keccak(text="UserOperationSponsored(bytes32,address,uint8,address,uint256,uint256)")
_POST_OP = {
    "v0.6": function_signature_to_4byte_selector("postOp(uint8,bytes,uint256)"),
    "v0.7": function_signature_to_4byte_selector("postOp(uint8,bytes,uint256,uint256)"),
    "v0.8": function_signature_to_4byte_selector("postOp(uint8,bytes,uint256,uint256)"),
}


def _fresh_address() -> bytes:
    """An address nobody holds tokens at, so a balance is exactly what a test paid in."""
    return keccak(b"anode erc20 test address %d" % next(_addresses))[:20]


@pytest.fixture(scope="module")
def token(anvil: Anvil) -> str:
    with DevRpc(anvil.rpc_url) as rpc:
        owner = rpc.accounts()[0]
        receipt = rpc.transact(owner, None, compiled()["PointsToken"].creation_code())
    return to_checksum_address(receipt["contractAddress"])


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


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


@pytest.fixture
def sponsor(anvil: Anvil, deployment: Deployment, version: str, paymaster_key: str) -> Erc20Sponsor:
    return Erc20Sponsor(anvil, deployment, version, paymaster_key)


def _new_op(sponsor: Erc20Sponsor, call_data: bytes | None = None) -> UserOp:
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


def _terms(token: str, **optional: Any) -> Erc20Terms:
    return Erc20Terms(
        token=bytes.fromhex(token[2:]),
        post_op_gas=POST_OP_GAS,
        exchange_rate=EXCHANGE_RATE,
        paymaster_validation_gas_limit=30_000,
        treasury=_fresh_address(),
        **optional,
    )


def _window(anvil: Anvil, seconds: int = 600) -> ValidityWindow:
    with DevRpc(anvil.rpc_url) as rpc:
        now = int(rpc.call("eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    return ValidityWindow(valid_until=now + seconds, valid_after=now - 60)


OPTIONAL_FIELDS: dict[str, dict[str, Any]] = {
    "none": {},
    "prefund": {"pre_fund_in_token": 12345},
    "constant_fee": {"constant_fee": 10**16},
    "recipient": {"recipient": bytes.fromhex("11" * 20)},
    "prefund_and_recipient": {"pre_fund_in_token": 1, "recipient": bytes.fromhex("22" * 20)},
    "all_three": {"pre_fund_in_token": 2**127, "constant_fee": 2**128 - 1, "recipient": bytes.fromhex("33" * 20)},
    "zero_values_present": {"pre_fund_in_token": 0, "constant_fee": 0},
}


@pytest.mark.parametrize("optional", list(OPTIONAL_FIELDS), ids=list(OPTIONAL_FIELDS))
def test_digest_is_the_contracts_get_hash_in_erc20_mode(sponsor: Erc20Sponsor, token: str, optional: str) -> None:
    terms = _terms(token, **OPTIONAL_FIELDS[optional])
    window = _window(sponsor.anvil)
    op = _new_op(sponsor)
    placeholder = sponsor.mode(op).placeholder(window, terms)
    optional_bytes = {"pre_fund_in_token": 16, "constant_fee": 16, "recipient": 20}
    assert len(placeholder) == 118 + sum(optional_bytes[name] for name in OPTIONAL_FIELDS[optional]) + 65
    onchain = sponsor.get_hash(sponsor.attach(op, placeholder))
    assert sponsor.digest(op, window, terms) == onchain
    model = sponsor.model(op, window, terms)  # and the self-check's calldata asks for the same hash
    assert eth_call(sponsor.anvil.rpc_url, sponsor.paymaster_address, sponsor.mode(op).get_hash_call(model)) == onchain
    # the signature is not hashed; the last byte before it is
    assert sponsor.get_hash(sponsor.attach(op, placeholder[:-65] + b"\x01" * 65)) == onchain
    flipped = placeholder[:-66] + bytes([placeholder[-66] ^ 1]) + placeholder[-65:]
    assert sponsor.get_hash(sponsor.attach(op, flipped)) != onchain
    if sponsor.version != "v0.6":  # the paymaster gas limits are signed too
        more_gas = replace(op, paymaster_post_op_gas_limit=op.paymaster_post_op_gas_limit + 1)
        changed = sponsor.get_hash(sponsor.attach(more_gas, placeholder))
        assert changed != onchain
        assert sponsor.digest(more_gas, window, terms) == changed


def _approve_paymaster(token: str, paymaster: str, amount: int = _MAX_UINT256) -> bytes:
    approve = encode_call("approve(address,uint256)", ["address", "uint256"], [paymaster, amount])
    return execute_calldata(token, 0, approve)


def _mint(anvil: Anvil, token: str, to: str, amount: int) -> None:
    with DevRpc(anvil.rpc_url) as rpc:
        rpc.transact(
            rpc.accounts()[0], token, encode_call("mint(address,uint256)", ["address", "uint256"], [to, amount])
        )


def _balance(anvil: Anvil, token: str, holder: bytes | str) -> int:
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


def _post_op_call(anvil: Anvil, version: str, tx_hash: str, paymaster: str) -> PostOpCall:
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


def _expected_charge(version: str, op: UserOp, terms: Erc20Terms, post_op: PostOpCall) -> int:
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


def _required_prefund(version: str, op: UserOp) -> int:
    if version == "v0.6":
        return (op.call_gas_limit + op.verification_gas_limit * 3 + op.pre_verification_gas) * op.max_fee_per_gas
    gas = (
        op.verification_gas_limit
        + op.call_gas_limit
        + op.paymaster_verification_gas_limit
        + op.paymaster_post_op_gas_limit
        + op.pre_verification_gas
    )
    return gas * op.max_fee_per_gas


def _sponsored_events(anvil: Anvil, tx_hash: str, paymaster: str) -> list[tuple[int, str, int, int]]:
    """``(mode, token, tokenAmountPaid, exchangeRate)`` of every ``UserOperationSponsored`` in the tx."""
    with DevRpc(anvil.rpc_url) as rpc:
        receipt = rpc.call("eth_getTransactionReceipt", tx_hash)
    events: list[tuple[int, str, int, int]] = []
    for log in receipt["logs"]:
        if log["address"].lower() == paymaster.lower() and bytes.fromhex(log["topics"][0][2:]) == _SPONSORED:
            mode, token, paid, rate = decode(["uint8", "address", "uint256", "uint256"], bytes.fromhex(log["data"][2:]))
            events.append((mode, to_checksum_address(token), paid, rate))
    return events


def test_erc20_operation_pays_the_treasury_exactly_the_contracts_charge(sponsor: Erc20Sponsor, token: str) -> None:
    anvil, paymaster = sponsor.anvil, sponsor.paymaster_address

    # 1. A new account approves the paymaster in its own callData and pays in tokens.
    op = _new_op(sponsor, _approve_paymaster(token, paymaster))
    _mint(anvil, token, op.sender, TOKENS_MINTED)
    terms = _terms(token)
    outcome = sponsor.submit(sponsor.sponsor(op, _window(anvil), terms))
    assert outcome.success, outcome.reason
    assert outcome.tx_hash is not None
    ((mode, paid_token, paid, rate),) = _sponsored_events(anvil, outcome.tx_hash, paymaster)
    assert (mode, paid_token, rate) == (1, token, EXCHANGE_RATE)
    expected = _expected_charge(
        sponsor.version, op, terms, _post_op_call(anvil, sponsor.version, outcome.tx_hash, paymaster)
    )
    assert paid == expected > 0
    assert paid <= max_token_cost(terms, sponsor.model(op, _window(anvil), terms))
    assert _balance(anvil, token, terms.treasury) == paid
    assert _balance(anvil, token, op.sender) == TOKENS_MINTED - paid

    # 2. The same account again, with a prefund taken in validation, a constant fee and a
    #    recipient of what the prefund (at the maximum gas cost) leaves unused.
    second = replace(op, nonce=1, factory=None, factory_data=b"", call_data=execute_calldata(USER_ADDRESS, 0, b""))
    recipient = _fresh_address()
    terms = _terms(token, pre_fund_in_token=10**15, constant_fee=5 * 10**16, recipient=recipient)
    before = _balance(anvil, token, op.sender)
    outcome = sponsor.submit(sponsor.sponsor(second, _window(anvil), terms))
    assert outcome.success, outcome.reason
    assert outcome.tx_hash is not None
    ((_, _, paid, _),) = _sponsored_events(anvil, outcome.tx_hash, paymaster)
    post_op = _post_op_call(anvil, sponsor.version, outcome.tx_hash, paymaster)
    assert paid == _expected_charge(sponsor.version, second, terms, post_op)
    assert paid <= max_token_cost(terms, sponsor.model(second, _window(anvil), terms))
    assert paid > (terms.pre_fund_in_token or 0)  # so the treasury refunds nothing
    assert _balance(anvil, token, terms.treasury) == paid  # prefund in validation + the rest in postOp
    unused = _required_prefund(sponsor.version, second) * EXCHANGE_RATE // 10**18 - paid
    assert unused > 0
    assert _balance(anvil, token, recipient) == unused
    assert _balance(anvil, token, op.sender) == before - paid - unused


def _account_that_approved(sponsor: Erc20Sponsor, token: str) -> UserOp:
    """A deployed account holding tokens that has approved the paymaster (in an ERC-20 op of its own)."""
    op = _new_op(sponsor, _approve_paymaster(token, sponsor.paymaster_address))
    _mint(sponsor.anvil, token, op.sender, TOKENS_MINTED)
    outcome = sponsor.submit(sponsor.sponsor(op, _window(sponsor.anvil), _terms(token)))
    assert outcome.success, outcome.reason
    return replace(op, nonce=1, factory=None, factory_data=b"", call_data=execute_calldata(USER_ADDRESS, 0, b""))


def _approve_from(anvil: Anvil, holder: bytes, token: str, spender: str) -> None:
    address = to_checksum_address(holder)
    with DevRpc(anvil.rpc_url) as rpc:
        rpc.call("anvil_impersonateAccount", address)
        rpc.set_balance(address, 10**18)
        approve = encode_call("approve(address,uint256)", ["address", "uint256"], [spender, _MAX_UINT256])
        rpc.transact(address, token, approve)
        rpc.call("anvil_stopImpersonatingAccount", address)


@pytest.mark.parametrize("treasury_approved", [True, False], ids=["treasury-approved", "treasury-not-approved"])
def test_prefund_above_the_charge_is_refunded_by_the_treasury(
    sponsor: Erc20Sponsor, token: str, treasury_approved: bool
) -> None:
    """The largest prefund the contract takes (the maximum gas cost in tokens) is charged in
    validation; postOp moves the difference back from the treasury, which needs the treasury's
    approval. Without it V7/V8 fail the operation after execution (its calls reverted, the
    deposit pays the gas, the treasury keeps the prefund) and V6 reverts the bundle (AA50)."""
    anvil, paymaster = sponsor.anvil, sponsor.paymaster_address
    op = _account_that_approved(sponsor, token)
    max_in_token = _required_prefund(sponsor.version, op) * EXCHANGE_RATE // 10**18
    terms = _terms(token, pre_fund_in_token=max_in_token)
    if treasury_approved:
        _approve_from(anvil, terms.treasury, token, paymaster)
    before = _balance(anvil, token, op.sender)
    outcome = sponsor.submit(sponsor.sponsor(op, _window(anvil), terms))
    if treasury_approved:
        assert outcome.success, outcome.reason
        assert outcome.tx_hash is not None
        ((_, _, paid, _),) = _sponsored_events(anvil, outcome.tx_hash, paymaster)
        assert paid == _expected_charge(
            sponsor.version, op, terms, _post_op_call(anvil, sponsor.version, outcome.tx_hash, paymaster)
        )
        assert 0 < paid < max_in_token
        assert _balance(anvil, token, terms.treasury) == paid
        assert _balance(anvil, token, op.sender) == before - paid
    elif sponsor.version == "v0.6":
        assert not outcome.success
        assert outcome.reason is not None and outcome.reason.startswith("AA50"), outcome.reason
        assert _balance(anvil, token, op.sender) == before
    else:
        assert not outcome.success and outcome.tx_hash is not None
        (event,) = outcome.events
        assert not event.success and event.paymaster == paymaster and event.actual_gas_cost > 0
        assert _sponsored_events(anvil, outcome.tx_hash, paymaster) == []
        assert _balance(anvil, token, terms.treasury) == max_in_token
        assert _balance(anvil, token, op.sender) == before - max_in_token


def test_changed_exchange_rate_is_rejected_with_aa34(sponsor: Erc20Sponsor, token: str) -> None:
    op = _new_op(sponsor, _approve_paymaster(token, sponsor.paymaster_address))
    _mint(anvil := sponsor.anvil, token, op.sender, TOKENS_MINTED)
    signed = sponsor.sponsor(op, _window(anvil), _terms(token))
    rate_at = 1 + 1 + 6 + 6 + 20 + 16
    assert int.from_bytes(signed.paymaster_data[rate_at : rate_at + 32], "big") == EXCHANGE_RATE
    cheaper = (EXCHANGE_RATE // 2).to_bytes(32, "big")
    tampered = replace(
        signed, paymaster_data=signed.paymaster_data[:rate_at] + cheaper + signed.paymaster_data[rate_at + 32 :]
    )
    outcome = sponsor.submit(tampered)
    assert not outcome.success
    assert outcome.reason is not None and outcome.reason.startswith("AA34"), outcome.reason


def test_expired_erc20_window_is_rejected_with_aa32(sponsor: Erc20Sponsor, token: str) -> None:
    op = _new_op(sponsor, _approve_paymaster(token, sponsor.paymaster_address))
    _mint(sponsor.anvil, token, op.sender, TOKENS_MINTED)
    now = _window(sponsor.anvil, 0).valid_until
    expired = ValidityWindow(valid_until=now - 30, valid_after=now - 600)
    outcome = sponsor.submit(sponsor.sponsor(op, expired, _terms(token)))
    assert not outcome.success
    assert outcome.reason is not None and outcome.reason.startswith("AA32"), outcome.reason


@pytest.fixture(scope="module")
def alto(anvil: Anvil, deployment: Deployment) -> Iterator[Alto]:
    """Alto for estimates; the chain is put back afterwards (Alto deploys simulation contracts)."""
    with DevRpc(anvil.rpc_url) as rpc:
        snapshot = rpc.call("evm_snapshot")
    try:
        with Alto(
            anvil.rpc_url, list(deployment.entry_points.values()), ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY
        ) as bundler:
            yield bundler
    finally:
        with DevRpc(anvil.rpc_url) as rpc:
            assert rpc.call("evm_revert", snapshot) is True


def _estimate_call(alto: Alto, sponsor: Erc20Sponsor, op: UserOp) -> dict[str, Any]:
    """Alto's answer to ``eth_estimateUserOperationGas`` for ``op`` with the account's stub signature."""
    fields = rpc_op(op, sponsor.version) | {"signature": "0x" + STUB_ACCOUNT_SIGNATURE.hex()}
    if sponsor.version == "v0.6":
        fields["paymasterAndData"] = "0x" + op.paymaster_and_data("v0.6").hex()
    else:
        fields |= {"paymaster": op.paymaster, "paymasterData": "0x" + op.paymaster_data.hex()}
    params = [fields, sponsor.entry_point]
    request = {"jsonrpc": "2.0", "id": 1, "method": "eth_estimateUserOperationGas", "params": params}
    answer: dict[str, Any] = httpx.post(alto.url, json=request, timeout=60.0).json()
    return answer


def _estimate(alto: Alto, sponsor: Erc20Sponsor, op: UserOp) -> dict[str, int]:
    answer = _estimate_call(alto, sponsor, op)
    assert "result" in answer, answer
    return {key: int(value, 16) for key, value in answer["result"].items()}


def _with_estimate(op: UserOp, gas: dict[str, int], extra_validation_gas: int = 0) -> UserOp:
    """``op`` with the bundler's limits; ``extra_validation_gas`` goes to the paymaster's
    validation (v0.6: the one verificationGasLimit covers account and paymaster)."""
    if "paymasterVerificationGasLimit" not in gas:
        gas = gas | {"verificationGasLimit": gas["verificationGasLimit"] + extra_validation_gas}
    else:
        gas = gas | {"paymasterVerificationGasLimit": gas["paymasterVerificationGasLimit"] + extra_validation_gas}
    return replace(
        op,
        call_gas_limit=gas["callGasLimit"],
        verification_gas_limit=gas["verificationGasLimit"],
        pre_verification_gas=gas["preVerificationGas"],
        paymaster_verification_gas_limit=gas.get("paymasterVerificationGasLimit", op.paymaster_verification_gas_limit),
        paymaster_post_op_gas_limit=gas.get("paymasterPostOpGasLimit", op.paymaster_post_op_gas_limit),
    )


def test_alto_estimates_an_erc20_stub_and_its_limits_suffice(alto: Alto, sponsor: Erc20Sponsor, token: str) -> None:
    """The stub's signature fails, but the contract still returns its postOp context, so the
    bundler's simulation runs postOp and the estimate covers the token transfer."""
    anvil, paymaster = sponsor.anvil, sponsor.paymaster_address
    op = _new_op(sponsor, _approve_paymaster(token, paymaster))
    _mint(anvil, token, op.sender, TOKENS_MINTED)
    terms, window = _terms(token), _window(anvil)
    gas = _estimate(alto, sponsor, sponsor.attach(op, sponsor.mode(op).placeholder(window, terms)))
    if sponsor.version != "v0.6":
        assert gas["paymasterPostOpGasLimit"] > 30_000, gas  # the transfer, not Alto's 1 for no postOp
    outcome = sponsor.submit(sponsor.sponsor(_with_estimate(op, gas), window, terms))
    assert outcome.success, outcome.reason
    assert outcome.tx_hash is not None
    ((_, _, paid, _),) = _sponsored_events(anvil, outcome.tx_hash, paymaster)
    assert paid > 0 and _balance(anvil, token, terms.treasury) == paid


#: gas a prefund's transferFrom adds to the paymaster's validation (a new treasury balance slot)
PREFUND_VALIDATION_GAS = 50_000


@pytest.mark.parametrize("stub", ["prefund", "zero-prefund", "zero-prefund-plus-margin"])
def test_a_prefund_is_invisible_to_the_stub_estimate(alto: Alto, sponsor: Erc20Sponsor, token: str, stub: str) -> None:
    """With the stub's failing signature the contract skips the prefund transfer but postOp
    still refunds the prefund the data names: a stub carrying the prefund fails estimation
    (AA50, the treasury never received it); a stub with a zero prefund estimates, but without
    the transfer's gas, so the real operation fails validation unless that gas is added."""
    op = _account_that_approved(sponsor, token)
    terms, window = _terms(token, pre_fund_in_token=10**15), _window(sponsor.anvil)
    stub_terms = terms if stub == "prefund" else replace(terms, pre_fund_in_token=0)
    stub_op = sponsor.attach(op, sponsor.mode(op).placeholder(window, stub_terms))
    if stub == "prefund":
        answer = _estimate_call(alto, sponsor, stub_op)
        assert "AA50 postOp re" in answer["error"]["message"], answer  # Alto cuts v0.6's message short
        return
    gas = _estimate(alto, sponsor, stub_op)
    margin = PREFUND_VALIDATION_GAS if stub == "zero-prefund-plus-margin" else 0
    outcome = sponsor.submit(sponsor.sponsor(_with_estimate(op, gas, margin), window, terms))
    if margin:
        assert outcome.success, outcome.reason
        assert (
            _balance(sponsor.anvil, token, terms.treasury)
            == _sponsored_events(sponsor.anvil, outcome.tx_hash or "", sponsor.paymaster_address)[0][2]
        )
    else:
        expected = "AA40 over verificationGasLimit" if sponsor.version == "v0.6" else "AA33 reverted"
        assert outcome.reason is not None and outcome.reason.startswith(expected), outcome.reason
