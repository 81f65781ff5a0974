"""``pm_validateSponsorshipPolicies [userOp, entryPoint, sponsorshipPolicyIds, chainId?]``: a dry run.

Answers the policies among ``sponsorshipPolicyIds`` (all policies when the list is empty or
left out) that would each sponsor the operation now, in Pimlico's shape
``[{sponsorshipPolicyId, data: {name, author, icon, description}}]``. Each policy is judged on
its own (scope, time, chains, conditions, gas price and per-transaction limits, its webhook, and
room left in its counters) against the same calls the pipeline decodes; nothing is reserved.
``chainId`` (an aNode extension) picks the chain when the EntryPoint is served on several.

A server that sponsors without policies — no policy defined and ``when_no_policies: sponsor``,
or no ``policy_engine`` in the pipeline — answers one entry, whatever ids were named:
``{sponsorshipPolicyId: "anode:default", data: {name: "sponsored by default", …,
sponsoredByDefault: true}}``, since its real calls are sponsored (as far as policies go). That id
cannot be a policy's (ids have no ``:``).
"""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.params import ENTRY_POINT, OPTIONAL_CHAIN_ID, USER_OP, Param, bind
from anode.errors import InvalidRequest
from anode.pipeline.modules.policy_engine import engine_of, operation_from
from anode.userop.models import parse_user_op

NAME = "pm_validateSponsorshipPolicies"
PARAMS = (
    USER_OP,
    ENTRY_POINT,
    Param("sponsorshipPolicyIds", required=False, kinds=(list,)),
    OPTIONAL_CHAIN_ID,
)
#: the entry that stands for "no policy is needed here": not a valid policy id, so never a real one
DEFAULT_ID = "anode:default"


def _by_default(why: str) -> dict[str, Any]:
    return {
        "sponsorshipPolicyId": DEFAULT_ID,
        "data": {
            "name": "sponsored by default",
            "author": None,
            "icon": None,
            "description": why,
            "sponsoredByDefault": True,
        },
    }


async def handle(params: Any, ctx: CallContext) -> list[dict[str, Any]]:
    p = bind(NAME, params, PARAMS)
    ids = p["sponsorshipPolicyIds"] or []
    if not all(isinstance(item, str) for item in ids):
        raise InvalidRequest(f"{NAME}: sponsorshipPolicyIds must be a list of policy ids", field="sponsorshipPolicyIds")
    route = ctx.service.routes.resolve(p["entryPoint"], p["chainId"])
    op = parse_user_op(p["userOp"], route.version)
    engine = engine_of(ctx.service.pipeline.policies)
    if engine is None:
        return [_by_default("this server runs no policy engine: policies do not limit what it sponsors")]
    if await engine.open_to_all():
        return [
            _by_default(
                "no sponsorship policy is defined on this server, and it then sponsors every operation "
                "(policy_engine when_no_policies: sponsor)"
            )
        ]
    policies = await engine.would_sponsor(operation_from(route, op, ctx.api_key_id), ids)
    return [
        {
            "sponsorshipPolicyId": policy.id,
            "data": {"name": policy.name, "author": None, "icon": None, "description": policy.description},
        }
        for policy in policies
    ]
