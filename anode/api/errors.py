"""The one place where errors become wire responses (JSON-RPC error objects, HTTP bodies).

Every ``AnodeError`` carries its JSON-RPC code and HTTP status (``anode/errors.py``); only this
module reads them. The JSON-RPC envelope's own errors (-32700 parse error, -32600 invalid
request) are built here too.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from anode.errors import AnodeError, BundlerRejected

log = logging.getLogger("anode.api")

INTERNAL_ERROR = {"code": -32603, "message": "internal error: the server logged the cause"}
PARSE_ERROR = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error: the body is not JSON"}}


def invalid_rpc(message: str, call_id: Any = None) -> dict[str, Any]:
    """A response for a call that is not JSON-RPC 2.0 (-32600)."""
    return {"jsonrpc": "2.0", "id": call_id, "error": {"code": -32600, "message": message}}


def rpc_failure(exc: BaseException, call_id: Any = None) -> dict[str, Any]:
    """A JSON-RPC response carrying ``exc`` as its error."""
    return {"jsonrpc": "2.0", "id": call_id, "error": rpc_error(exc)}


def rpc_refusal(exc: AnodeError) -> tuple[int, bytes]:
    """HTTP status and body for a JSON-RPC request refused before any call is read (its key, its size)."""
    return exc.http_status, orjson.dumps(rpc_failure(exc))


def rpc_error(exc: BaseException) -> dict[str, Any]:
    """JSON-RPC ``error`` member for any exception; unexpected ones are logged, not leaked."""
    if isinstance(exc, BundlerRejected):  # a relayed call: the bundler's own error, unchanged
        return dict(exc.upstream)
    if isinstance(exc, AnodeError):
        error: dict[str, Any] = {"code": exc.rpc_code, "message": exc.message}
        data = {"anodeCode": exc.code}
        if exc.data:
            data.update(exc.data)
        error["data"] = data
        return error
    log.exception("unexpected error while serving a request", exc_info=exc)
    return dict(INTERNAL_ERROR)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def http_error(exc: AnodeError) -> Response:
    status, body = http_refusal(exc)
    return Response(body, status_code=status, media_type="application/json")


def http_refusal(exc: AnodeError) -> tuple[int, bytes]:
    """HTTP status and JSON body of aNode's REST error shape for ``exc``."""
    body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
    if exc.data:
        body["error"]["details"] = exc.data
    return exc.http_status, orjson.dumps(body)


async def anode_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AnodeError)
    return http_error(exc)


async def validation_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    unreadable = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if unreadable is not None:
        # FastAPI reports the character offset as the error's location ("39: JSON decode error"): no field
        reason = str((unreadable.get("ctx") or {}).get("error") or "JSON decode error")
        where = unreadable["loc"][-1] if len(unreadable["loc"]) > 1 else None
        at = f" at character {where}" if isinstance(where, int) else ""
        message = (
            f"request body is not valid JSON ({reason}{at}): send a JSON object with Content-Type: application/json"
        )
        return json_response({"error": {"code": "ANODE_INVALID_PARAMS", "message": message}}, 400)
    whole_body = [e for e in errors if tuple(e["loc"]) == ("body",)]
    if any(e.get("type") == "missing" for e in whole_body):
        message = "request body is missing: send a JSON object with Content-Type: application/json"
        return json_response({"error": {"code": "ANODE_INVALID_PARAMS", "message": message}}, 400)
    if any(isinstance(e.get("input"), bytes) for e in whole_body):  # not read as JSON: no JSON content type
        message = "request body is not JSON: send a JSON object with Content-Type: application/json"
        return json_response({"error": {"code": "ANODE_INVALID_PARAMS", "message": message}}, 400)
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    message = f"{where}: {str(first['msg']).removeprefix('Value error, ')}"
    details = {"field": where, "errors": [{"loc": list(e["loc"]), "msg": e["msg"]} for e in errors]}
    return json_response({"error": {"code": "ANODE_INVALID_PARAMS", "message": message, "details": details}}, 400)


async def unexpected_error_handler(_request: Request, exc: Exception) -> Response:
    log.exception("unexpected error while serving a request", exc_info=exc)
    return json_response({"error": {"code": "ANODE_INTERNAL", "message": INTERNAL_ERROR["message"]}}, 500)
