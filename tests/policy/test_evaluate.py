"""The pure part of the policy engine: policy documents, which policies apply, what they refuse and why.

No store, no network, no clock: every test passes the time it means.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from anode.policy.calls import (
    EXECUTE,
    EXECUTE_BATCH_V06,
    EXECUTE_BATCH_V07,
    EXECUTE_BATCH_V08,
    Call,
    checksum_of,
    decode_calls,
)
from anode.policy.evaluate import (
    CONDITION_FAILED,
    GAS_PRICE_TOO_HIGH,
    NO_POLICY,
    PER_TRANSACTION_LIMIT,
    charges_for,
    evaluate,
    limit_refusal,
    window_bounds,
)
from anode.policy.models import MASK, Policy, parse_wei
from tests.policy.conftest import ETH, GWEI, MINT, NFT, OTHER_SENDER, SENDER, TOKEN, TRANSFER, facts, policy

NOW = datetime(2026, 11, 21, 15, 30, tzinfo=UTC).timestamp()


def make(**fields: Any) -> Policy:
    return Policy.model_validate(policy(**fields))


# -- documents --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "wei"),
    [
        (12345, 12345),
        ("12345", 12345),
        ("0x10", 16),
        ("1 ether", ETH),
        ("0.5 ETH", ETH // 2),
        ("30 gwei", 30 * GWEI),
        ("1e18", ETH),
        (str(2**256 - 1), 2**256 - 1),
    ],
)
def test_amounts_are_read_exactly_in_every_spelling(written: Any, wei: int) -> None:
    assert parse_wei(written) == wei


@pytest.mark.parametrize("written", [1.5e18, True, "-1", "1.5 wei", "one ether", str(2**256), [1]])
def test_inexact_or_malformed_amounts_are_refused(written: Any) -> None:
    with pytest.raises(ValueError):
        parse_wei(written)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "contract"}, "needs target"),
        ({"type": "wallet"}, "needs target"),
        ({"type": "project", "target": TOKEN}, "has no target"),
        ({"type": "contract", "target": "0x1234"}, "not an address"),
        ({"type": "custom"}, "needs a webhook"),
        (
            {
                "rate_limits": [
                    {"type": "amount", "limit": 1, "window": 60},
                    {"type": "amount", "limit": 2, "window": 60},
                ]
            },
            "one amount limit",
        ),
        ({"rate_limits": [{"type": "bogus", "limit": 1}]}, "rate_limits.0"),
        ({"conditions": [{"field": "target", "operator": "gt", "value": TOKEN}]}, "compares numbers"),
        ({"conditions": [{"field": "function", "operator": "in", "value": "0xa9059cbb"}]}, "non-empty list"),
        ({"conditions": [{"field": "function", "operator": "eq", "value": "transfer"}]}, "4-byte selector"),
        ({"start_time": "2026-12-01", "end_time": "2026-11-01"}, "before end_time"),
        ({"id": "has space"}, "id"),
    ],
)
def test_invalid_policies_say_what_to_fix(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make(**fields)
    assert message in str(caught.value)


def test_addresses_and_selectors_are_normalised() -> None:
    p = make(
        type="contract",
        target=TOKEN.lower(),
        conditions=[{"field": "function", "operator": "in", "value": [TRANSFER.upper().replace("0X", "0x")]}],
    )
    assert p.target == TOKEN
    assert p.conditions[0].value == [TRANSFER]


def test_a_webhook_secret_never_prints_and_is_masked_in_answers() -> None:
    secret = "s3cr3t-s3cr3t-s3cr3t"
    p = make(type="custom", webhook={"url": "https://hooks.example/t0ken", "secret": secret})
    assert secret not in repr(p) and secret not in str(p)
    assert "t0ken" not in repr(p)
    assert p.public()["webhook"]["secret"] == MASK
    assert p.document()["webhook"]["secret"] == secret
    assert Policy.model_validate(p.document()) == p


def test_wei_amounts_serialise_as_strings_so_clients_do_not_round_them() -> None:
    p = make(rate_limits=[{"type": "amount", "limit": "1.5 ether", "window": 86400}])
    assert p.public()["rate_limits"][0]["limit"] == "1500000000000000000"


# -- calls ------------------------------------------------------------------------------------


def test_simple_account_calls_are_decoded_in_every_form() -> None:
    data = bytes.fromhex(TRANSFER[2:]) + b"\x00" * 64
    single = EXECUTE + encode(["address", "uint256", "bytes"], [TOKEN, 7, data])
    assert decode_calls(single) == (Call(TOKEN, 7, TRANSFER),)
    v06 = EXECUTE_BATCH_V06 + encode(["address[]", "bytes[]"], [[TOKEN, NFT], [data, b""]])
    assert decode_calls(v06) == (Call(TOKEN, 0, TRANSFER), Call(NFT, 0, "0x"))
    v07 = EXECUTE_BATCH_V07 + encode(["address[]", "uint256[]", "bytes[]"], [[TOKEN], [5], [data]])
    assert decode_calls(v07) == (Call(TOKEN, 5, TRANSFER),)
    v08 = EXECUTE_BATCH_V08 + encode(["(address,uint256,bytes)[]"], [[(NFT, 1, bytes.fromhex(MINT[2:]))]])
    assert decode_calls(v08) == (Call(NFT, 1, MINT),)


@pytest.mark.parametrize("call_data", [b"", b"\x12\x34\x56\x78", EXECUTE + b"\x00" * 7])
def test_other_call_data_is_unknown_rather_than_guessed(call_data: bytes) -> None:
    assert decode_calls(call_data) is None


# -- which policies apply ---------------------------------------------------------------------


def test_every_applicable_policy_must_allow() -> None:
    project = make(id="all", rate_limits=[{"type": "gas_price", "limit": "10 gwei"}])
    token = make(id="token", type="contract", target=TOKEN, rate_limits=[{"type": "gas_price", "limit": "1 gwei"}])
    result = evaluate([project, token], facts(max_fee_per_gas=2 * GWEI), NOW)
    assert result.refusal is not None and result.refusal.code == GAS_PRICE_TOO_HIGH
    assert result.refusal.data["policyId"] == "token"
    # an operation calling something else is covered by the project policy alone
    other = evaluate([project, token], facts(calls=(Call(NFT, 0, MINT),)), NOW)
    assert other.refusal is None and [p.id for p in other.applicable] == ["all"]


def test_without_an_applicable_policy_the_operation_is_refused_and_told_why() -> None:
    token = make(type="contract", target=TOKEN)
    ended = make(name="launch week", type="contract", target=NFT, end_time="2026-11-01T00:00:00Z")
    result = evaluate([token, ended], facts(calls=(Call(NFT, 0, MINT),)), NOW)
    assert result.refusal is not None and result.refusal.code == NO_POLICY
    assert "no enabled policy applies" in result.refusal.message
    assert "policy 'launch week' ended at 2026-11-01T00:00:00Z" in result.refusal.message


def test_wallet_policies_cover_their_wallet_or_every_wallet() -> None:
    mine = make(type="wallet", target=SENDER)
    everyone = make(type="wallet", target="*")
    assert [p.id for p in evaluate([mine], facts(), NOW).applicable] == [mine.id]
    assert evaluate([mine], facts(OTHER_SENDER), NOW).refusal.code == NO_POLICY  # type: ignore[union-attr]
    assert evaluate([everyone], facts(OTHER_SENDER), NOW).refusal is None


def test_contract_policies_need_decodable_calls() -> None:
    token = make(type="contract", target=TOKEN)
    assert evaluate([token], facts(calls=None), NOW).refusal.code == NO_POLICY  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("fields", "applies"),
    [
        ({"enabled": False}, False),
        ({"start_time": "2026-11-22T00:00:00Z"}, False),
        ({"end_time": "2026-11-21T15:30:00Z"}, False),  # the end is exclusive
        ({"start_time": "2026-11-21T15:30:00Z"}, True),
        ({"chain_ids": [1, 10]}, False),
        ({"chain_ids": [31337]}, True),
    ],
)
def test_disabled_out_of_time_or_other_chain_policies_do_not_apply(fields: dict[str, Any], applies: bool) -> None:
    assert (evaluate([make(**fields)], facts(), NOW).refusal is None) is applies


def test_policies_are_checked_by_priority_and_the_first_refusal_is_reported() -> None:
    low = make(id="a-low", priority=1, rate_limits=[{"type": "per_transaction", "limit": 1}])
    high = make(id="z-high", priority=5, rate_limits=[{"type": "gas_price", "limit": 1}])
    result = evaluate([low, high], facts(), NOW)
    assert [p.id for p in result.applicable] == ["z-high", "a-low"]
    assert result.refusal is not None and result.refusal.data["policyId"] == "z-high"


# -- conditions and static limits -------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "ok"),
    [
        ({"field": "function", "operator": "in", "value": [TRANSFER, MINT]}, True),
        ({"field": "function", "operator": "in", "value": [MINT]}, False),
        ({"field": "function", "operator": "not_in", "value": [TRANSFER]}, False),
        ({"field": "target", "operator": "eq", "value": TOKEN}, True),
        ({"field": "target", "operator": "neq", "value": TOKEN}, False),
        ({"field": "value", "operator": "lte", "value": "0.1 ether"}, True),
        ({"field": "value", "operator": "gt", "value": 0}, False),
        ({"field": "sender", "operator": "in", "value": [SENDER]}, True),
        ({"field": "sender", "operator": "not_in", "value": [SENDER]}, False),
        ({"field": "chain_id", "operator": "eq", "value": 31337}, True),
        ({"field": "chain_id", "operator": "gte", "value": 31338}, False),
    ],
)
def test_conditions(condition: dict[str, Any], ok: bool) -> None:
    result = evaluate([make(conditions=[condition])], facts(), NOW)
    assert (result.refusal is None) is ok
    if not ok:
        assert result.refusal is not None and result.refusal.code == CONDITION_FAILED


def test_call_conditions_hold_for_every_call_and_say_which_failed() -> None:
    p = make(name="mints only", conditions=[{"field": "function", "operator": "in", "value": [MINT]}])
    batch = (Call(NFT, 0, MINT), Call(TOKEN, 0, TRANSFER))
    refusal = evaluate([p], facts(calls=batch), NOW).refusal
    assert refusal is not None
    assert refusal.message == f"policy 'mints only': function {TRANSFER} is not one of [{MINT}]"


def test_a_contract_policy_conditions_look_at_calls_to_its_contract_only() -> None:
    p = make(type="contract", target=NFT, conditions=[{"field": "function", "operator": "eq", "value": MINT}])
    batch = (Call(NFT, 0, MINT), Call(TOKEN, 0, TRANSFER))
    assert evaluate([p], facts(calls=batch), NOW).refusal is None


def test_call_conditions_fail_when_the_calls_are_unknown() -> None:
    p = make(conditions=[{"field": "target", "operator": "in", "value": [TOKEN]}])
    refusal = evaluate([p], facts(calls=None), NOW).refusal
    assert refusal is not None and refusal.code == CONDITION_FAILED
    assert "not a call aNode can decode" in refusal.message


def test_gas_price_limit_allows_up_to_the_limit_and_names_it() -> None:
    p = make(name="cheap gas", rate_limits=[{"type": "gas_price", "limit": "50 gwei"}])
    assert evaluate([p], facts(max_fee_per_gas=50 * GWEI), NOW).refusal is None
    refusal = evaluate([p], facts(max_fee_per_gas=60 * GWEI), NOW).refusal
    assert refusal is not None and refusal.code == GAS_PRICE_TOO_HIGH
    assert refusal.message.startswith("policy 'cheap gas': maxFeePerGas 60 gwei is above the limit of 50 gwei")


def test_per_transaction_limit() -> None:
    p = make(name="small ops", rate_limits=[{"type": "per_transaction", "limit": "0.01 ether"}])
    assert evaluate([p], facts(max_gas_cost=10**16), NOW).refusal is None
    refusal = evaluate([p], facts(max_gas_cost=2 * 10**16), NOW).refusal
    assert refusal is not None and refusal.code == PER_TRANSACTION_LIMIT
    assert "may cost up to 0.02 ETH" in refusal.message and "limit of 0.01 ETH" in refusal.message


# -- counters ---------------------------------------------------------------------------------


def test_windows_are_fixed_and_aligned_to_the_epoch_or_to_the_start_time() -> None:
    daily = make(rate_limits=[{"type": "amount", "limit": 1, "window": 86400}])
    start, end = window_bounds(daily, daily.rate_limits[0], NOW)  # type: ignore[arg-type]
    assert (start, end) == (
        int(datetime(2026, 11, 21, tzinfo=UTC).timestamp()),
        int(datetime(2026, 11, 22, tzinfo=UTC).timestamp()),
    )
    anchored = make(start_time="2026-11-01T06:00:00Z", rate_limits=[{"type": "request", "limit": 1, "window": 86400}])
    start, _ = window_bounds(anchored, anchored.rate_limits[0], NOW)  # type: ignore[arg-type]
    assert start == int(datetime(2026, 11, 21, 6, tzinfo=UTC).timestamp())
    lifetime = make(rate_limits=[{"type": "request", "limit": 1}])
    assert window_bounds(lifetime, lifetime.rate_limits[0], NOW) == (0, None)  # type: ignore[arg-type]


def test_charges_count_gas_cost_and_requests_per_policy_or_per_wallet() -> None:
    limits = [{"type": "amount", "limit": ETH, "window": 3600}, {"type": "request", "limit": 10, "window": 60}]
    shared = charges_for(make(id="shared", rate_limits=limits), facts(max_gas_cost=777), NOW)
    assert [(c.key, c.amount) for c in shared] == [("shared:amount:3600:*", 777), ("shared:request:60:*", 1)]
    per_wallet = charges_for(make(id="each", type="wallet", target="*", rate_limits=limits), facts(), NOW)
    assert {c.key for c in per_wallet} == {f"each:amount:3600:{SENDER}", f"each:request:60:{SENDER}"}


def test_limit_messages_say_which_limit_and_when_it_resets() -> None:
    p = make(name="daily cap", rate_limits=[{"type": "amount", "limit": "1 ether", "window": 86400}])
    (charge,) = charges_for(p, facts(max_gas_cost=10**17), NOW)
    refusal = limit_refusal(charge, 95 * 10**16)
    assert refusal.message == (
        "policy 'daily cap': amount limit of 1 ETH per 86400 s reached (0.95 ETH used, this operation may cost "
        "up to 0.1 ETH); resets at 2026-11-22T00:00:00Z"
    )
    assert refusal.data["resetsAt"] == "2026-11-22T00:00:00Z" and refusal.data["used"] == str(95 * 10**16)
    each = make(name="per wallet", type="wallet", target="*", rate_limits=[{"type": "request", "limit": 3}])
    (charge,) = charges_for(each, facts(), NOW)
    assert limit_refusal(charge, 3).message == (
        f"policy 'per wallet': request limit of 3 operations in total reached for wallet {SENDER} "
        "(3 sponsored); it does not reset"
    )


@settings(max_examples=300, deadline=None)
@given(target=st.binary(min_size=20, max_size=20), value=st.integers(0, 2**256 - 1), data=st.binary(max_size=300))
def test_the_fixed_layout_execute_decoder_agrees_with_eth_abi(target: bytes, value: int, data: bytes) -> None:
    call_data = EXECUTE + encode(["address", "uint256", "bytes"], [target, value, data])
    selector = "0x" + data[:4].hex() if len(data) >= 4 else "0x"
    assert decode_calls(call_data) == (Call(to_checksum_address(target), value, selector),)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400))
def test_any_call_data_decodes_or_is_unknown_never_an_error(body: bytes) -> None:
    for selector in (EXECUTE, EXECUTE_BATCH_V06, EXECUTE_BATCH_V07, EXECUTE_BATCH_V08):
        result = decode_calls(selector + body)
        assert result is None or all(isinstance(call, Call) for call in result)


@given(address=st.binary(min_size=20, max_size=20))
def test_checksums_match_eip55(address: bytes) -> None:
    assert checksum_of(address) == to_checksum_address(address)
