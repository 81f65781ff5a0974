"""``eth_getUserOperationReceipt [userOpHash]``: the bundler's receipt (``null`` until included).

Relayed unchanged to the bundler of the request's chain (``api/jsonrpc/relay.py``).
"""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.relay import relay

NAME = "eth_getUserOperationReceipt"


async def handle(params: Any, ctx: CallContext) -> Any:
    return await relay(NAME, params, ctx)
