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

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from eth_utils.address import to_checksum_address

from anode.devchain.alto import ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, Alto
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from anode.paymasters.base import ValidityWindow
from anode.paymasters.singleton_erc20 import Erc20Terms, max_token_cost
from tests.contracts.solidity import compiled
from tests.support.erc20 import (
    POST_OP_GAS,
    STUB_ACCOUNT_SIGNATURE,
    Erc20Sponsor,
    approve_from,
    approve_paymaster,
    balance_of,
    expected_charge,
    fresh_address,
    latest_window,
    mint,
    new_op,
    post_op_call,
    sponsored_events,
)
from tests.support.onchain import (
    USER_ADDRESS,
    UserOp,
    eth_call,
    execute_calldata,
)
from tests.support.wallet import rpc_op

VERSIONS = ["v0.6", "v0.7", "v0.8"]
EXCHANGE_RATE = 3000 * 10**18  # 3000 PNT (18 decimals) per ETH
TOKENS_MINTED = 1000 * 10**18


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


@pytest.fixture
def sponsor(anvil: Anvil, deployment: Deployment, version: str, paymaster_key: str) -> Erc20Sponsor:
    return Erc20Sponsor(anvil, deployment, version, paymaster_key)


def _terms(token: str, **optional: Any) -> Erc20Terms:
    return Erc20Terms(
        token=bytes.fromhex(token[2:]),
        post_op_gas=POST_OP_GAS,
        exchange_rate=EXCHANGE_RATE,
        paymaster_validation_gas_limit=30_000,
        treasury=fresh_address(),
        **optional,
    )


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
    window = latest_window(sponsor.anvil)
    op = new_op(sponsor)
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


def test_erc20_operation_pays_the_treasury_exactly_the_contracts_charge(sponsor: Erc20Sponsor, token: str) -> None:
    anvil, paymaster = sponsor.anvil, sponsor.paymaster_address

    # 1. A new account approves the paymaster in its own callData and pays in tokens.
    op = new_op(sponsor, approve_paymaster(token, paymaster))
    mint(anvil, token, op.sender, TOKENS_MINTED)
    terms = _terms(token)
    outcome = sponsor.submit(sponsor.sponsor(op, latest_window(anvil), terms))
    assert outcome.success, outcome.reason
    assert outcome.tx_hash is not None
    ((mode, paid_token, paid, rate),) = sponsored_events(anvil, outcome.tx_hash, paymaster)
    assert (mode, paid_token, rate) == (1, token, EXCHANGE_RATE)
    expected = expected_charge(
        sponsor.version, op, terms, post_op_call(anvil, sponsor.version, outcome.tx_hash, paymaster)
    )
    assert paid == expected > 0
    assert paid <= max_token_cost(terms, sponsor.model(op, latest_window(anvil), terms))
    assert balance_of(anvil, token, terms.treasury) == paid
    assert balance_of(anvil, token, op.sender) == TOKENS_MINTED - paid

    # 2. The same account again, with a prefund taken in validation, a constant fee and a
    #    recipient of what the prefund (at the maximum gas cost) leaves unused.
    second = replace(op, nonce=1, factory=None, factory_data=b"", call_data=execute_calldata(USER_ADDRESS, 0, b""))
    recipient = fresh_address()
    terms = _terms(token, pre_fund_in_token=10**15, constant_fee=5 * 10**16, recipient=recipient)
    before = balance_of(anvil, token, op.sender)
    outcome = sponsor.submit(sponsor.sponsor(second, latest_window(anvil), terms))
    assert outcome.success, outcome.reason
    assert outcome.tx_hash is not None
    ((_, _, paid, _),) = sponsored_events(anvil, outcome.tx_hash, paymaster)
    post_op = post_op_call(anvil, sponsor.version, outcome.tx_hash, paymaster)
    assert paid == expected_charge(sponsor.version, second, terms, post_op)
    assert paid <= max_token_cost(terms, sponsor.model(second, latest_window(anvil), terms))
    assert paid > (terms.pre_fund_in_token or 0)  # so the treasury refunds nothing
    assert balance_of(anvil, token, terms.treasury) == paid  # prefund in validation + the rest in postOp
    unused = _required_prefund(sponsor.version, second) * EXCHANGE_RATE // 10**18 - paid
    assert unused > 0
    assert balance_of(anvil, token, recipient) == unused
    assert balance_of(anvil, token, op.sender) == before - paid - unused


def _account_that_approved(sponsor: Erc20Sponsor, token: str) -> UserOp:
    """A deployed account holding tokens that has approved the paymaster (in an ERC-20 op of its own)."""
    op = new_op(sponsor, approve_paymaster(token, sponsor.paymaster_address))
    mint(sponsor.anvil, token, op.sender, TOKENS_MINTED)
    outcome = sponsor.submit(sponsor.sponsor(op, latest_window(sponsor.anvil), _terms(token)))
    assert outcome.success, outcome.reason
    return replace(op, nonce=1, factory=None, factory_data=b"", call_data=execute_calldata(USER_ADDRESS, 0, b""))


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
        approve_from(anvil, terms.treasury, token, paymaster)
    before = balance_of(anvil, token, op.sender)
    outcome = sponsor.submit(sponsor.sponsor(op, latest_window(anvil), terms))
    if treasury_approved:
        assert outcome.success, outcome.reason
        assert outcome.tx_hash is not None
        ((_, _, paid, _),) = sponsored_events(anvil, outcome.tx_hash, paymaster)
        assert paid == expected_charge(
            sponsor.version, op, terms, post_op_call(anvil, sponsor.version, outcome.tx_hash, paymaster)
        )
        assert 0 < paid < max_in_token
        assert balance_of(anvil, token, terms.treasury) == paid
        assert balance_of(anvil, token, op.sender) == before - paid
    elif sponsor.version == "v0.6":
        assert not outcome.success
        assert outcome.reason is not None and outcome.reason.startswith("AA50"), outcome.reason
        assert balance_of(anvil, token, op.sender) == before
    else:
        assert not outcome.success and outcome.tx_hash is not None
        (event,) = outcome.events
        assert not event.success and event.paymaster == paymaster and event.actual_gas_cost > 0
        assert sponsored_events(anvil, outcome.tx_hash, paymaster) == []
        assert balance_of(anvil, token, terms.treasury) == max_in_token
        assert balance_of(anvil, token, op.sender) == before - max_in_token


def test_changed_exchange_rate_is_rejected_with_aa34(sponsor: Erc20Sponsor, token: str) -> None:
    op = new_op(sponsor, approve_paymaster(token, sponsor.paymaster_address))
    mint(anvil := sponsor.anvil, token, op.sender, TOKENS_MINTED)
    signed = sponsor.sponsor(op, latest_window(anvil), _terms(token))
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
    op = new_op(sponsor, approve_paymaster(token, sponsor.paymaster_address))
    mint(sponsor.anvil, token, op.sender, TOKENS_MINTED)
    now = latest_window(sponsor.anvil, 0).valid_until
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
    op = new_op(sponsor, approve_paymaster(token, paymaster))
    mint(anvil, token, op.sender, TOKENS_MINTED)
    terms, window = _terms(token), latest_window(anvil)
    gas = _estimate(alto, sponsor, sponsor.attach(op, sponsor.mode(op).placeholder(window, terms)))
    if sponsor.version != "v0.6":
        assert gas["paymasterPostOpGasLimit"] > 30_000, gas  # the transfer, not Alto's 1 for no postOp
    outcome = sponsor.submit(sponsor.sponsor(_with_estimate(op, gas), window, terms))
    assert outcome.success, outcome.reason
    assert outcome.tx_hash is not None
    ((_, _, paid, _),) = sponsored_events(anvil, outcome.tx_hash, paymaster)
    assert paid > 0 and balance_of(anvil, token, terms.treasury) == paid


#: gas a prefund's transferFrom adds to the paymaster's validation (a new treasury balance slot)
PREFUND_VALIDATION_GAS = 50_000


@pytest.mark.parametrize("stub", ["prefund", "zero-prefund", "zero-prefund-plus-margin"])
def test_a_prefund_is_invisible_to_the_stub_estimate(alto: Alto, sponsor: Erc20Sponsor, token: str, stub: str) -> None:
    """With the stub's failing signature the contract skips the prefund transfer but postOp
    still refunds the prefund the data names: a stub carrying the prefund fails estimation
    (AA50, the treasury never received it); a stub with a zero prefund estimates, but without
    the transfer's gas, so the real operation fails validation unless that gas is added."""
    op = _account_that_approved(sponsor, token)
    terms, window = _terms(token, pre_fund_in_token=10**15), latest_window(sponsor.anvil)
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
            balance_of(sponsor.anvil, token, terms.treasury)
            == sponsored_events(sponsor.anvil, outcome.tx_hash or "", sponsor.paymaster_address)[0][2]
        )
    else:
        expected = "AA40 over verificationGasLimit" if sponsor.version == "v0.6" else "AA33 reverted"
        assert outcome.reason is not None and outcome.reason.startswith(expected), outcome.reason
