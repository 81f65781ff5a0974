"""Which policies apply to an operation, and what each demands. Pure: no I/O, the time is an argument.

How policies combine (docs/policies.md says it for operators):

- A policy *applies* to an operation when its scope covers it (project and custom: every
  operation; contract: an operation with a call to ``target``; wallet: ``target`` is the sender,
  or ``"*"``; with ``mode`` only operations of that mode, with ``tokens`` only ERC-20 operations
  paying in one of them) and it is enabled, within ``start_time``/``end_time`` and for the operation's chain.
- An operation is sponsored when at least one policy applies and **every** applicable policy
  allows it: its conditions hold, the gas price and per-transaction limits are met, its webhook
  agrees, and each of its counters (amount, request) has room. Caps therefore always hold: a
  project-wide budget cannot be bypassed by a narrower policy.
- Policies are checked in priority order (higher first, then by id); the first refusal is the
  one reported.
- Counters use fixed windows aligned to the Unix epoch, or to ``start_time`` when one is set (a
  daily window resets at 00:00 UTC); no window means the counter never resets. A wallet policy
  with target ``"*"`` keeps one counter per sender.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from anode.policy.calls import Call
from anode.policy.models import EXACT, AmountLimit, Condition, CountedLimit, Policy, PolicyType, RequestLimit, iso

LIMIT_EXCEEDED = "ANODE_010_POLICY_LIMIT_EXCEEDED"
CONDITION_FAILED = "ANODE_011_POLICY_CONDITION_FAILED"
GAS_PRICE_TOO_HIGH = "ANODE_012_GAS_PRICE_TOO_HIGH"
PER_TRANSACTION_LIMIT = "ANODE_013_PER_TRANSACTION_LIMIT"
WEBHOOK_REJECTED = "ANODE_014_WEBHOOK_REJECTED"
NO_POLICY = "ANODE_015_NO_POLICY"

#: a counter outlives its window by this much, so a late release still finds it
GRACE_SECONDS = 300


@dataclass(frozen=True, slots=True)
class OpFacts:
    """What policies look at, taken from the pipeline's ``Context``."""

    sender: str
    chain_id: int
    #: the calls the account makes (``()``: none, e.g. empty callData); ``None`` when its callData could not be decoded
    calls: tuple[Call, ...] | None
    max_fee_per_gas: int
    max_gas_cost: int
    #: the account's own function: the selector of callData (``"0xb61d27f6"`` for SimpleAccount
    #: ``execute``); ``None`` when callData is shorter than 4 bytes
    account_selector: str | None = None
    #: ``verifying`` (the sponsor pays) or ``erc20`` (the sender pays the sponsor in ``token``)
    mode: str = "verifying"
    #: ERC-20 mode: the token the sender pays in (checksummed)
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Charge:
    """What one counted limit of one policy takes from its current window."""

    policy: Policy
    limit: CountedLimit
    #: the wallet, for a per-wallet policy; ``None``: one counter for the whole policy
    scope: str | None
    window_start: int
    #: when the window ends (``None``: never)
    resets_at: int | None
    amount: int

    @property
    def key(self) -> str:
        return f"{self.policy.id}:{self.limit.type}:{self.limit.window or 0}:{self.scope or '*'}"

    @property
    def expires_at(self) -> int | None:
        return None if self.resets_at is None else self.resets_at + GRACE_SECONDS


@dataclass(frozen=True, slots=True)
class Evaluation:
    #: the policies that apply, in the order they were checked
    applicable: tuple[Policy, ...]
    refusal: Refusal | None = None
    charges: tuple[Charge, ...] = ()
    #: custom policies whose webhook must agree
    webhooks: tuple[Policy, ...] = ()


def ordered(policies: Iterable[Policy]) -> list[Policy]:
    return sorted(policies, key=lambda p: (-p.priority, p.id))


#: an index key: (chain id, or ``None`` for every chain; ``"all"``, ``"wallet"`` or ``"contract"``; the target)
_Key = tuple[int | None, str, str | None]


class PolicySet(tuple[Policy, ...]):
    """The policies (a tuple, in the order given), indexed by (chain, type, target) in check order.

    :meth:`candidates` returns, in check order, the policies that can apply to an operation: those
    for its chain or every chain, and of those the project, custom and ``"*"`` wallet policies,
    the wallet policies for its sender and the contract policies for a contract it calls. So a
    policy for another wallet, contract or chain costs nothing per operation. The index only
    narrows: ``evaluate`` still checks every candidate in full (``covers``, ``inactive_reason``).
    """

    checked: tuple[Policy, ...]
    _index: dict[_Key, tuple[int, ...]]

    def __new__(cls, policies: Iterable[Policy] = ()) -> PolicySet:
        self = super().__new__(cls, policies)
        #: every policy in the order ``evaluate`` checks them
        self.checked = tuple(ordered(self))
        index: dict[_Key, list[int]] = {}
        for position, policy in enumerate(self.checked):
            if policy.type is PolicyType.CONTRACT or (policy.type is PolicyType.WALLET and policy.target != "*"):
                kind, target = policy.type.value, policy.target
            else:
                kind, target = "all", None
            for chain in dict.fromkeys(policy.chain_ids) or (None,):  # each chain once, however often listed
                index.setdefault((chain, kind, target), []).append(position)
        self._index = {key: tuple(positions) for key, positions in index.items()}
        return self

    def candidates(self, facts: OpFacts) -> list[Policy]:
        """The policies that may apply to the operation (a superset of those that do), in check order."""
        index, chain = self._index, facts.chain_id
        keys: list[_Key] = [(None, "all", None), (chain, "all", None), (None, "wallet", facts.sender)]
        keys.append((chain, "wallet", facts.sender))
        for target in {call.target for call in facts.calls or ()}:
            keys.append((None, "contract", target))
            keys.append((chain, "contract", target))
        found = [group for key in keys if (group := index.get(key))]
        if not found:
            return []
        # a policy sits under one target, and under each of its chains once: no position repeats
        positions = found[0] if len(found) == 1 else sorted(p for group in found for p in group)
        checked = self.checked
        return [checked[p] for p in positions]


def evaluate(policies: Sequence[Policy], facts: OpFacts, now: float) -> Evaluation:
    """The decision so far (before webhooks and counters): a refusal, or what remains to ask and reserve.

    A :class:`PolicySet` (the repository's snapshot) looks only at its candidates for the operation.
    """
    everything: Sequence[Policy]
    if isinstance(policies, PolicySet):
        everything, candidates = policies.checked, policies.candidates(facts)
    else:
        everything = candidates = ordered(policies)
    applicable = [p for p in candidates if covers(p, facts) and inactive_reason(p, facts, now) is None]
    if not applicable:
        # the refusal names every policy that covers the operation but is inactive, those of other chains too
        inactive = [(p, why) for p in everything if covers(p, facts) and (why := inactive_reason(p, facts, now))]
        return Evaluation((), no_policy_refusal(facts, inactive))
    for policy in applicable:
        refusal = check(policy, facts)
        if refusal is not None:
            return Evaluation(tuple(applicable), refusal)
    charges = tuple(charge for policy in applicable for charge in charges_for(policy, facts, now))
    webhooks = tuple(policy for policy in applicable if policy.webhook is not None)
    return Evaluation(tuple(applicable), None, charges, webhooks)


def covers(policy: Policy, facts: OpFacts) -> bool:
    """Whether the operation is in the policy's scope (its mode and tokens, its type and target)."""
    if policy.mode is not None and facts.mode != policy.mode:
        return False
    if policy.tokens and facts.token not in policy.tokens:
        return False
    if policy.type is PolicyType.CONTRACT:
        return facts.calls is not None and any(call.target == policy.target for call in facts.calls)
    if policy.type is PolicyType.WALLET:
        return policy.target in ("*", facts.sender)
    return True


def inactive_reason(policy: Policy, facts: OpFacts | None, now: float) -> str | None:
    """Why a policy does not apply right now (disabled, outside its time, another chain); ``None``: it does."""
    if not policy.enabled:
        return "disabled"
    if policy.start_time is not None and now < policy.start_time.timestamp():
        return f"starts at {iso(policy.start_time)}"
    if policy.end_time is not None and now >= policy.end_time.timestamp():
        return f"ended at {iso(policy.end_time)}"
    if facts is not None and policy.chain_ids and facts.chain_id not in policy.chain_ids:
        return f"covers chains {', '.join(map(str, policy.chain_ids))}, not {facts.chain_id}"
    return None


def check(policy: Policy, facts: OpFacts) -> Refusal | None:
    """Conditions, gas price and per-transaction limits: everything that needs no counter."""
    for condition in policy.conditions:
        refusal = _condition(policy, condition, facts)
        if refusal is not None:
            return refusal
    for limit in policy.rate_limits:
        if limit.type == "gas_price" and facts.max_fee_per_gas > limit.limit:
            return Refusal(
                GAS_PRICE_TOO_HIGH,
                f"{_named(policy)}: maxFeePerGas {format_gwei(facts.max_fee_per_gas)} is above the limit of "
                f"{format_gwei(limit.limit)}; it sponsors only at or below that price",
                {**_about(policy), "maxFeePerGas": str(facts.max_fee_per_gas), "limit": str(limit.limit)},
            )
        if limit.type == "per_transaction" and facts.max_gas_cost > limit.limit:
            return Refusal(
                PER_TRANSACTION_LIMIT,
                f"{_named(policy)}: this operation may cost up to {format_wei(facts.max_gas_cost)} (its maximum "
                f"gas cost), above the per-transaction limit of {format_wei(limit.limit)}; lower its gas limits "
                "or maxFeePerGas",
                {**_about(policy), "maxGasCost": str(facts.max_gas_cost), "limit": str(limit.limit)},
            )
    return None


def window_bounds(policy: Policy, limit: CountedLimit, now: float) -> tuple[int, int | None]:
    """The current window's start and end (end ``None``: the counter never resets)."""
    if limit.window is None:
        return 0, None
    window = limit.window
    offset = int(policy.start_time.timestamp()) % window if policy.start_time is not None else 0
    start = (int(now) - offset) // window * window + offset
    return start, start + window


def charges_for(policy: Policy, facts: OpFacts | None, now: float, *, scope: str | None = None) -> list[Charge]:
    """One charge per counted limit; ``facts`` ``None`` gives zero-amount charges (status queries)."""
    if facts is not None and policy.per_wallet:
        scope = facts.sender
    charges = []
    for limit in policy.rate_limits:
        if isinstance(limit, AmountLimit | RequestLimit):
            start, resets = window_bounds(policy, limit, now)
            amount = 0 if facts is None else (facts.max_gas_cost if isinstance(limit, AmountLimit) else 1)
            charges.append(Charge(policy, limit, scope, start, resets, amount))
    return charges


def limit_refusal(charge: Charge, used: int) -> Refusal:
    """The message for a full counter: which limit, how much is used, when it resets."""
    limit, policy = charge.limit, charge.policy
    if isinstance(limit, AmountLimit):
        what = f"amount limit of {format_wei(limit.limit)}"
        usage = f"{format_wei(used)} used, this operation may cost up to {format_wei(charge.amount)}"
    else:
        what = f"request limit of {limit.limit} operations"
        usage = f"{used} sponsored"
    per = f" per {limit.window} s" if limit.window else " in total"
    whose = f" for wallet {charge.scope}" if charge.scope else ""
    resets = f"resets at {iso(charge.resets_at)}" if charge.resets_at is not None else "it does not reset"
    if charge.amount > limit.limit:
        cost = format_wei(charge.amount)
        message = f"{_named(policy)}: this operation may cost up to {cost}, more than the whole {what}{per}"
    else:
        message = f"{_named(policy)}: {what}{per} reached{whose} ({usage}); {resets}"
    data = {
        **_about(policy),
        "limit": limit.model_dump(mode="json"),
        "used": str(used),
        "requested": str(charge.amount),
        "resetsAt": None if charge.resets_at is None else iso(charge.resets_at),
    }
    if charge.scope:
        data["wallet"] = charge.scope
    return Refusal(LIMIT_EXCEEDED, message, data)


def no_policy_refusal(facts: OpFacts, inactive: list[tuple[Policy, str]]) -> Refusal:
    targets = sorted({call.target for call in facts.calls or ()})
    if targets:
        calls = f"calling {', '.join(targets)}"
    else:
        calls = "with callData aNode cannot decode" if facts.calls is None else "making no call"
    message = (
        f"no enabled policy applies to this operation (sender {facts.sender}, chain {facts.chain_id}, {calls}); "
        "an operator must add a project, contract or wallet policy that covers it"
    )
    if inactive:
        message += "; covering but inactive: " + "; ".join(f"{_named(p)} {why}" for p, why in inactive[:5])
    data: dict[str, Any] = {"sender": facts.sender, "chainId": facts.chain_id}
    if inactive:
        data["inactivePolicies"] = [{"policyId": p.id, "reason": why} for p, why in inactive]
    return Refusal(NO_POLICY, message, data)


# -- conditions -------------------------------------------------------------------------------
#
# ``sender`` and ``chain_id`` are one value each. ``function``, ``target`` and ``value`` look at the
# calls the account makes (in a contract policy, only the calls to its contract):
#
# - ``in``, ``eq``, ``gt``, ``gte`` demand something of the calls: each call must satisfy them,
#   and there must be at least one call. Empty callData (deploy only) or an empty batch fails.
# - ``not_in``, ``neq``, ``lt``, ``lte`` exclude something (a function, a target, value above a
#   cap): each call must satisfy them, and an operation that makes no call satisfies them.
# - ``function`` also sees the account's own function, the selector of callData itself (SimpleAccount
#   ``execute`` 0xb61d27f6, …): ``in``/``eq`` hold when that selector satisfies them *or* the calls
#   do; ``not_in``/``neq`` must hold for that selector *and* for every call. So ``in [execute]``
#   allows every ``execute``, ``in [mint]`` allows an ``execute`` of ``mint``, and
#   ``not_in [transfer]`` refuses an ``execute`` of ``transfer``.
# - Calls that cannot be decoded fail every call condition, except ``function in``/``eq``
#   satisfied by the account's own function.

_ATTRIBUTE = {"function": "selector", "target": "target", "value": "value"}
#: operators that an operation making no call satisfies (they exclude; they demand nothing)
EXCLUDING = frozenset({"not_in", "neq", "lt", "lte"})
_PHRASES = {
    "in": "is not one of",
    "not_in": "is one of the excluded",
    "eq": "is not",
    "neq": "must not be",
    "gt": "is not above",
    "gte": "is below",
    "lt": "is not below",
    "lte": "is above",
}


def _holds(operator: str, actual: Any, expected: Any) -> bool:
    if operator == "in":
        return actual in expected
    if operator == "not_in":
        return actual not in expected
    if operator == "eq":
        return bool(actual == expected)
    if operator == "neq":
        return bool(actual != expected)
    if operator == "gt":
        return bool(actual > expected)
    if operator == "gte":
        return bool(actual >= expected)
    if operator == "lt":
        return bool(actual < expected)
    return bool(actual <= expected)


def _condition(policy: Policy, condition: Condition, facts: OpFacts) -> Refusal | None:
    field_name, operator = condition.field, condition.operator
    if field_name == "sender":
        return _each(policy, condition, [facts.sender])
    if field_name == "chain_id":
        return _each(policy, condition, [facts.chain_id])
    account = facts.account_selector if field_name == "function" else None
    if account is not None:
        account_holds = _holds(operator, account, condition.normal)
        if account_holds and operator not in EXCLUDING:
            return None  # the account's own function is allowed: whatever it calls
        if not account_holds and operator in EXCLUDING:
            return _failed(policy, condition, account)  # the account's own function is excluded
    if facts.calls is None:
        return Refusal(
            CONDITION_FAILED,
            f"{_named(policy)} requires {field_name} {operator} {_shown(condition)}, but this operation's "
            "callData is not a call aNode can decode (SimpleAccount execute/executeBatch, ERC-7579 execute)",
            {**_about(policy), "condition": condition.model_dump(mode="json")},
        )
    calls = facts.calls
    if policy.type is PolicyType.CONTRACT:  # a contract policy looks at the calls to its contract
        calls = tuple(call for call in calls if call.target == policy.target)
    if not calls and operator not in EXCLUDING:
        return Refusal(
            CONDITION_FAILED,
            f"{_named(policy)} requires {field_name} {operator} {_shown(condition)}, but this operation makes "
            "no call (its callData is empty or an empty batch)",
            {**_about(policy), "condition": condition.model_dump(mode="json"), "actual": None},
        )
    return _each(policy, condition, [getattr(call, _ATTRIBUTE[field_name]) for call in calls])


def _each(policy: Policy, condition: Condition, actuals: Iterable[Any]) -> Refusal | None:
    for actual in actuals:
        if not _holds(condition.operator, actual, condition.normal):
            return _failed(policy, condition, actual)
    return None


def _failed(policy: Policy, condition: Condition, actual: Any) -> Refusal:
    shown = format_wei(actual) if condition.field == "value" else str(actual)
    return Refusal(
        CONDITION_FAILED,
        f"{_named(policy)}: {condition.field} {shown} {_PHRASES[condition.operator]} {_shown(condition)}",
        {**_about(policy), "condition": condition.model_dump(mode="json"), "actual": str(actual)},
    )


def _shown(condition: Condition) -> str:
    def one(value: Any) -> str:
        return format_wei(int(value)) if condition.field == "value" else str(value)

    if isinstance(condition.value, list):
        return "[" + ", ".join(one(v) for v in condition.value) + "]"
    return one(condition.value)


# -- words ------------------------------------------------------------------------------------


def _named(policy: Policy) -> str:
    return f"policy {policy.name!r}"


def _about(policy: Policy) -> dict[str, Any]:
    return {"policyId": policy.id, "policyName": policy.name}


def _decimal(amount: int, decimals: int) -> str:
    return format(Decimal(amount).scaleb(-decimals, EXACT).normalize(EXACT), "f")


def format_wei(amount: int) -> str:
    """``1 ETH``, ``0.0025 ETH``, ``512 wei``: the chain's native token in 18 decimals."""
    if amount >= 10**12:
        return f"{_decimal(amount, 18)} ETH"
    return f"{amount} wei"


def format_gwei(amount: int) -> str:
    return f"{_decimal(amount, 9)} gwei"
