"""ERC-7677 ``pm_getPaymasterData [userOp, entryPoint, chainId, context]``: signed and recorded."""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.params import CHAIN_ID, CONTEXT, ENTRY_POINT, USER_OP, bind
from anode.api.jsonrpc.results import paymaster_fields
from anode.sponsorship import SponsorRequest

NAME = "pm_getPaymasterData"
PARAMS = (USER_OP, ENTRY_POINT, CHAIN_ID, CONTEXT)


async def handle(params: Any, ctx: CallContext) -> dict[str, Any]:
    p = bind(NAME, params, PARAMS)
    result = await ctx.service.sign(
        SponsorRequest(p["userOp"], p["entryPoint"], p["chainId"], p["context"], NAME, ctx.api_key_id, ctx.request_id)
    )
    return paymaster_fields(result)
