"""ERC-20 mode paymaster data of SingletonPaymaster, without a chain.

The layout is compared with an independent ``encode_packed`` of the fields in the order the
contract parses them (``_parseErc20Config``), the way ``@pimlico/mock-paymaster`` builds it;
the on-chain tests (``tests/integration/test_singleton_erc20_onchain.py``) prove the digest and
the charge against the deployed contracts.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from eth_abi.packed import encode_packed
from hypothesis import given
from hypothesis import strategies as st

from anode.paymasters.base import GasDefaults, ValidityWindow, dummy_signature
from anode.paymasters.singleton import SingletonPaymaster
from anode.paymasters.singleton_erc20 import Erc20Terms, SingletonErc20, max_token_cost, token_cost
from anode.userop import EntryPointVersion, parse_user_op

TOKEN = bytes.fromhex("aa" * 20)
TREASURY = bytes.fromhex("bb" * 20)
PAYMASTER = bytes.fromhex("cc" * 20)
SENDER = "0x" + "dd" * 20

addresses = st.binary(min_size=20, max_size=20).filter(lambda b: any(b))
uint128 = st.integers(0, 2**128 - 1)


def _reference(window: ValidityWindow, terms: Erc20Terms) -> bytes:
    flags = (
        (4 if terms.pre_fund_in_token is not None else 0)
        | (2 if terms.recipient is not None else 0)
        | (1 if terms.constant_fee is not None else 0)
    )
    types = ["uint8", "uint8", "uint48", "uint48", "address", "uint128", "uint256", "uint128", "address"]
    values: list[Any] = [
        3, flags, window.valid_until, window.valid_after, terms.token, terms.post_op_gas, terms.exchange_rate,
        terms.paymaster_validation_gas_limit, terms.treasury,
    ]  # fmt: skip
    if terms.pre_fund_in_token is not None:
        types.append("uint128")
        values.append(terms.pre_fund_in_token)
    if terms.constant_fee is not None:
        types.append("uint128")
        values.append(terms.constant_fee)
    if terms.recipient is not None:
        types.append("address")
        values.append(terms.recipient)
    return encode_packed(types, values)


@given(
    until=st.integers(0, 2**48 - 1),
    after=st.integers(0, 2**48 - 1),
    token=addresses,
    post_op_gas=uint128,
    rate=st.integers(1, 2**256 - 1),
    validation_gas=uint128,
    treasury=st.binary(min_size=20, max_size=20),
    pre_fund=st.none() | uint128,
    constant_fee=st.none() | uint128,
    recipient=st.none() | addresses,
)
def test_paymaster_data_is_the_packed_fields_in_the_contracts_order(
    until: int,
    after: int,
    token: bytes,
    post_op_gas: int,
    rate: int,
    validation_gas: int,
    treasury: bytes,
    pre_fund: int | None,
    constant_fee: int | None,
    recipient: bytes | None,
) -> None:
    window = ValidityWindow(until, after)
    terms = Erc20Terms(token, post_op_gas, rate, validation_gas, treasury, pre_fund, constant_fee, recipient)
    mode = SingletonErc20(SingletonPaymaster(PAYMASTER, EntryPointVersion.V07, GasDefaults(1, 1)))
    signature = b"\x5a" * 65
    assert mode.encode(window, terms, signature) == _reference(window, terms) + signature
    assert mode.placeholder(window, terms) == _reference(window, terms) + dummy_signature()
    # ERC-7677 stubs: the final data's length, never more zero bytes than a real signature gives
    final = mode.encode(window, terms, b"\x01" * 65)
    assert len(mode.placeholder(window, terms)) == len(final)
    assert mode.placeholder(window, terms).count(0) <= final.count(0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"token": b"\x00" * 20}, "token must not be the zero address"),
        ({"token": b"\x01" * 19}, "token must be a 20-byte address"),
        ({"treasury": b"\x01" * 21}, "treasury must be a 20-byte address"),
        ({"recipient": b"\x00" * 20}, "recipient must not be the zero address"),
        ({"exchange_rate": 0}, "exchange_rate must be in [1, 2**256)"),
        ({"exchange_rate": 2**256}, "exchange_rate must be in [1, 2**256)"),
        ({"post_op_gas": 2**128}, "post_op_gas must be in [0, 2**128)"),
        ({"paymaster_validation_gas_limit": -1}, "paymaster_validation_gas_limit must be in [0, 2**128)"),
        ({"pre_fund_in_token": 2**128}, "pre_fund_in_token must be in [0, 2**128)"),
        ({"constant_fee": 2**128}, "constant_fee must be in [0, 2**128)"),
    ],
)
def test_terms_the_contract_would_refuse_or_truncate_are_refused(change: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {
        "token": TOKEN,
        "post_op_gas": 1,
        "exchange_rate": 1,
        "paymaster_validation_gas_limit": 1,
        "treasury": TREASURY,
    }
    with pytest.raises(ValueError, match=re.escape(message)):
        Erc20Terms(**(fields | change))


def test_a_zero_treasury_is_allowed_as_the_contract_allows_it() -> None:
    assert Erc20Terms(TOKEN, 0, 1, 0, b"\x00" * 20).treasury == b"\x00" * 20


def test_token_cost_is_the_postop_formula() -> None:
    terms = Erc20Terms(TOKEN, 50_000, 3000 * 10**18, 0, TREASURY, constant_fee=7)
    # ((actualGasCost + postOpGas * feePerGas) * exchangeRate) / 1e18 + constantFee, rounded down
    assert token_cost(terms, 10**15 + 1, 10**9) == (10**15 + 1 + 50_000 * 10**9) * 3000 + 7
    assert token_cost(Erc20Terms(TOKEN, 0, 1, 0, TREASURY), 10**18 - 1, 1) == 0


def test_digest_refuses_an_operation_without_this_paymaster() -> None:
    mode = SingletonErc20(SingletonPaymaster(PAYMASTER, EntryPointVersion.V07, GasDefaults(1, 1)))
    op = parse_user_op({"sender": SENDER, "nonce": "0x0", "callData": "0x"}, EntryPointVersion.V07)
    terms = Erc20Terms(TOKEN, 1, 1, 1, TREASURY)
    with pytest.raises(ValueError, match="attach this paymaster"):
        mode.digest(op, ValidityWindow(1, 0), terms, 1)


def test_max_token_cost_is_the_charge_at_the_maximum_gas_cost_and_fee() -> None:
    paymaster = SingletonPaymaster(PAYMASTER, EntryPointVersion.V07, GasDefaults(40_000, 60_000))
    op = parse_user_op(
        {
            "sender": SENDER, "nonce": "0x0", "callData": "0x", "callGasLimit": hex(100_000),
            "verificationGasLimit": hex(200_000), "preVerificationGas": hex(50_000),
            "maxFeePerGas": hex(3 * 10**9), "maxPriorityFeePerGas": hex(10**9),
        },
        EntryPointVersion.V07,
    )  # fmt: skip
    terms = Erc20Terms(TOKEN, 50_000, 2 * 10**18, 0, TREASURY, constant_fee=11)
    attached = paymaster.attach(op, SingletonErc20(paymaster).placeholder(ValidityWindow(1, 0), terms))
    gas = 100_000 + 200_000 + 50_000 + 40_000 + 60_000
    assert max_token_cost(terms, attached) == ((gas + 50_000) * 3 * 10**9) * 2 + 11
