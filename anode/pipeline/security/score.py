"""Risk factors and the 0–100 score, from decoded calls and what the chain says about their targets.

Pure: no I/O. The weights below are the defaults (``docs/security.md`` explains each); an
operator may override any of them with ``weights:`` in the module's config. The score is the sum
of the weights of the *distinct* factor types present (five unverified targets count once),
capped at 100; a blacklisted target or spender makes it 100 whatever else is found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from anode.pipeline.security.decode import Call, Decoded, grant_of
from anode.pipeline.security.deployment import ContractFacts

Severity = Literal["low", "medium", "high", "critical"]
Level = Literal["low", "medium", "high", "critical"]
Decision = Literal["allow", "confirm", "block"]

#: scores from here up to the confirm threshold are "medium"
MEDIUM_FROM = 20


class Factor(StrEnum):
    BLACKLISTED = "blacklisted_contract"
    DELEGATECALL = "delegatecall"
    UNLIMITED_APPROVAL = "unlimited_approval"
    RECENT_DEPLOYMENT = "recent_deployment"
    LARGE_VALUE = "large_value"
    NO_CODE = "no_code"
    OPAQUE = "opaque_call_data"
    SELF_CALL = "account_self_call"
    UNVERIFIED = "unverified_contract"


@dataclass(frozen=True, slots=True)
class _Kind:
    weight: int
    severity: Severity
    recommendation: str


KINDS: dict[Factor, _Kind] = {
    Factor.BLACKLISTED: _Kind(100, "critical", "Do not interact with this address: the operator has blacklisted it"),
    Factor.DELEGATECALL: _Kind(
        50, "high", "Delegatecall runs foreign code with the account's storage and funds: use only audited modules"
    ),
    Factor.UNLIMITED_APPROVAL: _Kind(
        45, "high", "Approve only the amount needed, and only spenders you know (revoke unlimited allowances)"
    ),
    Factor.RECENT_DEPLOYMENT: _Kind(
        30, "medium", "The contract is brand new: wait, check its source and community reports first"
    ),
    Factor.LARGE_VALUE: _Kind(25, "medium", "Check the recipient and amount; try a small amount first"),
    Factor.NO_CODE: _Kind(
        20, "medium", "A function call to an address without code does nothing: check the address and the chain"
    ),
    Factor.OPAQUE: _Kind(20, "medium", "Review the operation in your wallet: aNode could not read what it does"),
    Factor.SELF_CALL: _Kind(
        20, "medium", "The operation changes the account itself (owner, upgrade, modules): make sure you meant it"
    ),
    Factor.UNVERIFIED: _Kind(15, "low", "The contract is not on the operator's verified list: check its source"),
}


@dataclass(frozen=True, slots=True)
class Rules:
    """The operator's settings the score depends on (addresses lower-case hex)."""

    block_threshold: int = 80
    confirm_threshold: int = 40
    blacklist: frozenset[str] = frozenset()
    verified: frozenset[str] = frozenset()
    recent_deployment_blocks: int = 7_200
    large_value_wei: int = 10**18
    weights: Mapping[Factor, int] | None = None

    def weight(self, factor: Factor) -> int:
        if self.weights is not None and factor in self.weights:
            return self.weights[factor]
        return KINDS[factor].weight


@dataclass(frozen=True, slots=True)
class RiskFactor:
    type: Factor
    severity: Severity
    description: str
    weight: int
    address: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type.value,
            "severity": self.severity,
            "description": self.description,
            "weight": self.weight,
        }
        if self.address is not None:
            body["address"] = self.address
        return body


@dataclass(frozen=True, slots=True)
class Assessment:
    score: int
    level: Level
    decision: Decision
    factors: tuple[RiskFactor, ...]
    decoded: Decoded
    targets: tuple[ContractFacts, ...]

    @property
    def calls(self) -> tuple[Call, ...]:
        return self.decoded.calls

    @property
    def recommendations(self) -> list[str]:
        seen = dict.fromkeys(factor.type for factor in self.factors)
        return [KINDS[kind].recommendation for kind in seen]

    @property
    def message(self) -> str:
        if not self.factors:
            return "no risk found"
        worst = sorted(self.factors, key=lambda factor: -factor.weight)
        return "; ".join(dict.fromkeys(factor.description for factor in worst[:3]))


def targets_to_inspect(decoded: Decoded, sender: str, rules: Rules) -> list[str]:
    """Distinct call targets whose code and age matter: not the account itself, not listed either way."""
    if decoded.opaque:
        return []
    wanted: dict[str, None] = {}
    for call in decoded.calls:
        key = call.target.lower()
        if key != sender.lower() and key not in rules.verified and key not in rules.blacklist:
            wanted[call.target] = None
    return list(wanted)


def _level(score: int, rules: Rules) -> Level:
    if score >= rules.block_threshold:
        return "critical"
    if score >= rules.confirm_threshold:
        return "high"
    return "medium" if score >= min(MEDIUM_FROM, rules.confirm_threshold) else "low"


def assess(
    decoded: Decoded, sender: str, facts: Iterable[ContractFacts], rules: Rules, *, uninspected: int = 0
) -> Assessment:
    """Score ``decoded`` (the operation of ``sender``) given what the chain said about its targets.

    ``uninspected``: targets left unread (a batch past the inspection limit) count as opaque.
    """
    found: list[RiskFactor] = []

    def add(factor: Factor, description: str, address: str | None = None) -> None:
        found.append(RiskFactor(factor, KINDS[factor].severity, description, rules.weight(factor), address))

    by_address = {fact.address.lower(): fact for fact in facts}
    account = sender.lower()
    if decoded.opaque:
        add(Factor.OPAQUE, "the account's callData has a layout aNode cannot decode")
    else:
        if uninspected:
            add(Factor.OPAQUE, f"{uninspected} more call targets than aNode inspects in one operation")
        for call in decoded.calls:
            _call_factors(call, account, by_address.get(call.target.lower()), rules, add)
        total = sum(call.value for call in decoded.calls)
        if rules.large_value_wei and total >= rules.large_value_wei:
            add(Factor.LARGE_VALUE, f"the operation sends {total} wei (threshold {rules.large_value_wei})")
    score = 100 if any(f.type is Factor.BLACKLISTED for f in found) else _score(found)
    level = _level(score, rules)
    decision: Decision = (
        "block" if score >= rules.block_threshold else "confirm" if score >= rules.confirm_threshold else "allow"
    )
    return Assessment(score, level, decision, tuple(found), decoded, tuple(by_address.values()))


def _score(found: list[RiskFactor]) -> int:
    distinct: dict[Factor, int] = {}
    for factor in found:
        distinct[factor.type] = max(distinct.get(factor.type, 0), factor.weight)
    return min(100, sum(distinct.values()))


_Add = Callable[[Factor, str, str | None], None]


def _call_factors(call: Call, account: str, fact: ContractFacts | None, rules: Rules, add: _Add) -> None:
    target, key = call.target, call.target.lower()
    if key in rules.blacklist:
        add(Factor.BLACKLISTED, f"{target} is blacklisted", target)
        return
    verified = key in rules.verified
    if call.kind == "delegatecall" and not verified:
        add(Factor.DELEGATECALL, f"delegatecall into {target}", target)
    if key == account:
        add(Factor.SELF_CALL, f"the operation calls the account itself ({call.selector or 'no selector'})", target)
    elif fact is not None and not verified:
        if not fact.has_code:
            if call.data:
                add(Factor.NO_CODE, f"{target} has no code, yet the call sends it data ({call.selector})", target)
        else:
            add(Factor.UNVERIFIED, f"{target} is not on the verified list", target)
            if fact.age_blocks is not None and not fact.older_than_window:
                add(
                    Factor.RECENT_DEPLOYMENT,
                    f"{target} was deployed {fact.age_blocks} blocks ago (block {fact.deployment_block})",
                    target,
                )
    grant = grant_of(call)
    if grant is None:
        return
    spender = grant.spender.lower()
    if spender in rules.blacklist:
        add(Factor.BLACKLISTED, f"{grant.kind} gives blacklisted {grant.spender} rights over {target}", grant.spender)
    elif grant.unlimited and spender not in rules.verified:
        what = "every token" if grant.amount is None else "an unlimited allowance"
        add(
            Factor.UNLIMITED_APPROVAL,
            f"{grant.kind} gives {grant.spender} {what} of {target}, and it is not a verified spender",
            grant.spender,
        )
