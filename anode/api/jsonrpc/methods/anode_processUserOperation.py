"""``anode_processUserOperation [userOp, entryPoint, chainId?, context?]``: the REST ``/process`` call
over JSON-RPC — module verdicts and timings, then the signed data or the confirmation to give."""

from __future__ import annotations

from typing import Any

from anode.api import process as flow
from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.params import CONTEXT, ENTRY_POINT, OPTIONAL_CHAIN_ID, USER_OP, bind
from anode.sponsorship import SponsorRequest

NAME = "anode_processUserOperation"
PARAMS = (USER_OP, ENTRY_POINT, OPTIONAL_CHAIN_ID, CONTEXT)


async def handle(params: Any, ctx: CallContext) -> dict[str, Any]:
    p = bind(NAME, params, PARAMS)
    request = SponsorRequest(
        p["userOp"], p["entryPoint"], p["chainId"], p["context"], NAME, ctx.api_key_id, ctx.request_id
    )
    return await flow.process(ctx.service, request)
