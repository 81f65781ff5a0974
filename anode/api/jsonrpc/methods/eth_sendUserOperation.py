"""Relayed to the chain's bundler (``api/jsonrpc/relay.py``): ``eth_sendUserOperation [userOp, entryPoint]``.

Answers the bundler's userOpHash; an operation aNode sponsored gets ``sent_at`` on its ledger row.
"""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.relay import send

NAME = "eth_sendUserOperation"


async def handle(params: Any, ctx: CallContext) -> Any:
    return await send(NAME, params, ctx)
