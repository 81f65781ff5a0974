"""``POST /api/v1/rpc`` (and ``POST /``) served as bare ASGI, ahead of FastAPI.

A JSON-RPC call is one body in and one body out; FastAPI's machinery around it (request object,
dependency solving, exception and exit-stack layers, response class, and its own per-request
middleware) costs more per call than parsing, validating and stubbing the userOp.
``anode.api.app.AnodeApp`` hands those two paths to ``RequestObserver(JsonErrors(JsonRpcEndpoint))``
before FastAPI sees them. The FastAPI route stays registered, so ``/docs`` still describes the
endpoint, and is put in ``scope["route"]`` as the router would, for the metrics middleware's
route label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from anode.api.errors import rpc_refusal
from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.dispatch import dispatch
from anode.api.limits import BodyLimit
from anode.errors import Unauthorized

if TYPE_CHECKING:
    from anode.wiring import Anode

RPC_PATHS = frozenset({"/api/v1/rpc", "/"})
_JSON = (b"content-type", b"application/json")


class JsonRpcEndpoint:
    def __init__(self, app: ASGIApp, anode: Anode, routes: Mapping[str, Any]) -> None:
        self.app = app
        self.anode = anode
        self.routes = routes
        sponsorship = anode.settings.sponsorship
        self._sponsor = (sponsorship.sponsor_name, sponsorship.sponsor_icon)
        server = anode.settings.server
        self._max_batch = server.max_batch_length
        #: a body over ``server.max_body_bytes`` is answered 413 before it is read (``api/limits.py``)
        self._limited = BodyLimit(self._serve, max_bytes=server.max_body_bytes, rpc_paths=RPC_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in RPC_PATHS:
            await self.app(scope, receive, send)
            return
        await self._limited(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        anode = self.anode
        scope["route"] = self.routes[scope["path"]]
        try:
            api_key_id = None if anode.api_keys.open else await anode.api_keys.authenticate(Request(scope))
        except Unauthorized as exc:
            await _answer(send, *rpc_refusal(exc))
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        request_id = scope.get("state", {}).get("request_id")
        ctx = CallContext(anode.service, api_key_id, *self._sponsor, request_id, _chain_query(scope), anode.passkey)
        answer = await dispatch(body, ctx, max_batch=self._max_batch)
        if answer is None:
            await _answer(send, 204, None)
        else:
            await _answer(send, 200, answer)


def _chain_query(scope: Scope) -> str | None:
    """``chainId`` of the URL's query (``/api/v1/rpc?chainId=8453``): where relayed bundler calls go."""
    query = scope.get("query_string", b"")
    if not query:
        return None
    values = parse_qs(query.decode("latin-1")).get("chainId")
    return values[0] if values else None


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes | None) -> None:
    headers = [] if body is None else [_JSON, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body or b""})
