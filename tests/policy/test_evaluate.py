"""The pure part of the policy engine: policy documents, which policies apply, what they refuse and why.

No store, no network, no clock: every test passes the time it means.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from anode.pipeline.modules.policy_engine import account_selector, calls_of
from anode.pipeline.security.decode import (
    EXECUTE,
    EXECUTE_7579,
    EXECUTE_BATCH_CALLS,
    EXECUTE_BATCH_V06,
    EXECUTE_BATCH_V07,
)
from anode.policy.calls import Call, checksum_of
from anode.policy.evaluate import (
    CONDITION_FAILED,
    EXCLUDING,
    GAS_PRICE_TOO_HIGH,
    NO_POLICY,
    PER_TRANSACTION_LIMIT,
    charges_for,
    evaluate,
    limit_refusal,
    window_bounds,
)
from anode.policy.models import MASK, Operator, Policy, parse_wei
from tests.policy.conftest import (
    ETH,
    EXECUTE_SELECTOR,
    GWEI,
    MINT,
    NFT,
    OTHER_SENDER,
    SENDER,
    TOKEN,
    TRANSFER,
    facts,
    policy,
)

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


# -- calls ----------------------------------------------------------------------------------
#
# The calls policies see come from ``calls_of``, the security filter's decoder, whichever modules
# run (the decoder itself is held to eth_abi in tests/security/test_decode.py).

SENDER_BYTES = bytes.fromhex(SENDER[2:])
TRANSFER_DATA = bytes.fromhex(TRANSFER[2:]) + b"\x00" * 64
MINT_DATA = bytes.fromhex(MINT[2:])


def execute(target: str, value: int, data: bytes) -> bytes:
    """SimpleAccount ``execute(address,uint256,bytes)`` callData, as a wallet's ``abi.encode`` writes it."""
    return EXECUTE + encode(["address", "uint256", "bytes"], [target, value, data])


def erc7579_single(target: str, value: int, data: bytes) -> bytes:
    """ERC-7579 ``execute(bytes32 mode, bytes executionCalldata)`` in single-call mode (mode 0)."""
    execution = bytes.fromhex(target[2:]) + value.to_bytes(32, "big") + data
    return EXECUTE_7579 + encode(["bytes32", "bytes"], [b"\x00" * 32, execution])


def test_every_account_layout_is_decoded_into_the_calls_policies_see() -> None:
    assert calls_of(SENDER_BYTES, execute(TOKEN, 7, TRANSFER_DATA)) == (Call(TOKEN, 7, TRANSFER),)
    v06 = EXECUTE_BATCH_V06 + encode(["address[]", "bytes[]"], [[TOKEN, NFT], [TRANSFER_DATA, b""]])
    assert calls_of(SENDER_BYTES, v06) == (Call(TOKEN, 0, TRANSFER), Call(NFT, 0, "0x"))
    v07 = EXECUTE_BATCH_V07 + encode(["address[]", "uint256[]", "bytes[]"], [[TOKEN], [5], [TRANSFER_DATA]])
    assert calls_of(SENDER_BYTES, v07) == (Call(TOKEN, 5, TRANSFER),)
    v08 = EXECUTE_BATCH_CALLS + encode(["(address,uint256,bytes)[]"], [[(NFT, 1, MINT_DATA)]])
    assert calls_of(SENDER_BYTES, v08) == (Call(NFT, 1, MINT),)
    assert calls_of(SENDER_BYTES, erc7579_single(NFT, 3, MINT_DATA)) == (Call(NFT, 3, MINT),)
    batch = encode(["(address,uint256,bytes)[]"], [[(NFT, 0, MINT_DATA), (TOKEN, 0, TRANSFER_DATA)]])
    erc7579_batch = EXECUTE_7579 + encode(["bytes32", "bytes"], [b"\x01" + b"\x00" * 31, batch])
    assert calls_of(SENDER_BYTES, erc7579_batch) == (Call(NFT, 0, MINT), Call(TOKEN, 0, TRANSFER))


def test_empty_call_data_makes_no_call_and_has_no_account_function() -> None:
    assert calls_of(SENDER_BYTES, b"") == ()
    assert account_selector(b"") is None
    assert account_selector(execute(TOKEN, 0, b"")) == EXECUTE_SELECTOR


@pytest.mark.parametrize("call_data", [b"\x12\x34\x56\x78", EXECUTE + b"\x00" * 7, b"\x01\x02"])
def test_other_call_data_is_unknown_rather_than_guessed(call_data: bytes) -> None:
    assert calls_of(SENDER_BYTES, call_data) is None


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


#: one call moving 0.05 ETH: the boundary for the ordered operators on ``value``
PAYING = (Call(TOKEN, 5 * 10**16, TRANSFER),)

#: every operator, once holding and once refusing (boundaries included); ``calls`` None: the default
CONDITION_CASES: list[tuple[str, Any, str, tuple[Call, ...] | None, bool]] = [
    ("function", "in", [TRANSFER, MINT], None, True),
    ("function", "in", [MINT], None, False),
    ("target", "in", [TOKEN, NFT], None, True),
    ("target", "in", [NFT], None, False),
    ("value", "in", ["0.05 ether"], PAYING, True),
    ("value", "in", ["0.04 ether", "0.06 ether"], PAYING, False),
    ("sender", "in", [SENDER], None, True),
    ("chain_id", "in", [1], None, False),
    ("function", "not_in", [MINT], None, True),
    ("function", "not_in", [TRANSFER], None, False),
    ("target", "not_in", [NFT], None, True),
    ("target", "not_in", [TOKEN, NFT], None, False),
    ("sender", "not_in", [OTHER_SENDER], None, True),
    ("sender", "not_in", [SENDER], None, False),
    ("chain_id", "not_in", [1, 10], None, True),
    ("function", "eq", TRANSFER, None, True),
    ("function", "eq", MINT, None, False),
    ("target", "eq", TOKEN, None, True),
    ("target", "eq", NFT, None, False),
    ("chain_id", "eq", 31337, None, True),
    ("sender", "eq", OTHER_SENDER, None, False),
    ("function", "neq", MINT, None, True),
    ("function", "neq", TRANSFER, None, False),
    ("target", "neq", NFT, None, True),
    ("target", "neq", TOKEN, None, False),
    ("value", "neq", 1, PAYING, True),
    ("chain_id", "neq", 31337, None, False),
    ("value", "gt", "0.049 ether", PAYING, True),
    ("value", "gt", "0.05 ether", PAYING, False),  # equal is not above
    ("chain_id", "gt", 31336, None, True),
    ("chain_id", "gt", 31337, None, False),
    ("value", "gte", "0.05 ether", PAYING, True),  # equal is enough
    ("value", "gte", "0.051 ether", PAYING, False),
    ("chain_id", "gte", 31337, None, True),
    ("chain_id", "gte", 31338, None, False),
    ("value", "lt", "0.051 ether", PAYING, True),
    ("value", "lt", "0.05 ether", PAYING, False),  # equal is not below
    ("chain_id", "lt", 31338, None, True),
    ("chain_id", "lt", 31337, None, False),
    ("value", "lte", "0.05 ether", PAYING, True),  # equal is within the cap
    ("value", "lte", "0.049 ether", PAYING, False),
    ("chain_id", "lte", 31337, None, True),
    ("chain_id", "lte", 31336, None, False),
]


def test_every_operator_is_tested_holding_and_refusing() -> None:
    operators = set(get_args(Operator))
    assert {op for _, op, _, _, ok in CONDITION_CASES if ok} == operators
    assert {op for _, op, _, _, ok in CONDITION_CASES if not ok} == operators


@pytest.mark.parametrize(("field", "operator", "value", "calls", "ok"), CONDITION_CASES)
def test_conditions(field: str, operator: str, value: Any, calls: tuple[Call, ...] | None, ok: bool) -> None:
    p = make(name="cond", conditions=[{"field": field, "operator": operator, "value": value}])
    op = facts() if calls is None else facts(calls=calls)
    result = evaluate([p], op, NOW)
    if ok:
        assert result.refusal is None, result.refusal
    else:
        assert result.refusal is not None and result.refusal.code == CONDITION_FAILED
        assert result.refusal.message.startswith(f"policy 'cond': {field} ")
        assert result.refusal.data["condition"] == p.conditions[0].model_dump(mode="json")


def test_refusals_say_in_words_what_each_operator_wanted() -> None:
    def message(field: str, operator: str, value: Any) -> str:
        p = make(name="w", conditions=[{"field": field, "operator": operator, "value": value}])
        refusal = evaluate([p], facts(calls=PAYING), NOW).refusal
        assert refusal is not None
        return refusal.message

    assert message("target", "not_in", [TOKEN]) == f"policy 'w': target {TOKEN} is one of the excluded [{TOKEN}]"
    assert message("target", "neq", TOKEN) == f"policy 'w': target {TOKEN} must not be {TOKEN}"
    assert message("value", "gt", "0.05 ether") == "policy 'w': value 0.05 ETH is not above 0.05 ETH"
    assert message("value", "gte", "0.06 ether") == "policy 'w': value 0.05 ETH is below 0.06 ETH"
    assert message("value", "lt", "0.05 ether") == "policy 'w': value 0.05 ETH is not below 0.05 ETH"
    assert message("value", "lte", "0.01 ether") == "policy 'w': value 0.05 ETH is above 0.01 ETH"


# -- an operation that makes no call ----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "operator"),
    [
        (field, operator)
        for field in ("function", "target", "value")
        for operator in get_args(Operator)
        if field == "value" or operator in ("in", "not_in", "eq", "neq")  # ordered operators: numbers only
    ],
)
def test_with_no_call_demanding_operators_fail_and_excluding_ones_hold(field: str, operator: str) -> None:
    """Empty callData (deploy only): ``in``/``eq``/``gt``/``gte`` fail, ``not_in``/``neq``/``lt``/``lte`` hold."""
    value: Any = {"function": TRANSFER, "target": TOKEN, "value": 0}[field]
    if operator in ("in", "not_in"):
        value = [value]
    p = make(name="calls", conditions=[{"field": field, "operator": operator, "value": value}])
    deploy_only = facts(calls=(), account_selector=None)
    refusal = evaluate([p], deploy_only, NOW).refusal
    if operator in EXCLUDING:
        assert refusal is None
    else:
        assert refusal is not None and refusal.code == CONDITION_FAILED
        assert "makes no call" in refusal.message


def test_an_allow_list_does_not_sponsor_a_deploy_only_operation() -> None:
    """The reviewer's case: ``target in [X]`` on a project policy, and callData empty."""
    allow = make(name="allow", conditions=[{"field": "target", "operator": "in", "value": [NFT]}])
    refusal = evaluate([allow], facts(calls=calls_of(SENDER_BYTES, b""), account_selector=None), NOW).refusal
    assert refusal is not None and refusal.message == (
        f"policy 'allow' requires target in [{NFT}], but this operation makes no call (its callData is empty "
        "or an empty batch)"
    )
    assert evaluate([allow], facts(calls=(Call(NFT, 0, MINT),)), NOW).refusal is None


def test_an_empty_batch_makes_no_call_either() -> None:
    empty_batch = EXECUTE_BATCH_CALLS + encode(["(address,uint256,bytes)[]"], [[]])
    calls = calls_of(SENDER_BYTES, empty_batch)
    assert calls == ()
    mints = make(conditions=[{"field": "function", "operator": "in", "value": [MINT]}])
    assert evaluate([mints], facts(calls=calls, account_selector=account_selector(empty_batch)), NOW).refusal


# -- function: the account's own selector and the calls' ----------------------------------------


def function_policy(operator: str, value: Any) -> Policy:
    return make(name="fn", conditions=[{"field": "function", "operator": operator, "value": value}])


def facts_of_call_data(call_data: bytes) -> Any:
    return facts(calls=calls_of(SENDER_BYTES, call_data), account_selector=account_selector(call_data))


def test_the_issues_example_sponsors_a_simple_account_execute() -> None:
    """``{field: function, operator: in, value: ["0xb61d27f6"]}``: SimpleAccount ``execute`` itself."""
    issue = Policy.model_validate(
        {
            "id": "issue",
            "name": "execute only",
            "type": "project",
            "conditions": [{"field": "function", "operator": "in", "value": ["0xb61d27f6"]}],
        }
    )
    call_data = execute(TOKEN, 0, TRANSFER_DATA)
    assert call_data[:4].hex() == "b61d27f6"
    assert evaluate([issue], facts_of_call_data(call_data), NOW).refusal is None
    # an ERC-7579 account's execute is another function: refused, and the message names it
    refusal = evaluate([issue], facts_of_call_data(erc7579_single(TOKEN, 0, TRANSFER_DATA)), NOW).refusal
    assert (
        refusal is not None
        and refusal.message == f"policy 'execute only': function {TRANSFER} is not one of [{EXECUTE_SELECTOR}]"
    )


@pytest.mark.parametrize(
    ("operator", "value", "ok"),
    [
        ("in", [EXECUTE_SELECTOR], True),  # the account's own function
        ("in", [TRANSFER], True),  # the function it calls
        ("in", [MINT], False),
        ("eq", EXECUTE_SELECTOR, True),
        ("eq", TRANSFER, True),
        ("eq", MINT, False),
        ("not_in", [TRANSFER], False),  # it calls an excluded function
        ("not_in", [EXECUTE_SELECTOR], False),  # its own function is excluded
        ("not_in", [MINT], True),
        ("neq", TRANSFER, False),
        ("neq", EXECUTE_SELECTOR, False),
        ("neq", MINT, True),
    ],
)
def test_function_sees_the_account_function_and_the_called_one(operator: str, value: Any, ok: bool) -> None:
    call_data = execute(TOKEN, 0, TRANSFER_DATA)
    refusal = evaluate([function_policy(operator, value)], facts_of_call_data(call_data), NOW).refusal
    assert (refusal is None) is ok, refusal


def test_in_a_batch_every_call_or_the_batch_function_itself_must_be_allowed() -> None:
    batch = EXECUTE_BATCH_CALLS + encode(
        ["(address,uint256,bytes)[]"], [[(NFT, 0, MINT_DATA), (TOKEN, 0, TRANSFER_DATA)]]
    )
    op = facts_of_call_data(batch)
    assert evaluate([function_policy("in", [MINT])], op, NOW).refusal is not None
    assert evaluate([function_policy("in", [MINT, TRANSFER])], op, NOW).refusal is None
    assert evaluate([function_policy("in", ["0x" + EXECUTE_BATCH_CALLS.hex()])], op, NOW).refusal is None
    assert evaluate([function_policy("not_in", [TRANSFER])], op, NOW).refusal is not None


def test_undecodable_calls_pass_only_an_allow_list_naming_the_account_function() -> None:
    unknown = b"\xde\xad\xbe\xef" + b"\x00" * 40
    op = facts_of_call_data(unknown)
    assert op.calls is None
    assert evaluate([function_policy("in", ["0xdeadbeef"])], op, NOW).refusal is None
    for p in (function_policy("in", [MINT]), function_policy("not_in", [MINT])):
        refusal = evaluate([p], op, NOW).refusal
        assert refusal is not None and "not a call aNode can decode" in refusal.message
    assert evaluate([function_policy("not_in", ["0xdeadbeef"])], op, NOW).refusal is not None


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
@given(body=st.binary(max_size=400))
def test_any_call_data_decodes_or_is_unknown_never_an_error(body: bytes) -> None:
    for selector in (EXECUTE, EXECUTE_BATCH_V06, EXECUTE_BATCH_V07, EXECUTE_BATCH_CALLS, EXECUTE_7579):
        result = calls_of(SENDER_BYTES, selector + body)
        assert result is None or all(isinstance(call, Call) for call in result)


@given(address=st.binary(min_size=20, max_size=20))
def test_checksums_match_eip55(address: bytes) -> None:
    assert checksum_of(address) == to_checksum_address(address)
