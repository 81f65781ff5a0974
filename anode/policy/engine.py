"""The policy engine: evaluate → ask webhooks → reserve, plus dry runs and usage status.

    decide(op, final=True)    the decision for a signature: counters are reserved (committed)
                              before it returns, and ``release(reserved)`` takes them back
    decide(op, final=False)   the same checks for stub data, reading counters without reserving
    would_sponsor(op, ids)    pm_validateSponsorshipPolicies: each named policy on its own, nothing reserved
    open_to_all()             whether no policy exists and the server therefore sponsors everything
    status(id, wallet, …)     usage, remaining and reset time of each limit; for amount limits
                              the actual cost of included operations (``spent``) apart from
                              what signed ones may still cost (``reserved``)

With no policy defined at all the engine sponsors everything (``when_no_policies: sponsor``,
the default, logged as a warning) or nothing (``refuse``). Once any policy exists, an operation
that no enabled policy applies to is refused with ``ANODE_015_NO_POLICY``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from anode.errors import InvalidRequest
from anode.policy.evaluate import (
    NO_POLICY,
    WEBHOOK_REJECTED,
    Charge,
    Evaluation,
    OpFacts,
    Refusal,
    charges_for,
    evaluate,
    inactive_reason,
    limit_refusal,
    ordered,
)
from anode.policy.limits import Bucket, LimiterStore
from anode.policy.models import AmountLimit, Policy, PolicyType, RequestLimit, iso, parse_checksum
from anode.policy.repository import PolicyRepository
from anode.policy.webhooks import WebhookClient, WebhookQuery

log = logging.getLogger("anode.policy")


@dataclass(frozen=True, slots=True)
class Operation:
    """An operation as the engine sees it: the facts policies test, and what a webhook is sent."""

    facts: OpFacts
    #: the RPC form (a dict), or the parsed model, dumped only if a webhook asks (off the hot path)
    user_operation: dict[str, Any] | BaseModel
    entry_point: str
    api_key_id: str | None = None

    def user_operation_json(self) -> dict[str, Any]:
        if isinstance(self.user_operation, dict):
            return self.user_operation
        return self.user_operation.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True, slots=True)
class Decision:
    refusal: Refusal | None
    #: the policies that applied (all of them allowed the operation when it is sponsored)
    policies: tuple[Policy, ...] = ()
    #: what was reserved (final decisions only): hand it to ``release`` if the signature is not made
    reserved: tuple[Bucket, ...] = ()
    #: the amount-limit buckets among ``reserved`` (in wei): reconciliation turns them into the actual cost
    amounts: tuple[Bucket, ...] = ()

    @property
    def sponsored(self) -> bool:
        return self.refusal is None


class PolicyEngine:
    def __init__(
        self,
        repository: PolicyRepository,
        limiter: LimiterStore,
        webhooks: WebhookClient,
        *,
        clock: Callable[[], float] = time.time,
        open_when_empty: bool = True,
    ) -> None:
        self.repository = repository
        self.limiter = limiter
        self.webhooks = webhooks
        self._clock = clock
        self._open_when_empty = open_when_empty
        self._warned_open = False

    async def decide(self, op: Operation, *, final: bool, only: str | None = None) -> Decision:
        policies = await self.repository.snapshot()
        if not policies:
            return self._no_policies(op)
        evaluation = evaluate(policies, op.facts, self._clock())
        if only is not None and all(p.id != only for p in evaluation.applicable):
            return Decision(_not_applicable(only, policies))
        if evaluation.refusal is not None:
            return Decision(evaluation.refusal, evaluation.applicable)
        refusal = await self._ask_webhooks(evaluation.webhooks, op, "final" if final else "stub")
        if refusal is not None:
            return Decision(refusal, evaluation.applicable)
        buckets = tuple(Bucket.of(charge) for charge in evaluation.charges)
        if not final:
            refusal = await self._peek(evaluation.charges, buckets)
            return Decision(refusal, evaluation.applicable)
        exceeded = await self.limiter.reserve(buckets)
        if exceeded is not None:
            return Decision(limit_refusal(evaluation.charges[exceeded.index], exceeded.used), evaluation.applicable)
        amounts = tuple(b for b, c in zip(buckets, evaluation.charges, strict=True) if isinstance(c.limit, AmountLimit))
        return Decision(None, evaluation.applicable, buckets, amounts)

    async def release(self, reserved: Sequence[Bucket]) -> None:
        """Undo a reservation whose signature was not made. Never raises: a failed release over-counts."""
        try:
            await self.limiter.release(reserved)
        except Exception as exc:
            log.error("a policy reservation could not be released (%s): usage stays over-counted", type(exc).__name__)

    def _no_policies(self, op: Operation) -> Decision:
        if self._open_when_empty:
            if not self._warned_open:
                self._warned_open = True
                log.warning(
                    "no sponsorship policies are defined: every operation is sponsored "
                    "(add policies, or set policy_engine when_no_policies: refuse)"
                )
            return Decision(None)
        message = (
            "no sponsorship policy is defined on this server, and it sponsors nothing without one; "
            "an operator must add a policy"
        )
        return Decision(Refusal(NO_POLICY, message, {"sender": op.facts.sender, "chainId": op.facts.chain_id}))

    async def _ask_webhooks(self, hooks: Sequence[Policy], op: Operation, stage: str) -> Refusal | None:
        if not hooks:
            return None
        query = WebhookQuery(op.user_operation_json(), op.entry_point, op.facts.chain_id, op.api_key_id, stage)
        answers = await asyncio.gather(*(self.webhooks.ask(policy, query) for policy in hooks))
        for policy, answer in zip(hooks, answers, strict=True):
            if answer.sponsor:
                continue
            if answer.failed:
                message = (
                    f"policy {policy.name!r}: its webhook {answer.reason}, and this policy refuses when its "
                    "webhook fails (fail_mode: closed); try again later"
                )
            else:
                message = f"policy {policy.name!r}: the policy's webhook declined to sponsor this operation"
                if answer.reason:
                    message += f" ({answer.reason})"
            data = {"policyId": policy.id, "policyName": policy.name, "webhookFailed": answer.failed}
            return Refusal(WEBHOOK_REJECTED, message, data)
        return None

    async def _peek(self, charges: Sequence[Charge], buckets: Sequence[Bucket]) -> Refusal | None:
        """Stub data: refuse now what the final call would refuse, without reserving anything."""
        used = await self.limiter.usage(buckets)
        for charge, current in zip(charges, used, strict=True):
            if current + charge.amount > charge.limit.limit:
                return limit_refusal(charge, current)
        return None

    # -- dry runs and status ----------------------------------------------------------------

    async def open_to_all(self) -> bool:
        """No policy is defined and ``when_no_policies: sponsor``: ``decide`` sponsors every operation.

        ``would_sponsor`` then finds no policy, while the real call sponsors: a dry run asks this too.
        """
        return self._open_when_empty and not await self.repository.snapshot()

    async def would_sponsor(self, op: Operation, policy_ids: Sequence[str] | None = None) -> list[Policy]:
        """The policies (of ``policy_ids``, or all) that would each, on its own, sponsor ``op``.

        With no policy defined this is empty even when the server sponsors everything: see ``open_to_all``.
        """
        policies = await self.repository.snapshot()
        by_id = {policy.id: policy for policy in policies}
        named = [by_id[pid] for pid in dict.fromkeys(policy_ids or ()) if pid in by_id]
        chosen = named if policy_ids else ordered(policies)
        now = self._clock()
        verdicts = await asyncio.gather(*(self._dry_run(evaluate([p], op.facts, now), op) for p in chosen))
        return [policy for policy, ok in zip(chosen, verdicts, strict=True) if ok]

    async def _dry_run(self, evaluation: Evaluation, op: Operation) -> bool:
        if evaluation.refusal is not None:
            return False
        if await self._ask_webhooks(evaluation.webhooks, op, "dry_run") is not None:
            return False
        buckets = [Bucket.of(charge) for charge in evaluation.charges]
        return await self._peek(evaluation.charges, buckets) is None

    async def status(self, policy_id: str, *, wallet: str | None = None, contract: str | None = None) -> dict[str, Any]:
        """Each limit's usage, remaining room and reset time (for one wallet of a per-wallet policy)."""
        policy = await self.repository.get(policy_id)
        wallet = _address(wallet, "wallet")
        contract = _address(contract, "contract")
        if policy.per_wallet and wallet is None:
            raise InvalidRequest(
                f"policy {policy.id!r} counts each wallet separately: pass ?wallet=0x… to see one wallet's usage",
                field="wallet",
            )
        now = self._clock()
        charges = charges_for(policy, None, now, scope=wallet if policy.per_wallet else None)
        buckets = [Bucket.of(charge) for charge in charges]
        usage, spent = await asyncio.gather(self.limiter.usage(buckets), self.limiter.spent(buckets))
        actual = dict(zip((b.key for b in buckets), spent, strict=True))
        counted = iter(zip(charges, usage, strict=True))  # charges_for follows rate_limits' order
        limits = []
        for limit in policy.rate_limits:
            entry = limit.model_dump(mode="json")
            if isinstance(limit, AmountLimit | RequestLimit):
                charge, current = next(counted)
                left = max(0, limit.limit - current)
                money = isinstance(limit, AmountLimit)
                entry["used"] = str(current) if money else current
                entry["remaining"] = str(left) if money else left
                if money:  # what included operations cost, and what signed ones may still cost
                    paid = min(current, actual[charge.key])
                    entry["spent"], entry["reserved"] = str(paid), str(current - paid)
                entry["windowStart"] = iso(charge.window_start) if charge.resets_at is not None else None
                entry["resetsAt"] = iso(charge.resets_at) if charge.resets_at is not None else None
            limits.append(entry)
        reason = inactive_reason(policy, None, now)
        answer: dict[str, Any] = {
            "id": policy.id,
            "name": policy.name,
            "type": policy.type.value,
            "target": policy.target,
            "active": reason is None,
            "inactiveReason": reason,
            "limits": limits,
            "at": iso(now),
        }
        if wallet is not None:
            answer["wallet"] = wallet
            answer["coversWallet"] = policy.type is not PolicyType.WALLET or policy.target in ("*", wallet)
        if contract is not None:
            answer["contract"] = contract
            answer["coversContract"] = policy.type is not PolicyType.CONTRACT or policy.target == contract
        return answer

    async def aclose(self) -> None:
        await self.webhooks.aclose()
        await self.limiter.aclose()
        await self.repository.aclose()


def _not_applicable(policy_id: str, policies: Sequence[Policy]) -> Refusal:
    known = any(policy.id == policy_id for policy in policies)
    why = "does not apply to this operation (its scope, time, chains, or it is disabled)" if known else "does not exist"
    message = f"policy {policy_id!r}, named in context.sponsorshipPolicyId, {why}"
    return Refusal(NO_POLICY, message, {"policyId": policy_id})


def _address(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return parse_checksum(value)
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}", field=name) from None
