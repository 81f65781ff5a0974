"""``policy_engine``: sponsor only what the operator's policies allow, within their limits.

Runs in the ``policy`` stage, after the checks. The calls policies see come from
:func:`calls_of`, the security filter's decoder (SimpleAccount and ERC-7579), whether or not the
security filter runs, and the dry run (``pm_validateSponsorshipPolicies``) uses the same function:
the calls, and so the decision, never depend on which modules are configured.
For final data (``ctx.final``) it reserves every counter before answering ``continue`` and
appends a compensation to ``ctx.compensations`` that releases them; the service awaits it when
signing or recording fails. Stub data is checked the same way without reserving anything.

    pipeline:
      modules:
        - name: policy_engine
          config: {limiter: auto, when_no_policies: sponsor, refresh_seconds: 2}

How policies combine and every refusal code: docs/policies.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from anode.paymasters.base import ValidityWindow, dummy_signature
from anode.pipeline.base import Context, Outcome
from anode.pipeline.deps import Dependencies
from anode.pipeline.routes import Route
from anode.pipeline.security.decode import Decoded, decode_call_data, selector_of
from anode.policy.calls import NO_FUNCTION, Call, checksum_of
from anode.policy.engine import Operation, PolicyEngine
from anode.policy.evaluate import OpFacts
from anode.policy.limits import DEFAULT_REDIS_PREFIX, LimiterKind, build_limiter
from anode.policy.repository import PolicyRepository
from anode.policy.webhooks import WebhookClient
from anode.store.reconcile import Reservation
from anode.userop.models import UserOperation

NAME = "policy_engine"
#: ``Context.facts`` key: the amount-limit reservations of a final decision, which the ledger records
RESERVATIONS = "reservations"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: where counters live: ``auto`` = Redis when ``redis_url`` is set, else the database; ``memory`` = one process
    limiter: LimiterKind = "auto"
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    #: seconds a limiter call may take before the operation is refused (fail closed)
    store_timeout: float = Field(2.0, gt=0, le=30)
    #: how old the in-process copy of the policies may get (changes by other processes show up within it)
    refresh_seconds: float = Field(2.0, ge=0, le=300)
    #: with no policy defined at all: ``sponsor`` everything (warned at start) or ``refuse`` everything
    when_no_policies: Literal["sponsor", "refuse"] = "sponsor"


class PolicyEngineModule:
    name: str = NAME
    stage: Literal["check", "policy"] = "policy"

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine

    async def run(self, ctx: Context) -> Outcome:
        decision = await self.engine.decide(operation_of(ctx), final=ctx.final, only=_named_policy(ctx))
        if decision.reserved:
            ctx.compensations.append(partial(self.engine.release, decision.reserved))
        if decision.amounts:  # recorded with the signature, for reconciliation (store/reconcile.py)
            ctx.facts[RESERVATIONS] = tuple(Reservation(b.key, b.window_start, b.amount) for b in decision.amounts)
        ids = [policy.id for policy in decision.policies]
        if decision.refusal is not None:
            refusal = decision.refusal
            return Outcome.block(refusal.code, refusal.message, refusal.data)
        return Outcome.proceed({"policies": ids})

    async def aclose(self) -> None:
        await self.engine.aclose()


def calls_of(sender: bytes, call_data: bytes, decoded: Decoded | None = None) -> tuple[Call, ...] | None:
    """The calls policies see: ``()`` for empty callData, ``None`` for callData no decoder understands.

    The one decoder for the pipeline and the dry run alike: the security filter's
    (``decode_call_data``: SimpleAccount execute/executeBatch v0.6/v0.7/v0.8, ERC-7579 single,
    batch and delegatecall; in the pipeline ``ctx.decoded()``, decoded once whichever modules
    run), so the calls are the same whichever modules are configured.
    """
    if decoded is None:
        decoded = decode_call_data(sender, call_data)
    if decoded.opaque:
        return None
    return tuple(Call(call.target, call.value, call.selector or NO_FUNCTION) for call in decoded.calls)


#: the account's own function: the selector of callData (``None`` when shorter than 4 bytes)
account_selector = selector_of


def facts_of(
    op: UserOperation,
    chain_id: int,
    max_gas_cost: int,
    decoded: Decoded | None = None,
    *,
    mode: str = "verifying",
    token: str | None = None,
) -> OpFacts:
    """What policies test, the same for the pipeline and the dry run."""
    calls = calls_of(op.sender, op.call_data, decoded)
    selector = account_selector(op.call_data)
    return OpFacts(checksum_of(op.sender), chain_id, calls, op.max_fee_per_gas, max_gas_cost, selector, mode, token)


def operation_of(ctx: Context) -> Operation:
    """The operation in the pipeline: ``ctx.op`` already carries the paymaster's gas limits."""
    facts = facts_of(ctx.op, ctx.chain_id, ctx.max_gas_cost, ctx.decoded(), mode=ctx.mode, token=ctx.token)
    return Operation(facts, ctx.op, checksum_of(ctx.route.entry_point), ctx.api_key_id)


def operation_from(route: Route, op: UserOperation, api_key_id: str | None) -> Operation:
    """An operation outside the pipeline (dry runs): shaped with the paymaster's fields, as the pipeline sees it."""
    family = route.paymaster
    shaped = family.attach(op, family.encode(ValidityWindow(0, 0), dummy_signature()))
    facts = facts_of(shaped, route.chain_id, shaped.max_gas_cost())
    return Operation(facts, shaped, route.entry_point_hex, api_key_id)


def _named_policy(ctx: Context) -> str | None:
    """``context.sponsorshipPolicyId`` (Pimlico) or ``context.policyId`` (Alchemy): that policy must apply."""
    context: Any = ctx.request.context
    if not isinstance(context, dict):
        return None
    named = context.get("sponsorshipPolicyId", context.get("policyId"))
    return named if isinstance(named, str) else None


def build_engine(config: Config, deps: Dependencies) -> PolicyEngine:
    """The engine from the server's dependencies; seeds ``settings.policies`` (idempotent by id)."""
    repository = PolicyRepository(deps.engine, refresh_seconds=config.refresh_seconds)
    repository.seed(deps.settings.policies)
    limiter = build_limiter(
        config.limiter,
        engine=deps.engine,
        redis=deps.redis,
        redis_prefix=config.redis_prefix,
        timeout=config.store_timeout,
        clock=deps.clock,
    )
    return PolicyEngine(
        repository, limiter, WebhookClient(), clock=deps.clock, open_when_empty=config.when_no_policies == "sponsor"
    )


def create(config: Config, deps: Dependencies) -> PolicyEngineModule:
    return PolicyEngineModule(build_engine(config, deps))


def engine_of(modules: Iterable[object]) -> PolicyEngine | None:
    """The policy engine among a pipeline's modules (for the policies API and dry runs)."""
    for module in modules:
        if isinstance(module, PolicyEngineModule):
            return module.engine
    return None
