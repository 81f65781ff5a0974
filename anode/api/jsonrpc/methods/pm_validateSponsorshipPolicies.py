"""``pm_validateSponsorshipPolicies [userOp, entryPoint, sponsorshipPolicyIds, chainId?]``: a dry run.

Answers the policies among ``sponsorshipPolicyIds`` (all policies when the list is empty or
left out) that would each sponsor the operation now, in Pimlico's shape
``[{sponsorshipPolicyId, data: {name, author, icon, description}}]``. Each policy is judged on
its own (scope, time, chains, conditions, gas price and per-transaction limits, its webhook, and
room left in its counters); nothing is reserved. ``chainId`` (an aNode extension) picks the
chain when the EntryPoint is served on several.
"""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.params import ENTRY_POINT, USER_OP, Param, bind
from anode.errors import InvalidRequest
from anode.pipeline.modules.policy_engine import engine_of, operation_from
from anode.userop.models import parse_user_op

NAME = "pm_validateSponsorshipPolicies"
PARAMS = (
    USER_OP,
    ENTRY_POINT,
    Param("sponsorshipPolicyIds", required=False, kinds=(list,)),
    Param("chainId", required=False, kinds=(str, int)),
)


async def handle(params: Any, ctx: CallContext) -> list[dict[str, Any]]:
    p = bind(NAME, params, PARAMS)
    ids = p["sponsorshipPolicyIds"] or []
    if not all(isinstance(item, str) for item in ids):
        raise InvalidRequest(f"{NAME}: sponsorshipPolicyIds must be a list of policy ids", field="sponsorshipPolicyIds")
    route = ctx.service.routes.resolve(p["entryPoint"], p["chainId"])
    op = parse_user_op(p["userOp"], route.version)
    engine = engine_of(ctx.service.pipeline.policies)
    if engine is None:  # no policy engine: no policy exists that could sponsor it
        return []
    policies = await engine.would_sponsor(operation_from(route, op, ctx.api_key_id), ids)
    return [
        {
            "sponsorshipPolicyId": policy.id,
            "data": {"name": policy.name, "author": None, "icon": None, "description": policy.description},
        }
        for policy in policies
    ]
