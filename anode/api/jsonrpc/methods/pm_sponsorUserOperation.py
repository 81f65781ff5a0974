"""``pm_sponsorUserOperation [userOp, entryPoint, context?]``: estimate gas, then sponsor.

The Pimlico / Stackup / Arka method: gas is estimated through the chain's configured bundler
with stub paymaster data, and the paymaster data is signed over those limits.
"""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.params import CONTEXT, ENTRY_POINT, USER_OP, bind
from anode.api.jsonrpc.results import gas_fields, paymaster_fields
from anode.sponsorship import SponsorRequest

NAME = "pm_sponsorUserOperation"
PARAMS = (USER_OP, ENTRY_POINT, CONTEXT)


async def handle(params: Any, ctx: CallContext) -> dict[str, Any]:
    p = bind(NAME, params, PARAMS)
    result = await ctx.service.estimate_and_sign(
        SponsorRequest(p["userOp"], p["entryPoint"], None, p["context"], NAME, ctx.api_key_id, ctx.request_id)
    )
    return {**gas_fields(result), **paymaster_fields(result)}
