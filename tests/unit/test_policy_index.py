"""The policies' index (``PolicySet``): it narrows what ``evaluate`` looks at, never what applies.

A policy for another wallet, another contract or another chain is not among an operation's
candidates; a ``"*"`` wallet policy, a project policy and a policy for the operation's chain are.
Whatever the policies, evaluating the indexed set decides exactly as evaluating the plain list
(which checks every policy): the same applicable policies in the same order, the same refusal,
the same charges.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from eth_utils.address import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from anode.policy.calls import Call
from anode.policy.evaluate import NO_POLICY, OpFacts, PolicySet, evaluate
from anode.policy.models import Policy
from tests.policy.conftest import NFT, SENDER, TOKEN, TRANSFER, facts

NOW = datetime(2026, 11, 21, 15, 30, tzinfo=UTC).timestamp()
CHAIN = 31337
OTHER_CHAIN = 8453
#: checksummed, as the pipeline hands senders to ``evaluate``
OTHER_SENDER = to_checksum_address("0x" + "b2" * 20)
LIMIT = [{"type": "request", "limit": 10, "window": 3600}]


def make(policy_id: str, kind: str, target: str | None = None, **fields: Any) -> Policy:
    document = {"id": policy_id, "name": policy_id, "type": kind, "rate_limits": LIMIT, **fields}
    if target is not None:
        document["target"] = target
    return Policy.model_validate(document)


def applying(policies: list[Policy], op: OpFacts) -> list[str]:
    return [policy.id for policy in evaluate(PolicySet(policies), op, NOW).applicable]


def test_a_policy_for_another_wallet_contract_or_chain_is_no_candidate() -> None:
    others = [
        make("other-wallet", "wallet", OTHER_SENDER),
        make("other-contract", "contract", NFT),
        make("other-chain", "project", chain_ids=[OTHER_CHAIN]),
        make("other-chain-wallet", "wallet", "*", chain_ids=[OTHER_CHAIN]),
    ]
    indexed = PolicySet(others)
    assert indexed.candidates(facts()) == []
    refusal = evaluate(indexed, facts(), NOW).refusal
    assert refusal is not None and refusal.code == NO_POLICY
    # the refusal still names the covering policies of other chains, as without the index
    assert [p["policyId"] for p in refusal.data["inactivePolicies"]] == ["other-chain", "other-chain-wallet"]
    assert refusal == evaluate(others, facts(), NOW).refusal


def test_wildcards_and_the_operations_own_targets_are_candidates() -> None:
    policies = [
        make("every-wallet", "wallet", "*"),
        make("project", "project"),
        make("this-chain", "project", chain_ids=[OTHER_CHAIN, CHAIN]),
        make("this-wallet", "wallet", SENDER, priority=5),
        make("this-contract", "contract", TOKEN, chain_ids=[CHAIN]),
        make("other-wallet", "wallet", OTHER_SENDER),
        make("other-contract", "contract", NFT, chain_ids=[CHAIN]),
    ]
    expected = ["this-wallet", "every-wallet", "project", "this-chain", "this-contract"]
    assert applying(policies, facts()) == expected
    assert [p.id for p in PolicySet(policies).candidates(facts())] == expected
    # the other wallet's policy is the other wallet's; the chain's policies are gone on another chain
    assert applying(policies, facts(OTHER_SENDER, chain_id=OTHER_CHAIN)) == [
        "every-wallet",
        "other-wallet",
        "project",
        "this-chain",
    ]
    # a batch calling both contracts meets both contract policies, each once
    both = facts(calls=(Call(TOKEN, 0, TRANSFER), Call(NFT, 0, TRANSFER), Call(TOKEN, 0, TRANSFER)))
    assert applying(policies, both) == ["this-wallet", "every-wallet", "other-contract", *expected[2:]]


def test_a_chain_listed_twice_applies_once() -> None:
    policies = [make("twice", "project", chain_ids=[CHAIN, CHAIN])]
    evaluation = evaluate(PolicySet(policies), facts(), NOW)
    assert [p.id for p in evaluation.applicable] == ["twice"]
    assert len(evaluation.charges) == 1


ADDRESSES = [SENDER, OTHER_SENDER, TOKEN, NFT]
CHAINS = [CHAIN, OTHER_CHAIN]


@st.composite
def a_policy(draw: st.DrawFn, index: int) -> Policy:
    kind = draw(st.sampled_from(["project", "wallet", "contract"]))
    fields: dict[str, Any] = {
        "chain_ids": draw(st.lists(st.sampled_from(CHAINS), max_size=3)),
        "priority": draw(st.integers(-2, 2)),
        "enabled": draw(st.booleans()),
    }
    if draw(st.booleans()):
        fields["end_time"] = draw(st.sampled_from([int(NOW) - 60, int(NOW) + 60]))
    if draw(st.integers(0, 3)) == 0:
        fields["mode"] = draw(st.sampled_from(["verifying", "erc20"]))
    target = None
    if kind == "wallet":
        target = draw(st.sampled_from([*ADDRESSES, "*"]))
    elif kind == "contract":
        target = draw(st.sampled_from(ADDRESSES))
    return make(f"p{index}", kind, target, **fields)


@st.composite
def policies_and_operation(draw: st.DrawFn) -> tuple[list[Policy], OpFacts]:
    count = draw(st.integers(0, 12))
    policies = [draw(a_policy(index)) for index in range(count)]
    targets = draw(st.none() | st.lists(st.sampled_from(ADDRESSES), max_size=3))
    calls = None if targets is None else tuple(Call(target, 0, TRANSFER) for target in targets)
    op = OpFacts(draw(st.sampled_from(ADDRESSES)), draw(st.sampled_from(CHAINS)), calls, 10**9, 10**15, "0xb61d27f6")
    return policies, op


@settings(max_examples=400, deadline=None)
@given(case=policies_and_operation())
def test_the_index_decides_as_checking_every_policy(case: tuple[list[Policy], OpFacts]) -> None:
    policies, op = case
    assert evaluate(PolicySet(policies), op, NOW) == evaluate(policies, op, NOW)
