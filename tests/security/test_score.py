"""Risk scoring, one factor at a time, then how factors add up into a level and a decision.

Pure: the chain's answers about each target are given as ``ContractFacts``.
"""

from __future__ import annotations

from eth_abi import encode
from eth_utils.address import to_checksum_address

from anode.pipeline.security.decode import (
    APPROVE,
    EXECUTE,
    EXECUTE_7579,
    EXECUTE_BATCH_CALLS,
    PERMIT,
    SET_APPROVAL_FOR_ALL,
)
from anode.pipeline.security.decode import decode_call_data as decode
from anode.pipeline.security.deployment import ContractFacts
from anode.pipeline.security.score import KINDS, Assessment, Factor, Rules, assess, targets_to_inspect

SENDER = to_checksum_address("0x" + "a1" * 20)
TARGET = to_checksum_address("0x" + "c0" * 20)
OTHER = to_checksum_address("0x" + "c1" * 20)
SPENDER = to_checksum_address("0x" + "5e" * 20)
UNLIMITED = 2**256 - 1
RULES = Rules()
OLD = ContractFacts(TARGET, has_code=True, older_than_window=True)


def execute(target: str = TARGET, value: int = 0, data: bytes = b"") -> bytes:
    return EXECUTE + encode(["address", "uint256", "bytes"], [target, value, data])


def approve(spender: str = SPENDER, amount: int = UNLIMITED) -> bytes:
    return APPROVE + encode(["address", "uint256"], [spender, amount])


def run(call_data: bytes, *facts: ContractFacts, rules: Rules = RULES) -> Assessment:
    return assess(decode(bytes.fromhex(SENDER[2:]), call_data), SENDER, facts, rules)


def types(assessment: Assessment) -> set[Factor]:
    return {factor.type for factor in assessment.factors}


def test_a_call_to_an_old_verified_contract_is_clean() -> None:
    result = run(execute(data=b"\x12\x34\x56\x78"), OLD, rules=Rules(verified=frozenset({TARGET.lower()})))
    assert result.score == 0 and result.level == "low" and result.decision == "allow" and not result.factors
    assert result.message == "no risk found" and result.recommendations == []


def test_unverified_contract() -> None:
    result = run(execute(data=b"\x12\x34\x56\x78"), OLD)
    assert types(result) == {Factor.UNVERIFIED} and result.score == 15 and result.level == "low"
    assert result.factors[0].address == TARGET and result.factors[0].severity == "low"


def test_blacklisted_target_scores_100_whatever_else() -> None:
    result = run(execute(), rules=Rules(blacklist=frozenset({TARGET.lower()})))
    assert Factor.BLACKLISTED in types(result)
    assert result.score == 100 and result.level == "critical" and result.decision == "block"
    assert "blacklisted" in result.message


def test_blacklist_outranks_the_verified_list() -> None:
    both = frozenset({TARGET.lower()})
    assert run(execute(), rules=Rules(blacklist=both, verified=both)).score == 100


def test_recent_deployment() -> None:
    young = ContractFacts(TARGET, True, deployment_block=990, age_blocks=10)
    result = run(execute(data=b"\x01\x02\x03\x04"), young)
    assert types(result) == {Factor.UNVERIFIED, Factor.RECENT_DEPLOYMENT}
    assert result.score == 45 and result.level == "high" and result.decision == "confirm"
    assert "10 blocks ago (block 990)" in result.message


def test_age_unknown_counts_no_age_factor() -> None:
    unknown = ContractFacts(TARGET, has_code=True)  # the node kept no history
    assert types(run(execute(data=b"\x01\x02\x03\x04"), unknown)) == {Factor.UNVERIFIED}


def test_unlimited_approval_to_an_unknown_spender() -> None:
    result = run(execute(data=approve()), OLD)
    assert types(result) == {Factor.UNVERIFIED, Factor.UNLIMITED_APPROVAL}
    assert result.score == 60 and result.decision == "confirm"
    approval = next(f for f in result.factors if f.type is Factor.UNLIMITED_APPROVAL)
    assert approval.address == SPENDER and approval.severity == "high"


def test_approvals_that_are_fine() -> None:
    verified = Rules(verified=frozenset({TARGET.lower(), SPENDER.lower()}))
    assert run(execute(data=approve()), OLD, rules=verified).score == 0  # a spender the operator trusts
    assert types(run(execute(data=approve(amount=10**18)), OLD)) == {Factor.UNVERIFIED}  # a bounded amount


def test_set_approval_for_all_and_permit() -> None:
    all_tokens = SET_APPROVAL_FOR_ALL + encode(["address", "bool"], [SPENDER, True])
    assert Factor.UNLIMITED_APPROVAL in types(run(execute(data=all_tokens), OLD))
    revoke = SET_APPROVAL_FOR_ALL + encode(["address", "bool"], [SPENDER, False])
    assert Factor.UNLIMITED_APPROVAL not in types(run(execute(data=revoke), OLD))
    permit = PERMIT + encode(
        ["address", "address", "uint256", "uint256", "uint8", "bytes32", "bytes32"],
        [SENDER, SPENDER, UNLIMITED, 2**40, 27, b"\x01" * 32, b"\x02" * 32],
    )
    assert Factor.UNLIMITED_APPROVAL in types(run(execute(data=permit), OLD))


def test_approval_to_a_blacklisted_spender_blocks() -> None:
    result = run(execute(data=approve(amount=1)), OLD, rules=Rules(blacklist=frozenset({SPENDER.lower()})))
    assert result.score == 100 and result.decision == "block"


def test_large_native_value() -> None:
    eoa = ContractFacts(TARGET, has_code=False)
    result = run(execute(value=10**18), eoa)
    assert types(result) == {Factor.LARGE_VALUE} and result.score == 25 and result.level == "medium"
    assert run(execute(value=10**18 - 1), eoa).score == 0
    assert run(execute(value=10**30), eoa, rules=Rules(large_value_wei=0)).score == 0  # 0 turns it off


def test_no_code() -> None:
    eoa = ContractFacts(TARGET, has_code=False)
    assert run(execute(value=1), eoa).score == 0  # a plain transfer to an EOA is fine
    result = run(execute(data=approve()), eoa)  # "approving" on an address without code does nothing
    assert Factor.NO_CODE in types(result)


def test_opaque_call_data() -> None:
    result = run(bytes.fromhex("deadbeef") + bytes(64))
    assert types(result) == {Factor.OPAQUE} and result.score == 20 and result.level == "medium"


def test_delegatecall() -> None:
    mode = bytes([0xFF]) + bytes(31)
    call_data = EXECUTE_7579 + encode(["bytes32", "bytes"], [mode, bytes.fromhex(TARGET[2:]) + b"\x01\x02\x03\x04"])
    result = run(call_data, OLD)
    assert types(result) == {Factor.DELEGATECALL, Factor.UNVERIFIED} and result.score == 65


def test_a_call_to_the_account_itself() -> None:
    upgrade = bytes.fromhex("4f1ef286") + encode(["address", "bytes"], [OTHER, b""])  # upgradeToAndCall
    result = run(execute(target=SENDER, data=upgrade))
    assert types(result) == {Factor.SELF_CALL} and "0x4f1ef286" in result.message


def test_factors_of_one_type_count_once() -> None:
    items = [(TARGET, 0, b"\x01\x02\x03\x04"), (OTHER, 0, b"\x01\x02\x03\x04")]
    call_data = EXECUTE_BATCH_CALLS + encode(["(address,uint256,bytes)[]"], [items])
    result = run(call_data, OLD, ContractFacts(OTHER, has_code=True, older_than_window=True))
    assert [f.type for f in result.factors] == [Factor.UNVERIFIED, Factor.UNVERIFIED] and result.score == 15


def test_everything_together_is_capped_at_100_and_blocks() -> None:
    young = ContractFacts(TARGET, True, deployment_block=1, age_blocks=2)
    result = run(execute(value=10**20, data=approve()), young)
    assert {Factor.UNLIMITED_APPROVAL, Factor.RECENT_DEPLOYMENT, Factor.LARGE_VALUE} <= types(result)
    assert result.score == 100 and result.decision == "block" and result.level == "critical"


def test_weights_and_thresholds_are_the_operators() -> None:
    rules = Rules(weights={Factor.UNVERIFIED: 50}, confirm_threshold=50, block_threshold=60)
    result = run(execute(data=b"\x01\x02\x03\x04"), OLD, rules=rules)
    assert result.score == 50 and result.decision == "confirm" and result.factors[0].weight == 50
    assert KINDS[Factor.UNVERIFIED].weight == 15  # the defaults are untouched


def test_uninspected_targets_count_as_opaque() -> None:
    decoded = decode(bytes.fromhex(SENDER[2:]), execute())
    assert {f.type for f in assess(decoded, SENDER, [], RULES, uninspected=3).factors} == {Factor.OPAQUE}


def test_which_targets_are_read_from_the_chain() -> None:
    rules = Rules(verified=frozenset({OTHER.lower()}), blacklist=frozenset({SPENDER.lower()}))
    items = [(TARGET, 0, b""), (OTHER, 0, b""), (SPENDER, 0, b""), (SENDER, 0, b""), (TARGET, 1, b"")]
    decoded = decode(bytes.fromhex(SENDER[2:]), EXECUTE_BATCH_CALLS + encode(["(address,uint256,bytes)[]"], [items]))
    assert targets_to_inspect(decoded, SENDER, rules) == [TARGET]
    assert targets_to_inspect(decode(b"\x01" * 20, b"\xde\xad\xbe\xef"), SENDER, rules) == []
