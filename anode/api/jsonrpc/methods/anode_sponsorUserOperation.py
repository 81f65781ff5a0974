"""``anode_sponsorUserOperation``: ``pm_sponsorUserOperation`` under aNode's name, plus the
operation's hash and validity window."""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.methods.pm_sponsorUserOperation import PARAMS
from anode.api.jsonrpc.params import bind
from anode.api.jsonrpc.results import gas_fields, paymaster_fields, signed_extras
from anode.sponsorship import SponsorRequest

NAME = "anode_sponsorUserOperation"


async def handle(params: Any, ctx: CallContext) -> dict[str, Any]:
    p = bind(NAME, params, PARAMS)
    result = await ctx.service.estimate_and_sign(
        SponsorRequest(p["userOp"], p["entryPoint"], None, p["context"], NAME, ctx.api_key_id, ctx.request_id)
    )
    return {**gas_fields(result), **paymaster_fields(result), **signed_extras(result)}
