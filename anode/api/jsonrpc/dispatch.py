"""JSON-RPC 2.0 envelope handling: single calls and batches, notifications, error objects."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from anode.api.errors import rpc_error
from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.methods import METHODS
from anode.errors import MethodNotFound

MAX_BATCH = 100

PARSE_ERROR = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error: the body is not JSON"}}


def _invalid(message: str, call_id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "error": {"code": -32600, "message": message}}


async def _one(call: Any, ctx: CallContext) -> dict[str, Any] | None:
    if not isinstance(call, dict):
        return _invalid("invalid request: each call must be a JSON object")
    call_id = call.get("id")
    if isinstance(call_id, bool) or not isinstance(call_id, str | int | float | type(None)):
        return _invalid("invalid request: id must be a string, number or null")
    method = call.get("method")
    if call.get("jsonrpc") != "2.0" or not isinstance(method, str):
        return _invalid("invalid request: needs jsonrpc '2.0' and a string method", call_id)
    if "id" not in call:
        return None  # a notification: nothing is answered, so nothing is signed or recorded either
    handler = METHODS.get(method)
    try:
        if handler is None:
            raise MethodNotFound(f"method {method[:64]!r} does not exist (see pm_supportedEntryPoints and the docs)")
        result = await handler(call.get("params"), ctx)
    except Exception as exc:
        return {"jsonrpc": "2.0", "id": call_id, "error": rpc_error(exc)}
    return {"jsonrpc": "2.0", "id": call_id, "result": result}


async def dispatch(body: bytes, ctx: CallContext) -> bytes | None:
    """Serve a request body; ``None`` when there is nothing to answer (notifications only)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return orjson.dumps(PARSE_ERROR)
    if isinstance(payload, list):
        if not payload:
            return orjson.dumps(_invalid("invalid request: empty batch"))
        if len(payload) > MAX_BATCH:
            return orjson.dumps(_invalid(f"invalid request: a batch may hold at most {MAX_BATCH} calls"))
        answers = await asyncio.gather(*(_one(call, ctx) for call in payload))
        replies = [answer for answer in answers if answer is not None]
        return orjson.dumps(replies) if replies else None
    answer = await _one(payload, ctx)
    return None if answer is None else orjson.dumps(answer)
