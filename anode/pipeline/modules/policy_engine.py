"""``policy_engine``: sponsor only what the operator's policies allow, within their limits.

Runs in the ``policy`` stage, after the checks (it reads the calls the security filter decoded,
``ctx.facts["calls"]``, and decodes SimpleAccount callData itself when that filter is not run).
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
from anode.policy.calls import checksum_of, decode_calls, normalise_calls
from anode.policy.engine import Operation, PolicyEngine
from anode.policy.evaluate import OpFacts
from anode.policy.limits import DEFAULT_REDIS_PREFIX, LimiterKind, build_limiter
from anode.policy.repository import PolicyRepository
from anode.policy.webhooks import WebhookClient
from anode.userop.codec import checksum
from anode.userop.models import UserOperation

NAME = "policy_engine"


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
        ids = [policy.id for policy in decision.policies]
        ctx.facts["policies"] = ids
        if decision.refusal is not None:
            refusal = decision.refusal
            return Outcome.block(refusal.code, refusal.message, refusal.data)
        return Outcome.proceed({"policies": ids})

    async def aclose(self) -> None:
        await self.engine.aclose()


def operation_of(ctx: Context) -> Operation:
    """The operation in the pipeline: ``ctx.op`` already carries the paymaster's gas limits."""
    found = ctx.facts.get("calls")
    calls = normalise_calls(found) if found is not None else decode_calls(ctx.op.call_data)
    facts = OpFacts(checksum_of(ctx.op.sender), ctx.chain_id, calls, ctx.op.max_fee_per_gas, ctx.max_gas_cost)
    return Operation(facts, ctx.op, checksum_of(ctx.route.entry_point), ctx.api_key_id)


def operation_from(route: Route, op: UserOperation, api_key_id: str | None) -> Operation:
    """An operation outside the pipeline (dry runs): shaped with the paymaster's fields, as the pipeline sees it."""
    family = route.paymaster
    shaped = family.attach(op, family.encode(ValidityWindow(0, 0), dummy_signature()))
    facts = OpFacts(
        checksum(shaped.sender),
        route.chain_id,
        decode_calls(shaped.call_data),
        shaped.max_fee_per_gas,
        shaped.max_gas_cost(),
    )
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
