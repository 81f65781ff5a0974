"""JSON-RPC 2.0 envelope handling: single calls and batches, notifications, error objects."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from anode.api.errors import PARSE_ERROR, invalid_rpc, rpc_failure
from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.methods import METHODS
from anode.errors import MethodNotFound

#: the default of ``server.max_batch_length``
MAX_BATCH = 100


async def _one(call: Any, ctx: CallContext) -> dict[str, Any] | None:
    if not isinstance(call, dict):
        return invalid_rpc("invalid request: each call must be a JSON object")
    call_id = call.get("id")
    if isinstance(call_id, bool) or not isinstance(call_id, str | int | float | type(None)):
        return invalid_rpc("invalid request: id must be a string, number or null")
    method = call.get("method")
    if call.get("jsonrpc") != "2.0" or not isinstance(method, str):
        return invalid_rpc("invalid request: needs jsonrpc '2.0' and a string method", call_id)
    if "id" not in call:
        return None  # a notification: nothing is answered, so nothing is signed or recorded either
    handler = METHODS.get(method)
    try:
        if handler is None:
            raise MethodNotFound(f"method {method[:64]!r} does not exist (see pm_supportedEntryPoints and the docs)")
        result = await handler(call.get("params"), ctx)
    except Exception as exc:
        return rpc_failure(exc, call_id)
    return {"jsonrpc": "2.0", "id": call_id, "result": result}


async def dispatch(body: bytes, ctx: CallContext, *, max_batch: int = MAX_BATCH) -> bytes | None:
    """Serve a request body; ``None`` when there is nothing to answer (notifications only).

    A batch of more than ``max_batch`` calls is one error (-32600) naming the cap: none of it runs.
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return orjson.dumps(PARSE_ERROR)
    if isinstance(payload, list):
        if not payload:
            return orjson.dumps(invalid_rpc("invalid request: empty batch"))
        if len(payload) > max_batch:
            return orjson.dumps(
                invalid_rpc(
                    f"invalid request: a batch may hold at most {max_batch} calls (server.max_batch_length), "
                    f"this one has {len(payload)}: split it"
                )
            )
        answers = await asyncio.gather(*(_one(call, ctx) for call in payload))
        replies = [answer for answer in answers if answer is not None]
        return orjson.dumps(replies) if replies else None
    answer = await _one(payload, ctx)
    return None if answer is None else orjson.dumps(answer)
